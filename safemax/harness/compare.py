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
import copy
import dataclasses
import math
import os
import time

import torch

from safemax.evaluation.attacks import (
    DEFAULT_ATTACKS,
    draw_images,
    parse_attack,
    relearning_attack,  # noqa: F401 (relearning_attack: compare's API)
    run_attack,
)
from safemax.evaluation.metrics import classify, evaluate
from safemax.evaluation.report import save_comparison_curves, save_grid, write_json
from safemax.harness.bar import (
    FA_BAR,
    RETAIN_SLACK,
    Confirmer,
    Race,
    evaluation_steps,
    needed_per_class,
    power,
    retain_sample,
    stop_rule_replay,
    summarise,
)
from safemax.harness.store import (
    SAMPLE_ROWS,
    Partial,
    RunLock,
    finished,
    finished_runs,
    machine,
    method_cache,
    pack_samples,
    partial_folder,
    unpack_samples,
)
from safemax.harness.tables import LABELS, label, markdown, table
from safemax.harness.task import Task
from safemax.methods import METHODS, make_method
from safemax.models.sampling import sample
from safemax.training.unlearner import Unlearner

ALL_METHODS = ("safemax", "salun", "sa", "ga")


@torch.no_grad()
def forget_accuracy(unet, scheduler, classifier, forget: int, n: int, num_inference_steps: int,
                    seed: int) -> dict:
    """Forget accuracy alone (forget-class samples only), for the attack."""
    labels = torch.full((n,), forget)
    logits = classify(classifier, sample(unet, scheduler, labels, num_inference_steps, seed=seed))
    return dict(fa=float((logits.argmax(1) == labels).float().mean()),
                fa_digits=float((logits[:, :10].argmax(1) == labels).float().mean()))


QUICK_SA = dict(n_replay=8, n_fisher=3, fisher_timesteps=2, sample_steps=2)  # smoke runs only


def parse_method(spec: str, quick: bool = False):
    """``"salun"`` or ``"salun:retain_weight=1,mask_fraction=0.3"`` → ``(name, options)``:
    a method name and its settings, each value typed by the method's settings dataclass (a name
    that is none of its fields is refused with the valid ones). An ``lr`` option
    (``"salun:lr=5e-4,retain_weight=1"``) is that method's learning rate: tuned settings differ
    per method, and it overrides ``--lr``."""
    name, _, rest = spec.partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} in {spec!r}: choose from {list(METHODS)}, "
                         "optionally with options, e.g. salun:retain_weight=1")
    items = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"method option {item!r} in {spec!r}: write name=value")
        items[key] = value
    lr = items.pop("lr", None)
    if lr is not None:
        try:
            lr = float(lr)
        except ValueError:
            lr = None
        if lr is None or not lr > 0:
            raise ValueError(f"{spec!r}: lr must be a positive number")
    if name == "sa" and quick:
        items = {**{k: str(v) for k, v in QUICK_SA.items()}, **items}
    try:   # typed and checked now, not after the other methods have run
        settings = METHODS[name].settings_class.from_text(items, f"method {name!r}")
        build_method(name, {k: getattr(settings, k) for k in items})
    except ValueError as e:
        said = str(e).replace(f"method {name!r}: ", "")   # (the spec already names the method)
        raise ValueError(f"{spec!r}: " + said.replace("(its settings: ", "(its settings: lr, ")) from None
    options = {k: getattr(settings, k) for k in items}
    return name, (options if lr is None else {"lr": lr, **options})


def build_method(name: str, options: dict):
    """The method object of a parsed spec (SAFEMax with the demo's early fraction by default);
    an ``lr`` option is the fit's, not the method's."""
    options = {k: v for k, v in options.items() if k != "lr"}
    if name == "safemax":
        from safemax.harness.defaults import DEFAULT_EARLY_FRACTION
        options = {"early_fraction": DEFAULT_EARLY_FRACTION, **options}
    return make_method(name, **options)


