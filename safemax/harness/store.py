"""A comparison's runs on disk: each finished run's cache, the run under way (its checkpoint and
curve, for resume), one process per setting (a file lock), and the machine a run was timed on."""
import base64
import json
import os
import re
import shutil

import torch

from safemax.errors import SettingBusy
from safemax.evaluation.provenance import machine  # noqa: F401 (the machine a run was timed on)
from safemax.evaluation.report import to_pixels, write_json
from safemax.harness.defaults import MODEL_OPTIONS
from safemax.training import checkpoint

try:
    import fcntl  # RunLock (POSIX)
except ImportError:  # pragma: no cover
    fcntl = None


class Partial:
    """The method under way, on disk: its fit's checkpoint and its curve up to the checkpoint's step,
    so that an interrupted comparison continues it (``resume``) instead of starting it again.

    At every measurement the curve is written first, then the checkpoint: the checkpoint's step
    never runs ahead of a measurement the curve lacks, except when the fit saved itself on Ctrl-C
    in the middle of one (the step is then measured again).

    ``resumed``: ``(curve, step)`` to continue from — the saved curve up to the checkpoint's step —
    or None (nothing to continue: any leftover of another comparison, or without ``resume``, is
    removed)."""

    CURVE = "curve.json"

    def __init__(self, folder: str, config: dict, resume: bool):
        self.folder, self.config, self.resumed = folder, config, None
        step = checkpoint.saved_step(folder) if resume else None
        if step is not None:
            try:
                with open(os.path.join(folder, self.CURVE)) as f:
                    saved = json.load(f)
            except (OSError, ValueError):
                saved = {}
            if saved.get("config") == config:
                self.resumed = [p for p in saved["curve"] if p["step"] <= step], step
        if self.resumed is None:
            shutil.rmtree(folder, ignore_errors=True)

    def save(self, curve: list, u=None, batch_size: int = None) -> None:
        """The curve, then (``u``) the fit's checkpoint."""
        os.makedirs(self.folder, exist_ok=True)
        write_json(os.path.join(self.folder, self.CURVE), dict(config=self.config, curve=curve))
        if u is not None:
            checkpoint.save_fit(u, self.folder, batch_size)

    def done(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


SAMPLE_ROWS = 10   # forget samples per result in samples.png


def pack_samples(samples: torch.Tensor) -> dict:
    """The first ``SAMPLE_ROWS`` of ``samples`` (in [-1, 1]) as ``save_grid`` draws them
    (``to_pixels``: 8 bits a pixel), base64, for a method's cache: what samples.png shows, nothing
    lost, about 10 kB on Fashion-MNIST where the float list was 2.4 MB."""
    x = to_pixels(samples[:SAMPLE_ROWS])
    return dict(shape=list(x.shape), uint8_base64=base64.b64encode(x.numpy().tobytes()).decode("ascii"))


def unpack_samples(saved) -> torch.Tensor:
    """``pack_samples``'s inverse, in [-1, 1]; a float list (a cache written before) as it is."""
    if isinstance(saved, list):
        return torch.tensor(saved)
    x = torch.frombuffer(bytearray(base64.b64decode(saved["uint8_base64"])), dtype=torch.uint8)
    return x.reshape(saved["shape"]).float() / 127.5 - 1


def method_cache(out: str, spec: str) -> str:
    """Where a comparison in ``out`` keeps ``spec``'s finished run (``resume`` reuses it); the run
    under way is in ``partial_folder`` of it."""
    return os.path.join(out, "methods", re.sub(r"[^A-Za-z0-9_.-]+", "_", spec) + ".json")


def _reusable(saved: dict, config: dict, race: bool) -> bool:
    """Whether a comparison with ``config`` may reuse the finished run ``saved`` (a raced-out one
    only in a race)."""
    return saved.get("config") == config and (race or saved["result"].get("raced_out_at") is None)


def finished(cache: str, config: dict, race: bool):
    """The finished run in ``cache`` if a comparison with ``config`` may reuse it, else None."""
    if not os.path.exists(cache):
        return None
    with open(cache) as f:
        saved = json.load(f)
    return saved if _reusable(saved, config, race) else None


class RunLock:
    """One process at a time on a setting's run: an exclusive lock on ``<cache>.lock``, held while
    it runs, so that two comparisons writing into one folder (lanes sharing a plan) cannot resume,
    or remove, the same checkpoint at once. The second is refused at once with what to do. The
    operating system lets go of the lock when the process ends, however it ends; the empty lock
    file stays (git ignores ``*.json.lock``). Without ``fcntl`` (Windows) it does not lock."""

    def __init__(self, cache: str, what: str):
        self.path, self.what, self.file = cache + ".lock", what, None

    def __enter__(self):
        if fcntl is None:
            return self
        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise SettingBusy(f"{self.what}: another process is running this setting (it holds "
                               f"{self.path}); wait for it — run again with resume=True (--resume) to "
                               "reuse its result — or compare into another folder") from None
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()   # (the lock goes with it)

    @staticmethod
    def held(cache: str) -> bool:
        """Whether a process is running ``cache``'s setting now (False without ``fcntl``)."""
        if fcntl is None or not os.path.exists(cache + ".lock"):
            return False
        try:
            with RunLock(cache, "--status"):   # taken and let go at once
                return False
        except SettingBusy:
            return True


def finished_runs(out: str, settings: dict, race: bool) -> dict:
    """``{spec: saved run}``: the finished runs in ``out/methods/`` that a comparison with
    ``settings`` would reuse (their config is these settings plus the method's own keys; one
    that the race stopped, only for another race)."""
    own = {"method", "lr", *MODEL_OPTIONS}   # what each method's config adds to the settings
    found, folder = {}, os.path.join(out, "methods")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if not name.endswith(".json") or not os.path.isfile(path):
            continue
        with open(path) as f:
            saved = json.load(f)
        config = saved.get("config") or {}
        spec = config.get("method")
        if spec is not None and method_cache(out, spec) == path and \
                _reusable(saved, settings | {k: v for k, v in config.items() if k in own}, race):
            found[spec] = saved
    return found


def partial_folder(cache: str) -> str:
    """The folder of the run under way (its checkpoint and ``Partial.CURVE``) beside ``cache``."""
    return cache[:-len(".json")] + ".partial"


def cached(path: str, make):
    """A piece of an experiment kept as JSON at ``path``: read back when it is there, else
    ``make()``'d and written atomically with its provenance (``write_json``; a piece read back
    holds a ``provenance`` entry beside its own) — a long script resumes piece by piece."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    result = make()
    write_json(path, result, indent=None)
    return result
