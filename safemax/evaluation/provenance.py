"""Where a result came from: the commit (and whether the tree held uncommitted changes), the
versions of safemax, torch and diffusers, and the machine. ``report.write_json`` adds it to every
results file it writes, so a number in the docs can be traced to the code that made it."""
import functools
import os
import platform
import subprocess

import torch

from safemax import __version__

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the checkout, if any


def machine() -> dict:
    """The CPU (its model name), torch's threads, the GPU if one is used, and the versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = dict(cpu=cpu, threads=torch.get_num_threads(), torch=torch.__version__,
               safemax=__version__, python=platform.python_version())
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def _git(where: str, *args) -> str:
    done = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise OSError(done.stderr.strip())
    return done.stdout.strip()


def _checkouts() -> list:
    """Where safemax's git history may be: the source this module runs from (an editable
    install), else the working folder when it is a safemax checkout (an installed package run
    from the repository, as CI and the benchmarks do)."""
    out = [SOURCE]
    cwd = os.getcwd()
    try:
        with open(os.path.join(cwd, "pyproject.toml")) as f:
            if 'name = "safemax"' in f.read():
                out.append(cwd)
    except OSError:
        pass
    return out


@functools.lru_cache(maxsize=None)
def commit() -> dict:
    """``{"commit": sha, "dirty": bool, "checkout": folder}`` of the safemax checkout (see
    ``_checkouts``); where there is none, ``$SAFEMAX_COMMIT`` if set (a tree copied without its
    history, as to a GPU machine: ``benchmarks/gpu_check.sh`` says so), else Nones. ``dirty``: a
    tracked file differs from the commit — the result then comes from uncommitted code."""
    for where in _checkouts():
        try:
            sha = _git(where, "rev-parse", "HEAD")
            dirty = bool(_git(where, "status", "--porcelain", "--untracked-files=no"))
        except (OSError, subprocess.SubprocessError):
            continue
        return dict(commit=sha, dirty=dirty, checkout=where)
    if os.environ.get("SAFEMAX_COMMIT"):   # a copy of the tree without its history (a GPU machine)
        return dict(commit=os.environ["SAFEMAX_COMMIT"], dirty=None, checkout="$SAFEMAX_COMMIT")
    return dict(commit=None, dirty=None, checkout=None)


def provenance() -> dict:
    """Everything a results file records of where it came from (its settings it records itself)."""
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError:   # pragma: no cover - a dependency
        diffusers_version = None
    return dict(commit(), diffusers=diffusers_version, machine=machine())


# --- reading a results file's record -----------------------------------------------------------

SIDECAR = ".provenance.json"


def sidecar(path: str) -> str:
    """Where a results file that is not a JSON object (a list of rows, which has no place for an
    entry) keeps its provenance: ``stopping.json`` → ``stopping.provenance.json`` beside it."""
    return (path[:-len(".json")] if path.endswith(".json") else path) + SIDECAR


def digest(path: str) -> str:
    """The sha256 of a file's bytes: a sidecar names the very content it describes."""
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def recorded(path: str):
    """The provenance a results file records: its own ``provenance`` entry (a JSON object), else
    its sidecar's (``sidecar``) when the sidecar describes this content (its sha256: a file
    written again without a new sidecar has none), else None. Either is what ``write_json``
    wrote, or, for a file written before results recorded their own, what
    ``benchmarks/backfill_provenance.py`` read from git history (``"source"`` says so)."""
    import json
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict) and "provenance" in data:
        return data["provenance"]
    try:
        with open(sidecar(path)) as f:
            side = json.load(f)
    except (OSError, ValueError):
        return None
    return side.get("provenance") if side.get("sha256") == digest(path) else None
