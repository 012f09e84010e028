"""``safemax compare``: SAFEMax against SalUn, Selective Amnesia and gradient ascent, head to head.

From the same base model (an embedded DDPM: the digits or Fashion-MNIST), each method forgets the same class with the
same batch (``batch_size`` forget + ``batch_size`` retain rows), Adam, and step budget. Every
``eval_every`` steps the model is measured (timing paused); the *time to forget* is the first
measurement with forget accuracy ≤ 1% while retain accuracy is within 2 points of the original,
and it includes the method's preparation (saliency mask, Fisher, replay set). Then a relearning
attack fine-tunes each unlearned model on a few forget images and measures forget accuracy again.

Writes ``results.json``, ``results.md``, ``curves.png`` (forget / retain accuracy against wall
time) and ``samples.png`` (forget-class samples of every result) to ``out``; each finished method
is also kept in ``out/methods/<name>.json`` (its result and the 10 forget samples the grid shows, a few
tens of kB: small enough to commit, so that a sweep spread over sessions keeps what it finished) so
``resume=True`` skips it after an interruption, and
the method under way checkpoints its fit and its curve at every measurement in
``out/methods/<name>.partial/``, so ``resume=True`` continues it from there (a 45-minute run
loses at most one measurement interval, not the whole run).
"""
import base64
import copy
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import time

import torch

try:
    import fcntl   # RunLock (POSIX)
except ImportError:  # pragma: no cover
    fcntl = None

from . import __version__, checkpoint
from .attacks import BREAK_FA, DEFAULT_ATTACKS, describe, draw_images, parse_attack, relearning_attack, run_attack  # noqa: F401 (relearning_attack: compare's API)
from .data import split_by_class
from .methods import METHODS, make_method
from .metrics import classify, evaluate
from .report import save_comparison_curves, save_grid, to_pixels, write_json
from .sampling import sample
from .unlearner import Unlearner
from .zoo import load_classifier, load_unet, model_info

FA_BAR = 0.01        # forgotten: at most 1% of forget samples still classified as the class
RETAIN_SLACK = 0.02  # ... while retain accuracy is within 2 points of the original model's
ALL_METHODS = ("safemax", "salun", "sa", "ga")
LABELS = {"safemax": "SAFEMax", "salun": "SalUn", "sa": "Selective Amnesia", "ga": "gradient ascent",
          "safemax-robust": "robust SAFEMax"}


@torch.no_grad()
def forget_accuracy(unet, scheduler, classifier, forget: int, n: int, num_inference_steps: int,
                    seed: int) -> dict:
    """Forget accuracy alone (forget-class samples only), for the attack."""
    labels = torch.full((n,), forget)
    logits = classify(classifier, sample(unet, scheduler, labels, num_inference_steps, seed=seed))
    return dict(fa=float((logits.argmax(1) == labels).float().mean()),
                fa_digits=float((logits[:, :10].argmax(1) == labels).float().mean()))


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(cpu=cpu, threads=torch.get_num_threads(), torch=torch.__version__,
                safemax=__version__, python=platform.python_version())


QUICK_SA = dict(n_replay=8, n_fisher=3, fisher_timesteps=2, sample_steps=2)  # smoke runs only