def run(forget: int = 3, methods=ALL_METHODS, steps: int = 500, eval_every: int = 25,
        batch_size: int = 64, lr: float = None, out: str = "safemax-compare", seed: int = 0,
        attack: bool = True, attack_images: int = 10, attack_steps: int = 50,
        attacks=DEFAULT_ATTACKS, n_forget: int = 100, n_per_class: int = 20,
        num_inference_steps: int = 25, quick: bool = False, resume: bool = False,
        progress: bool = True, model: str = "digits", device: str = "cpu", race: bool = False,
        step_costs: dict = None, keep_finished: bool = False, confirm_per_class=0) -> dict:
    """Run the comparison on the embedded model ``model`` ("digits" or "fashion-mnist"); returns
    (and writes) the results. ``lr=None`` gives each method its own default (SAFEMax and robust
    SAFEMax: the demo's for the model — 5e-4 on the digits, 1e-4 on Fashion-MNIST; the baselines: their published 1e-4); ``device``: where the models run ("cuda": a GPU).
    ``attacks``: the relearning attacks run on every result, preset names or specs of
    ``safemax.evaluation.attacks`` (``"weak"``, ``"lora:rank=4"``, ...); those that fix no steps or image count
    take ``attack_steps`` and ``attack_images``.

    ``race``: for a sweep of settings ranked by the fewest steps to the held bar (see ``Race``) — a
    method stops at the first measurement that fails the bar at or after the held step of the best
    method already finished; its result ends there (``raced_out_at``). ``step_costs``
    (``{spec: relative cost of its step}``, 1 where missing) weights each method's steps in that
    ranking, for settings whose steps cost differently (``kept_contrast`` adds rows to the step).

    ``keep_finished``: the report also holds every other finished run in ``out/methods/`` of the
    same comparison (same settings; a raced-out run only in a race), rows ordered by method, then
    by spec (whichever settings this call ran) — so runs of one method at a time into one folder
    (two processes sharing the work) each leave the folder's report whole, and in one order.

    ``confirm_per_class``: a light measurement (``n_per_class``) finds the step, a heavy one with
    this many samples per kept class (and 3× the forget samples) confirms it (``bar.Confirmer``):
    ``"auto"`` takes the fewest that resolve the 2-point bar for this model (``bar.power``); 0
    (default): none — the held steps then rest on the light measurement alone."""
    from safemax.harness.defaults import MODEL_OPTIONS, method_settings

    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError(f"no methods: choose from {list(ALL_METHODS)}")
    costs = {spec: 1.0 for spec in methods} | dict(step_costs or {})
    if set(costs) - set(methods):
        raise ValueError(f"step_costs names settings that are not compared: {sorted(set(costs) - set(methods))}")
    if not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in costs.values()):
        raise ValueError(f"step_costs must be positive numbers, got {step_costs}")
    parsed = {spec: parse_method(spec, quick) for spec in methods}
    task = Task(model, forget, seed, device)
    if steps < 1 or eval_every < 1 or batch_size < 1:
        raise ValueError("steps, eval_every and batch_size must be >= 1")
    if attack_steps < 1 or attack_images < 1:
        raise ValueError("attack_steps and attack_images must be >= 1")
    attacks = [a.resolved(attack_steps, attack_images) for a in map(parse_attack, attacks)] if attack else []
    if len({a.name for a in attacks}) < len(attacks):
        raise ValueError(f"two attacks share a name in {[a.name for a in attacks]}: name each once")
    wanted = max([a.images for a in attacks], default=0)   # drawn before --quick shrinks the attacks
    if any(a.train == "lora" for a in attacks):
        from safemax.models.lora import _peft
        _peft()   # no peft: say so now, not after every method's fit
    if quick:  # every stage runs, on a few samples: minutes become seconds
        steps, eval_every, batch_size = min(steps, 2), 1, min(batch_size, 8)
        n_forget, n_per_class, num_inference_steps = 4, 1, 2
        attacks = [dataclasses.replace(a, steps=min(a.steps, 2), images=min(a.images, 4)) for a in attacks]
    os.makedirs(os.path.join(out, "methods"), exist_ok=True)

    forget_data, retain_data = task.forget_data, task.retain_data
    base, scheduler = task.load()
    measure = task.measure_kwargs(scheduler, n_forget=n_forget, n_per_class=n_per_class,
                                  num_inference_steps=num_inference_steps)
    attack_x, attack_y = draw_images(forget_data, wanted, seed)   # each attack takes its first a.images
    settings = dict(model=model, forget=forget, steps=steps, eval_every=eval_every, batch_size=batch_size,
                    seed=seed, n_forget=n_forget, n_per_class=n_per_class,
                    num_inference_steps=num_inference_steps, attack=bool(attacks),
                    attacks=[a.record() for a in attacks], quick=quick)

    original = evaluate(base, **measure, return_samples=True)
    original_samples = original.pop("samples")["forget"]
    retain_floor = original["retain_acc"] - RETAIN_SLACK
    if confirm_per_class == "auto":
        confirm_per_class = 2 if quick else needed_per_class(original["retain_acc"])
    if not (isinstance(confirm_per_class, int) and confirm_per_class >= 0):
        raise ValueError(f"confirm_per_class must be a whole number >= 0 or 'auto', got {confirm_per_class!r}")
    confirmer = None
    if confirm_per_class:   # (in the settings only when on: the caches of comparisons before it stay valid)
        settings["confirm_per_class"] = confirm_per_class
        heavy = dict(measure, n_per_class=confirm_per_class, n_forget=3 * n_forget)
        original["confirm"] = evaluate(base, **heavy)
        confirmer = Confirmer(heavy, original["confirm"]["retain_acc"] - RETAIN_SLACK, retain_floor)
    print(f"safemax compare: forgetting {task.what} of {model}; original FA {original['fa']:.2f}, retain "
          f"accuracy {original['retain_acc']:.3f} (bar: FA <= {FA_BAR}, retain >= {retain_floor:.3f})")

    results, samples = {}, {"original": original_samples}
    for spec in methods:
        name, options = parsed[spec]
        # the model's demo settings (SAFEMax and robust SAFEMax: its lr and Gaussian share)
        method_lr, options = method_settings(model, name, options, lr)
        cache = method_cache(out, spec)
        config = dict(settings, method=spec, lr=method_lr)
        for key in MODEL_OPTIONS:   # a model default the spec left out: the cache says so
            if key in options and key not in parsed[spec][1]:
                config[key] = options[key]
        saved = finished(cache, config, race) if resume else None
        if saved is None:
            with RunLock(cache, label(spec)):
                # another process may have finished it while this one measured or ran others
                saved = finished(cache, config, race) if resume else None
                if saved is None:
                    partial = Partial(partial_folder(cache), config, resume)
                    results[spec], samples[spec] = _run_method(
                        spec, name, options, method_lr, base, original, measure, retain_data, forget_data,
                        batch_size, steps, eval_every, seed, retain_floor, attacks, attack_x, attack_y, progress,
                        partial, confirmer,
                        Race.behind([(r, costs[s]) for s, r in results.items()], retain_floor, costs[spec])
                        if race else None)
                    results[spec]["machine"] = machine()   # a comparison resumed elsewhere mixes machines
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
    report = dict(settings=settings, machine=machine(),
                  bar=dict(fa_max=FA_BAR, retain_acc_min=retain_floor, retain_sample=leeway,
                           **power(settings, original["retain_acc"])),
                  original=original, methods=results)
    write_json(os.path.join(out, "results.json"), report)
    save_comparison_curves(results, original, os.path.join(out, "curves.png"), {k: label(k) for k in results},
                           f"forgetting {task.what}: "
                           "wall time includes preparation", report["bar"])
    rows = list(samples)
    save_grid(torch.cat([samples[k][:SAMPLE_ROWS] for k in rows]), rows=len(rows),
              path=os.path.join(out, "samples.png"))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(report, rows))
    print(table(report))
    print(f"results in {out}/ (results.json, results.md, curves.png, samples.png)")
    return report


