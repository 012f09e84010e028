"""The scaffolding of the project's resumable training loops, defined once: ``train_denoiser``
(``safemax.zoo.trainer``) and ``train_stage`` (``safemax.zoo.stage``) write only their step.

:class:`TrainingLoop` keeps a run's state file (``{work}/{name}-training.pt``): it resumes from
it, saves it atomically (a ``.tmp`` then ``os.replace``) every ``checkpoint_minutes``, at the end
and on Ctrl-C after the step under way (then ``SystemExit(130)``), and shows the progress bar::

    loop = TrainingLoop(run, {"model": model}, opt, g, settings, steps=..., work=..., name=...)
    with loop:
        for step in loop:
            ...                            # the step: lr, loss, backward, optimiser
            loop.record(step, loss.item())
            loop.checkpoint()              # Ctrl-C: save and exit 130; the periodic save
            if out_of_time:
                loop.stop("minutes")
                break
    return loop.finish()                   # stopped "steps" unless stopped; the last save

``run`` is the caller's outcome record, a :class:`LoopRun` (``steps``, ``seconds``, ``losses``,
``stopped``, ``state_file``) with its models. The state file holds each of ``modules``' state dicts under its key, ``opt``,
``generator``, ``step``, ``seconds``, ``losses`` and ``settings``' items; a resume must be made
with the same settings, else ``ValueError``.
"""
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm import tqdm

__all__ = ["LoopRun", "TrainingLoop", "save_state", "restore_state"]


@dataclass(kw_only=True)
class LoopRun:
    """What every loop's outcome records (its subclasses add the models, positional first)."""
    steps: int = 0
    seconds: float = 0.0
    losses: list = field(default_factory=list)
    stopped: str = ""
    state_file: Optional[str] = None

    def mean_loss(self, last: int = 100) -> float:
        """The mean loss of the last ``last`` steps (NaN before any step)."""
        tail = self.losses[-last:]
        return sum(tail) / len(tail) if tail else float("nan")


def save_state(run, modules: dict, opt, g: torch.Generator, settings: dict):
    """Writes ``run``'s training state to ``run.state_file`` atomically."""
    tmp = run.state_file + ".tmp"
    torch.save(dict(**{key: m.state_dict() for key, m in modules.items()}, opt=opt.state_dict(),
                    generator=g.get_state(), step=run.steps, seconds=run.seconds, losses=run.losses,
                    **settings), tmp)
    os.replace(tmp, run.state_file)   # never a half-written state


def restore_state(run, modules: dict, opt, g: torch.Generator, settings: dict, missing_ok: bool = False):
    """Loads ``run.state_file`` into ``modules`` (onto the first one's device), ``opt``, ``g`` and
    ``run``. Its settings must be ``settings``; ``missing_ok``: a setting the state lacks (a state
    of an older version) is not checked."""
    if not os.path.exists(run.state_file):
        raise FileNotFoundError(f"resume: no training state at {run.state_file}; start without resume")
    device = next(next(iter(modules.values())).parameters()).device
    state = torch.load(run.state_file, weights_only=False, map_location=device)
    if missing_ok:
        made = {k: state[k] for k in settings if k in state}
        wrong = any(settings[k] != v for k, v in made.items())
    else:
        made = {k: state.get(k) for k in settings}
        wrong = made != settings
    if wrong:
        raise ValueError(f"resume: {run.state_file} was made with "
                         f"{', '.join(f'{k}={v}' for k, v in made.items())}; pass the same settings")
    for key, m in modules.items():
        m.load_state_dict(state[key])   # (onto the parameters' device, whichever saved it)
    opt.load_state_dict(state["opt"])
    g.set_state(state["generator"].cpu())
    run.steps, run.seconds, run.losses = state["step"], state["seconds"], list(state.get("losses", []))


class TrainingLoop:
    """A resumable loop over the steps ``run.steps .. steps - 1`` (see the module)."""

    def __init__(self, run, modules: dict, opt, g: torch.Generator, settings: dict, *, steps: int,
                 work: str, name: str, resume: bool = False, missing_ok: bool = False,
                 checkpoint_minutes: float = 10.0, progress: bool = True, desc: str = None):
        self.run, self.modules, self.opt, self.g, self.settings = run, modules, opt, g, settings
        self.steps, self.work, self.checkpoint_minutes = steps, work, checkpoint_minutes
        self.desc, self.progress = desc or f"training {name}", progress
        if resume:
            restore_state(run, modules, opt, g, settings, missing_ok)
            print(f"resumed {name} at step {run.steps} of {steps} ({run.seconds / 60:.1f} min done)")
        if work:
            os.makedirs(work, exist_ok=True)
        self.first, self.before = run.steps, run.seconds
        self.start = self.last_save = time.time()

    def session_seconds(self) -> float:
        """The seconds of this session (since the loop was made)."""
        return time.time() - self.start

    def seconds(self) -> float:
        """The seconds of training in all, across resumes."""
        return self.before + time.time() - self.start

    def save(self):
        self.run.seconds = self.seconds()
        save_state(self.run, self.modules, self.opt, self.g, self.settings)

    def __enter__(self):
        self.interrupted = []   # Ctrl-C ends the step under way first: the state saved is a step boundary
        self.catch = self.work is not None and threading.current_thread() is threading.main_thread()
        self.previous = (signal.signal(signal.SIGINT, lambda signum, frame: self.interrupted.append(signum))
                         if self.catch else None)
        self.bar = tqdm(range(self.first, self.steps), desc=self.desc, initial=self.first,
                        total=self.steps, disable=not self.progress)
        return self

    def __iter__(self):
        return iter(self.bar)

    def __exit__(self, *exc):
        if self.catch:
            signal.signal(signal.SIGINT, self.previous)
        self.bar.close()
        return False

    def record(self, step: int, loss: float):
        """After ``step``: its loss, the steps and seconds done, the bar's postfix."""
        run = self.run
        run.losses.append(loss)
        run.steps, run.seconds = step + 1, self.seconds()
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def write(self, text: str):
        self.bar.write(text)

    def checkpoint(self):
        """At the step's end: on Ctrl-C, saves and raises ``SystemExit(130)``; every
        ``checkpoint_minutes``, saves."""
        if self.interrupted:
            self.save()
            self.write(f"interrupted after step {self.run.steps}; the state is in {self.run.state_file}: resume from it")
            raise SystemExit(130)
        if self.work and time.time() - self.last_save > self.checkpoint_minutes * 60:
            self.save()
            self.last_save = time.time()

    def stop(self, reason: str):
        """Stops the run early (the caller breaks out of the loop) for ``reason``."""
        self.run.stopped = reason
        self.write(f"time budget reached after {self.run.steps} steps")

    def finish(self):
        """After the loop: the run's ``stopped`` ("steps" unless stopped early), the last save."""
        self.run.stopped = self.run.stopped or "steps"
        if self.work:
            self.save()
        return self.run