def _number(text: str):
    """An option's value: a number where it reads as one, else the word (``attack_scope=class-embedding``)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_method(spec: str, quick: bool = False):
    """``"salun"`` or ``"salun:retain_weight=1,mask_fraction=0.3"`` → ``(name, options)``:
    a method name and the options of its object (for ``safemax``: of the Unlearner). An ``lr``
    option (``"salun:lr=5e-4,retain_weight=1"``) is that method's learning rate: tuned
    settings differ per method, and it overrides ``--lr``."""
    name, _, rest = spec.partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} in {spec!r}: choose from {list(METHODS)}, "
                         "optionally with options, e.g. salun:retain_weight=1")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"method option {item!r} in {spec!r}: write name=value")
        options[key] = _number(value)
    if name == "sa" and quick:
        options = {**QUICK_SA, **options}
    if "lr" in options and not (isinstance(options["lr"], (int, float)) and options["lr"] > 0):
        raise ValueError(f"{spec!r}: lr must be a positive number")
    try:  # fail now, not after the other methods have run
        _build(name, options)
    except (TypeError, ValueError) as e:
        words = [f"{k}={v}" for k, v in options.items() if isinstance(v, str)]
        if words and isinstance(e, TypeError):   # a word where the method compares a number
            raise ValueError(f"{spec!r}: {', '.join(words)}: not a number ({e})") from None
        raise ValueError(f"{spec!r}: {e}") from None
    return name, options


def _build(name: str, options: dict):
    """The method object of a parsed spec (SAFEMax with the demo's early fraction by default);
    an ``lr`` option is the fit's, not the method's."""
    options = {k: v for k, v in options.items() if k != "lr"}
    if name == "safemax":
        from .demo import DEFAULT_EARLY_FRACTION
        options = {"early_fraction": DEFAULT_EARLY_FRACTION, **options}
    return make_method(name, **options)


def label(spec: str) -> str:
    name, _, rest = spec.partition(":")
    return LABELS.get(name, name) + (f" ({rest})" if rest else "")


def evaluation_steps(steps: int, eval_every: int) -> set:
    """Every ``eval_every`` steps and the last step, plus five times denser over the first two
    intervals, where fast methods cross the bar (time to forget is only as precise as this)."""
    dense = max(1, eval_every // 5)
    return set(range(eval_every, steps + 1, eval_every)) | set(range(dense, min(2 * eval_every, steps) + 1, dense)) | {steps}


def meets_bar(point: dict, retain_floor: float) -> bool:
    """Whether a measurement has forgotten: FA ≤ 1% with retain accuracy ≥ ``retain_floor``."""
    return point["fa"] <= FA_BAR and point["retain_acc"] >= retain_floor


def bar_points(curve: list, retain_floor: float, leeway: float = 0.0) -> tuple:
    """(first, held): the index of the first curve point that meets the bar (``meets_bar``), and
    of the first that meets it from which every later point meets it (None: never) — with
    ``leeway``, later points may fall that far below ``retain_floor`` (see ``retain_sample``)."""
    ok = [meets_bar(p, retain_floor) for p in curve]
    loose = [meets_bar(p, retain_floor - leeway) for p in curve]
    first = next((i for i, good in enumerate(ok) if good), None)
    held = next((i for i in range(len(ok)) if ok[i] and all(loose[i:])), None)
    return first, held


def retain_sample(settings: dict) -> float:
    """One retain sample's share of a measurement's retain accuracy (``n_per_class`` of each of
    the 9 kept classes: 1/180 by default) — the *held within one sample* leeway. Retain accuracy on
    Fashion-MNIST moves by an s.d. of 0.004–0.013 between a settled run's measurements (paired
    noises), so one sample's flip at one measurement can move *held* by hundreds of steps; the
    leeway says how much of a held time is that."""
    return 1.0 / (settings["n_per_class"] * 9)


def summarise(result: dict, retain_floor: float, safemax: dict = None, leeway: float = None) -> dict:
    """The time-to-forget keys of a method's result, from its curve (so that they can be
    recomputed for cached runs):

    - ``steps_to_forget`` / ``seconds_to_forget``: the first measurement with FA ≤ 1% while
      retain accuracy is within 2 points of the original's (null if never); ``frechet_at_forget``.
    - ``steps_to_forget_held`` / ``seconds_to_forget_held``: the first measurement from which
      that bar holds at every later one — a method that passes once by chance and breaks
      again (gradient ascent does) has not forgotten in a usable way.
    - with ``leeway`` (``retain_sample``): ``steps_to_forget_held_within_one`` /
      ``seconds_to_forget_held_within_one``: the same, where a later measurement may miss the
      retain floor by up to ``leeway`` (one retain sample) — how much of *held* is one sample;
      None for a run the race stopped (``raced_out_at``: its curve ends where the strict bar failed).
    - ``time_to_forget_vs_safemax`` / ``held_time_to_forget_vs_safemax``: ratios to SAFEMax's
      (``{">": x}``, a lower bound from the method's whole budget, where it never got there;
      null without a SAFEMax run that got there).
    """
    first, held = bar_points(result["curve"], retain_floor)
    curve = result["curve"]
    out = dict(steps_to_forget=curve[first]["step"] if first is not None else None,
               seconds_to_forget=curve[first]["seconds"] if first is not None else None,
               frechet_at_forget=curve[first]["frechet"] if first is not None else None,
               steps_to_forget_held=curve[held]["step"] if held is not None else None,
               seconds_to_forget_held=curve[held]["seconds"] if held is not None else None)
    if leeway is not None:   # a raced-out run's curve ends where the strict bar failed: unknown
        held = None if result.get("raced_out_at") is not None else bar_points(curve, retain_floor, leeway)[1]
        out.update(steps_to_forget_held_within_one=curve[held]["step"] if held is not None else None,
                   seconds_to_forget_held_within_one=curve[held]["seconds"] if held is not None else None)
    budget = result["prep_seconds"] + result["train_seconds"]
    for key, ratio in (("seconds_to_forget", "time_to_forget_vs_safemax"),
                       ("seconds_to_forget_held", "held_time_to_forget_vs_safemax")):
        mine, ref = out[key], (safemax or {}).get(key)
        out[ratio] = None if not ref else (mine / ref if mine is not None else {">": budget / ref})
    return out


def run(forget: int = 3, methods=ALL_METHODS, steps: int = 500, eval_every: int = 25,
        batch_size: int = 64, lr: float = None, out: str = "safemax-compare", seed: int = 0,
        attack: bool = True, attack_images: int = 10, attack_steps: int = 50,
        attacks=DEFAULT_ATTACKS, n_forget: int = 100, n_per_class: int = 20,
        num_inference_steps: int = 25, quick: bool = False, resume: bool = False,
        progress: bool = True, model: str = "digits", device: str = "cpu", race: bool = False,
        step_costs: dict = None, keep_finished: bool = False) -> dict:
    """Run the comparison on the embedded model ``model`` ("digits" or "fashion-mnist"); returns
    (and writes) the results. ``lr=None`` gives each method its own default (SAFEMax and robust
    SAFEMax: the demo's for the model — 5e-4 on the digits, 1e-4 on Fashion-MNIST; the baselines: their published 1e-4); ``device``: where the models run ("cuda": a GPU).
    ``attacks``: the relearning attacks run on every result, preset names or specs of
    ``safemax.attacks`` (``"weak"``, ``"lora:rank=4"``, ...); those that fix no steps or image count
    take ``attack_steps`` and ``attack_images``.

    ``race``: for a sweep of settings ranked by the fewest steps to the held bar (see ``Race``) — a
    method stops at the first measurement that fails the bar at or after the held step of the best
    method already finished; its result ends there (``raced_out_at``). ``step_costs``
    (``{spec: relative cost of its step}``, 1 where missing) weights each method's steps in that
    ranking, for settings whose steps cost differently (``kept_contrast`` adds rows to the step).

    ``keep_finished``: the report also holds every other finished run in ``out/methods/`` of the
    same comparison (same settings; a raced-out run only in a race), rows ordered by method, then
    by spec (whichever settings this call ran) — so runs of one method at a time into one folder
    (two processes sharing the work) each leave the folder's report whole, and in one order."""
    from .demo import method_settings

    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError(f"no methods: choose from {list(ALL_METHODS)}")
    costs = {spec: 1.0 for spec in methods} | dict(step_costs or {})
    if set(costs) - set(methods):
        raise ValueError(f"step_costs names settings that are not compared: {sorted(set(costs) - set(methods))}")
    if not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in costs.values()):
        raise ValueError(f"step_costs must be positive numbers, got {step_costs}")
    parsed = {spec: parse_method(spec, quick) for spec in methods}
    info = model_info(model)
    if not 0 <= forget <= 9:
        raise ValueError(f"--forget must be a class id 0..9 of {model}, got {forget}")
    if steps < 1 or eval_every < 1 or batch_size < 1:
        raise ValueError("steps, eval_every and batch_size must be >= 1")
    if attack_steps < 1 or attack_images < 1:
        raise ValueError("attack_steps and attack_images must be >= 1")
    attacks = [a.resolved(attack_steps, attack_images) for a in map(parse_attack, attacks)] if attack else []
    if len({a.name for a in attacks}) < len(attacks):
        raise ValueError(f"two attacks share a name in {[a.name for a in attacks]}: name each once")
    wanted = max([a.images for a in attacks], default=0)   # drawn before --quick shrinks the attacks
    if any(a.train == "lora" for a in attacks):
        from .lora import _peft
        _peft()   # no peft: say so now, not after every method's fit
    if quick:  # every stage runs, on a few samples: minutes become seconds
        steps, eval_every, batch_size = min(steps, 2), 1, min(batch_size, 8)
        n_forget, n_per_class, num_inference_steps = 4, 1, 2
        attacks = [dataclasses.replace(a, steps=min(a.steps, 2), images=min(a.images, 4)) for a in attacks]
    os.makedirs(os.path.join(out, "methods"), exist_ok=True)

    forget_data, retain_data = split_by_class(info.dataset("train"), [forget])
    retain_classes = [c for c in range(10) if c != forget]
    (base, scheduler), classifier = load_unet(model, device), load_classifier(model, device)
    real_retain = info.kept_reference(classifier, forget)   # once, for every measurement of every method
    measure = dict(scheduler=scheduler, classifier=classifier, forget=[forget],
                   retain_classes=retain_classes, real_retain=real_retain, seed=seed,
                   n_forget=n_forget, n_per_class=n_per_class, num_inference_steps=num_inference_steps)
    attack_x, attack_y = draw_images(forget_data, wanted, seed)   # each attack takes its first a.images
    settings = dict(model=model, forget=forget, steps=steps, eval_every=eval_every, batch_size=batch_size,
                    seed=seed, n_forget=n_forget, n_per_class=n_per_class,
                    num_inference_steps=num_inference_steps, attack=bool(attacks),
                    attacks=[a.record() for a in attacks], quick=quick)

    original = evaluate(base, **measure, return_samples=True)
    original_samples = original.pop("samples")["forget"]
    retain_floor = original["retain_acc"] - RETAIN_SLACK
    print(f"safemax compare: forgetting class {info.class_name(forget)} of {model}; original FA {original['fa']:.2f}, retain "
          f"accuracy {original['retain_acc']:.3f} (bar: FA <= {FA_BAR}, retain >= {retain_floor:.3f})")

    results, samples = {}, {"original": original_samples}
    for spec in methods:
        name, options = parsed[spec]
        # the model's demo settings (SAFEMax and robust SAFEMax: its lr and Gaussian share)
        method_lr, options = method_settings(model, name, options, lr)
        cache = method_cache(out, spec)
        config = dict(settings, method=spec, lr=method_lr)
        if "gaussian_fraction" in options and "gaussian_fraction" not in parsed[spec][1]:
            config["gaussian_fraction"] = options["gaussian_fraction"]   # the cache says so
        saved = _finished(cache, config, race) if resume else None
        if saved is None:
            with RunLock(cache, label(spec)):
                # another process may have finished it while this one measured or ran others
                saved = _finished(cache, config, race) if resume else None
                if saved is None:
                    partial = Partial(partial_folder(cache), config, resume)
                    results[spec], samples[spec] = _run_method(
                        spec, name, options, method_lr, base, original, measure, retain_data, forget_data,
                        batch_size, steps, eval_every, seed, retain_floor, attacks, attack_x, attack_y, progress,
                        partial,
                        Race.behind([(r, costs[s]) for s, r in results.items()], retain_floor, costs[spec])
                        if race else None)
                    results[spec]["machine"] = _machine()   # a comparison resumed elsewhere mixes machines
                    write_json(cache, dict(config=config, result=results[spec],
                                           forget_samples=pack_samples(samples[spec])))
                    partial.done()
        if saved is not None:
            print(f"{label(spec)}: reusing the finished run in {cache}")
            results[spec], samples[spec] = saved["result"], unpack_samples(saved["forget_samples"])

    if keep_finished:
        for spec, saved in finished_runs(out, settings, race).items():
            if spec not in results:
                print(f"{label(spec)}: reporting the finished run in {method_cache(out, spec)}")
                results[spec], samples[spec] = saved["result"], unpack_samples(saved["forget_samples"])
        family = {name: i for i, name in enumerate(LABELS)}
        # by method, then by spec: the same order whichever lane's run wrote the report last
        results = dict(sorted(results.items(), key=lambda kv: (family.get(kv[0].partition(":")[0], len(family)), kv[0])))
        samples = {"original": samples["original"]} | {spec: samples[spec] for spec in results}

    reference, leeway = results.get("safemax"), retain_sample(settings)
    if reference:
        reference.update(summarise(reference, retain_floor, leeway=leeway))
    for r in results.values():
        r.update(summarise(r, retain_floor, safemax=reference, leeway=leeway))
    report = dict(settings=settings, machine=_machine(),
                  bar=dict(fa_max=FA_BAR, retain_acc_min=retain_floor, retain_sample=leeway),
                  original=original, methods=results)
    write_json(os.path.join(out, "results.json"), report)
    save_comparison_curves(results, original, os.path.join(out, "curves.png"), {k: label(k) for k in results},
                           f"forgetting {'digit' if model == 'digits' else 'class'} {info.class_name(forget)}: "
                           "wall time includes preparation", report["bar"])
    rows = list(samples)
    save_grid(torch.cat([samples[k][:SAMPLE_ROWS] for k in rows]), rows=len(rows),
              path=os.path.join(out, "samples.png"))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(report, rows))
    print(table(report))
    print(f"results in {out}/ (results.json, results.md, curves.png, samples.png)")
    return report


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