def _run_method(spec, name, options, method_lr, base, original, measure, retain_data, forget_data, batch_size, steps,
                eval_every, seed, retain_floor, attacks, attack_x, attack_y, progress, partial: Partial,
                confirmer: Confirmer = None, race: Race = None):
    method = build_method(name, options)
    u = Unlearner(copy.deepcopy(base), measure["scheduler"], forget=measure["forget"], lr=method_lr,
                  seed=seed, method=method)
    curve = [_point(0, 0.0, 0.0, original)]
    eval_at = evaluation_steps(steps, eval_every)

    def measure_now(u, seconds):
        curve.append(_point(u.step, seconds, u.prep_seconds, evaluate(u.unet, **measure)))
        if confirmer is not None:
            confirmer(u.unet, curve[-1], evaluate)
        partial.save(curve, u, batch_size)

    def track(u, record):
        if record["step"] in eval_at:
            measure_now(u, record["seconds"])
            if race is not None:
                race.judge(curve[-1])

    print(f"\n{label(spec)} (lr {method_lr}, {steps} steps, batch {batch_size}+{batch_size})")
    if confirmer is not None:
        confirmer.ok = False   # each method's curve is confirmed from its start
    if partial.resumed is not None:   # restore the fit at the checkpoint's step, then go on from there
        curve, at = partial.resumed
        if confirmer is not None:
            confirmer.replay(curve)
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


def _point(step: int, train_seconds: float, prep_seconds: float, m: dict) -> dict:
    """One curve point: the step, training and wall time (preparation included), the metrics."""
    return dict(step=step, train_seconds=train_seconds, seconds=prep_seconds + train_seconds,
                **{k: m[k] for k in ("fa", "fa_digits", "retain_acc", "frechet", "gaussian_std")})