class Race:
    """Stops a method that can no longer be the fastest to hold the bar: one that fails it at a
    measurement at or after step ``best`` — the earliest step from which holding still beats a
    method already finished (None: none holds it yet) — holds it (if ever) only after that step.
    Used as the fit's ``stop_when``; ``judge`` is called with every measurement."""

    def __init__(self, best, retain_floor: float):
        self.best, self.retain_floor, self.out_at = best, retain_floor, None

    @classmethod
    def behind(cls, finished, retain_floor: float, cost: float = 1.0) -> "Race":
        """The race a method whose step costs ``cost`` runs after the ``finished`` ``(result, its
        step cost)`` pairs: one held from step n at cost c is beaten only by holding before
        n·c/cost (equal costs: before n)."""
        marks = []
        for r, c in finished:
            held = bar_points(r["curve"], retain_floor)[1]
            if held is not None:
                marks.append(r["curve"][held]["step"] * c / cost)
        return cls(min(marks, default=None), retain_floor)

    def judge(self, point: dict) -> bool:
        if self.out_at is None and self.best is not None and point["step"] >= self.best \
                and not meets_bar(point, self.retain_floor):
            self.out_at = point["step"]
        return self.out_at is not None

    def __call__(self, history) -> bool:
        return self.out_at is not None

    def __repr__(self):
        return (f"race: failed the bar at step {self.out_at}, at or after step {self.best:g}: a finished "
                "setting holds it sooner")


def _run_method(spec, name, options, method_lr, base, original, measure, retain_data, forget_data, batch_size, steps,
                eval_every, seed, retain_floor, attacks, attack_x, attack_y, progress, partial: Partial,
                race: Race = None):
    method = _build(name, options)
    u = Unlearner(copy.deepcopy(base), measure["scheduler"], forget=measure["forget"], lr=method_lr,
                  seed=seed, method=method)
    curve = [_point(0, 0.0, 0.0, original)]
    eval_at = evaluation_steps(steps, eval_every)

    def measure_now(u, seconds):
        curve.append(_point(u.step, seconds, u.prep_seconds, evaluate(u.unet, **measure)))
        partial.save(curve, u, batch_size)

    def track(u, record):
        if record["step"] in eval_at:
            measure_now(u, record["seconds"])
            if race is not None:
                race.judge(curve[-1])

    print(f"\n{label(spec)} (lr {method_lr}, {steps} steps, batch {batch_size}+{batch_size})")
    if partial.resumed is not None:   # restore the fit at the checkpoint's step, then go on from there
        curve, at = partial.resumed
        print(f"{label(spec)}: continuing the interrupted run from step {at} ({partial.folder})")
        u.fit(retain_data, forget_data, steps=at, batch_size=batch_size, progress=False,
              checkpoint_dir=partial.folder, resume=True)
        if at in eval_at and curve[-1]["step"] != at:   # interrupted while measuring this step
            measure_now(u, u.history[-1]["seconds"])
    else:   # the config beside any checkpoint the fit writes (even on Ctrl-C)
        partial.save(curve)
    diverged = None
    try:
        if race is None or not race.judge(curve[-1]):   # a resumed run may have been out already
            u.fit(retain_data, forget_data, steps=steps, batch_size=batch_size, progress=progress,
                  callback=track, checkpoint_dir=partial.folder, stop_when=race)
    except FloatingPointError as e:  # gradient ascent can blow up: that is a result too
        diverged = u.step + 1
        print(f"{label(spec)} diverged: {e}")
    prep = u.prep_seconds or 0.0
    train = u.history[-1]["seconds"] if u.history else 0.0
    curve[0]["seconds"] = prep  # the starting point is reached after preparation
    final = evaluate(u.unet, **measure, return_samples=True)
    forget_samples = final.pop("samples")["forget"]
    if curve[-1]["step"] != u.step:
        curve.append(_point(u.step, train, prep, final))
    result = dict(
        lr=method_lr, steps=u.step, diverged_at_step=diverged, prep_seconds=prep,
        train_seconds=train, step_seconds=train / len(u.history) if u.history else None,
        fa_final=final["fa"], fa_digits_final=final["fa_digits"],
        retain_acc_final=final["retain_acc"], frechet_final=final["frechet"],
        gaussian_std_final=final["gaussian_std"], gaussian_mean_final=final["gaussian_mean"],
        entropy_final=final["entropy"], method_config=u.method.config(), curve=curve)
    if race is not None:
        result["raced_out_at"] = race.out_at
    result["stop_rule"] = stop_rule_replay(u.history)
    if attacks:
        result["attack"] = []
        for a in attacks:
            start = time.perf_counter()
            attacked = run_attack(a, u.unet, measure["scheduler"], attack_x, attack_y, seed=seed)
            seconds = time.perf_counter() - start
            fa = forget_accuracy(attacked, measure["scheduler"], measure["classifier"],
                                 measure["forget"][0], measure["n_forget"],
                                 measure["num_inference_steps"], measure["seed"])
            result["attack"].append(dict(a.record(), seconds=seconds, fa_before=final["fa"],
                                         fa_after=fa["fa"], fa_digits_after=fa["fa_digits"]))
            print(f"  {a.name} attack ({a.describe()}): FA {final['fa']:.2f} -> {fa['fa']:.2f}")
    return result, forget_samples


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


def _finished(cache: str, config: dict, race: bool):
    """The finished run in ``cache`` if a comparison with ``config`` may reuse it, else None."""
    if not os.path.exists(cache):
        return None
    with open(cache) as f:
        saved = json.load(f)
    return saved if _reusable(saved, config, race) else None


class SettingBusy(RuntimeError):
    """Another process is running this setting of a comparison (``RunLock``)."""


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
    own = {"method", "lr", "gaussian_fraction"}   # what each method's config adds to the settings
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


def stop_rule_replay(history: list, rule=None):
    """Where the label-free stopping rule (``safemax.stopping``; default ``nats:0.01:5``) would have
    stopped this fit — what a user without a classifier pays: ``{"rule", "step", "train_seconds"}``
    (``step`` None: it never fired), or None for a method that does not log SAFEMax's nats."""
    from .stopping import NatsRule
    rule = rule or NatsRule()
    if not history or not all(k in history[0] for k in ("forget_nats", "retain_nats")):
        return None
    at = next((h for i, h in enumerate(history) if rule(history[:i + 1])), None)
    return dict(rule=str(rule), step=None if at is None else at["step"],
                train_seconds=None if at is None else at["seconds"])


def _point(step: int, train_seconds: float, prep_seconds: float, m: dict) -> dict:
    """One curve point: the step, training and wall time (preparation included), the metrics."""
    return dict(step=step, train_seconds=train_seconds, seconds=prep_seconds + train_seconds,
                **{k: m[k] for k in ("fa", "fa_digits", "retain_acc", "frechet", "gaussian_std")})


def _fmt(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def _ratio_text(r) -> str:
    if r is None:
        return "—"
    return f"> {r['>']:.1f}×" if isinstance(r, dict) else f"{r:.1f}×"


def table(report: dict) -> str:
    """A console table of the comparison."""
    lines = [f"{'method':<26} {'lr':>6} {'prep s':>7} {'first: steps':>12} {'s':>6} {'held: steps':>11} "
             f"{'s':>6} {'held ±1':>7} {'vs SAFEMax':>10} {'FA':>5} {'retain':>6} {'Fréchet':>8}"]
    for name, r in report["methods"].items():
        lines.append(f"{label(name):<26} {r['lr']:>6.0e} {r['prep_seconds']:>7.1f} "
                     f"{_fmt(r['steps_to_forget'], 'd'):>12} {_fmt(r['seconds_to_forget'], '.1f'):>6} "
                     f"{_fmt(r['steps_to_forget_held'], 'd'):>11} {_fmt(r['seconds_to_forget_held'], '.1f'):>6} "
                     f"{_fmt(r.get('steps_to_forget_held_within_one'), 'd'):>7} "
                     f"{_ratio_text(r['held_time_to_forget_vs_safemax']):>10} {r['fa_final']:>5.2f} "
                     f"{r['retain_acc_final']:>6.3f} {r['frechet_final']:>8.2f}")
    return "\n".join(lines)


def _elsewhere(report: dict) -> str:
    """The methods that ran on another machine than the report's (a comparison resumed on another
    machine reuses the finished ones): their wall times do not compare with the others'."""
    here = report["machine"]
    other = {}
    for name, r in report["methods"].items():
        m = r.get("machine", here)
        if (m["cpu"], m["threads"]) != (here["cpu"], here["threads"]):
            other.setdefault(f"{m['cpu']}, {m['threads']} threads", []).append(label(name))
    return "".join(f"; {', '.join(names)} ran on {where} (times not comparable)" for where, names in other.items())


def markdown(report: dict, sample_rows: list) -> str:
    s, o, m = report["settings"], report["original"], report["machine"]
    info = model_info(s.get("model", "digits"))
    what = f"{'digit' if info.name == 'digits' else 'class'} {info.class_name(s['forget'])}"
    out = [f"# safemax compare: forgetting {what}\n",
           f"Embedded {info.name} model; {s['steps']} steps per method at batch {s['batch_size']} forget + "
           f"{s['batch_size']} retain, Adam; measured every {s['eval_every']} steps ({s['n_forget']} "
           f"forget samples, {s['n_per_class']} per kept class, DDIM {s['num_inference_steps']}). "
           f"Forgotten = FA ≤ {report['bar']['fa_max']:.0%} with retain accuracy ≥ "
           f"{report['bar']['retain_acc_min']:.3f} (original {o['retain_acc']:.3f} − 0.02). Times include "
           f"preparation. Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}"
           f"{_elsewhere(report)}.\n",
           "*First*: the first measurement that meets the bar; *held*: the first from which every "
           "later measurement meets it; *held ±1*: the same where a later measurement may miss the "
           f"retain floor by one retain sample ({retain_sample(s):.4f}) — a held time far above its ±1 "
           "is one sample's flip, not forgetting undone. Ratios: time to forget (held) over "
           "SAFEMax's; \"> x\" where a method never got there (its whole budget over SAFEMax's time).\n",
           "| method | lr | prep s | s / step | first: steps | s | Fréchet there | held: steps | s | "
           "held ±1: steps | vs SAFEMax (held) | final FA | retain acc | Fréchet | forget std |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
           f"| original | | | | | | | | | | | {o['fa']:.2f} | {o['retain_acc']:.3f} | {o['frechet']:.2f} | "
           f"{o['gaussian_std']:.2f} |"]
    for name, r in report["methods"].items():
        note = f" (diverged at step {r['diverged_at_step']})" if r["diverged_at_step"] else ""
        if r.get("raced_out_at") is not None:   # its final figures are that step's
            note += f" (out of the race at step {r['raced_out_at']})"
        out.append(f"| {label(name)}{note} | {r['lr']:g} | {r['prep_seconds']:.1f} | "
                   f"{_fmt(r['step_seconds'], '.2f')} | {_fmt(r['steps_to_forget'], 'd')} | "
                   f"{_fmt(r['seconds_to_forget'], '.1f')} | {_fmt(r['frechet_at_forget'], '.1f')} | "
                   f"{_fmt(r['steps_to_forget_held'], 'd')} | {_fmt(r['seconds_to_forget_held'], '.1f')} | "
                   f"{_fmt(r.get('steps_to_forget_held_within_one'), 'd')} | "
                   f"{_ratio_text(r['held_time_to_forget_vs_safemax'])} | "
                   f"{r['fa_final']:.2f} | {r['retain_acc_final']:.3f} | {r['frechet_final']:.2f} | "
                   f"{r['gaussian_std_final']:.2f} |")
    if s["attack"]:
        attacks = s["attacks"]
        out += ["", f"Relearning attacks: Adam on the plain denoising loss on real images of {what} "
                "(each attack on the first of one seeded draw), then forget accuracy again; in brackets: "
                "over the 10 classes only — a damaged sample the 11-class classifier calls "
                f"\"{info.not_a_class}\" may still look most like the class. *Breaks under*: the attacks "
                f"after which FA > {BREAK_FA}.\n"]
        out += [f"- **{a['name']}**: {describe(a)}" for a in attacks] + [""]
        out += ["| method | FA before | " + " | ".join(a["name"] for a in attacks) + " | breaks under |",
                "| --- | ---: | " + " | ".join("---:" for _ in attacks) + " | --- |"]
        for name, r in report["methods"].items():
            a = r.get("attack") or []
            broken = [x["name"] for x in a if x["fa_after"] > BREAK_FA]
            out.append(f"| {label(name)} | {r['fa_final']:.2f} | " +
                       " | ".join(f"{x['fa_after']:.2f} ({x['fa_digits_after']:.2f})" for x in a) +
                       f" | {', '.join(broken) or 'none'} |")
    out += ["", "![forget and retain accuracy against wall time](curves.png)", "",
            "Forget-class samples, one row each: " + ", ".join(label(k) for k in sample_rows) +
            ".\n", "![samples](samples.png)", ""]
    return "\n".join(out)
