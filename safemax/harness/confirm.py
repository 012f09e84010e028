"""Confirm a finished comparison's held steps afterwards, with a heavy measurement.

A comparison run without ``confirm_per_class`` judged its held steps on the light measurement
alone (20 samples per kept class: cannot resolve the 2-point bar). ``confirm_run`` replays one of
its runs — the same method, settings, seed and data, so the same fit (bit for bit on one CPU
machine) — to the recorded held step, measures it there light (the replay's check: it should give
the recorded point) and heavy (``bar.needed_per_class`` samples per kept class, 3× the forget
samples), and goes on to each later measurement step until a heavy measurement meets the bar.
That is the step ``compare(..., confirm_per_class=...)`` reports as confirmed (``bar.Confirmer``):
the recorded light curve meets the bar at every point from the held step on, so the confirmer
would have measured exactly these points. Nothing before the held step is measured: a replay
costs its steps and a few heavy measurements, not a whole comparison.

Each run's answer is kept in ``<comparison>/confirm/<spec>.json`` (reused when there); the run
under way checkpoints every measurement interval in ``<spec>.partial/`` and continues from there.
"""
import copy
import json
import os

from safemax.evaluation.metrics import evaluate
from safemax.evaluation.report import write_json
from safemax.harness.compare import build_method, parse_method
from safemax.harness.defaults import MODEL_OPTIONS
from safemax.harness.bar import FA_BAR, RETAIN_SLACK, meets_bar, needed_per_class, power, summarise
from safemax.harness.store import Partial, RunLock, cached, method_cache, partial_folder
from safemax.harness.task import Task
from safemax.training.unlearner import Unlearner


def confirm_folder(comparison: str) -> str:
    return os.path.join(comparison, "confirm")


def _light(point: dict) -> dict:
    return {k: point[k] for k in ("fa", "retain_acc", "frechet") if k in point}


def confirm_run(comparison: str, spec: str, per_class="auto", device: str = "cpu", progress: bool = True) -> dict:
    """The confirmation of ``spec``'s finished run in the comparison folder ``comparison`` (see the
    module): ``held`` (the light held step), ``confirmed`` (the first step from it whose heavy
    measurement meets the bar; None: none within the budget, or never held), ``points`` (per step
    measured: the recorded and replayed light numbers and the heavy ones), the heavy measurement's
    size, floor and power."""
    cache = method_cache(comparison, spec)
    if not os.path.exists(cache):
        raise FileNotFoundError(f"{cache}: no finished run of {spec!r} in {comparison} — run the comparison first")
    os.makedirs(confirm_folder(comparison), exist_ok=True)
    out = os.path.join(confirm_folder(comparison), os.path.basename(cache))
    if os.path.exists(out):
        with open(out) as f:
            return json.load(f)
    with open(cache) as f:
        saved = json.load(f)
    config, result = saved["config"], saved["result"]
    curve = result["curve"]
    light_floor = curve[0]["retain_acc"] - RETAIN_SLACK
    held = summarise(result, light_floor)["steps_to_forget_held"]
    if per_class == "auto":
        per_class = needed_per_class(curve[0]["retain_acc"])
    answer = dict(spec=spec, forget=config["forget"], held=held, confirmed=None, per_class=per_class,
                  n_forget=3 * config["n_forget"], light=power(config, curve[0]["retain_acc"]),
                  heavy=power(dict(n_per_class=per_class), curve[0]["retain_acc"]), points=[])
    if held is None:   # nothing to confirm
        write_json(out, answer | dict(why="the light measurement never held the bar"))
        return answer

    task = Task(config["model"], config["forget"], config["seed"], device)
    base, scheduler = task.load()
    measure = task.measure_kwargs(scheduler, n_forget=config["n_forget"], n_per_class=config["n_per_class"],
                                  num_inference_steps=config["num_inference_steps"])
    heavy = dict(measure, n_per_class=per_class, n_forget=3 * config["n_forget"])
    # the heavy original: one per comparison and size, shared by its runs
    original = cached(os.path.join(confirm_folder(comparison), f"original-{per_class}.json"),
                      lambda: evaluate(base, **heavy))
    floor = original["retain_acc"] - RETAIN_SLACK
    answer.update(heavy_original=_light(original), heavy_floor=floor)

    name, options = parse_method(spec)
    lr = options.get("lr", config["lr"])
    if lr != config["lr"]:
        raise ValueError(f"{cache} ran at lr {config['lr']}, its spec says {lr}")
    options = {k: v for k, v in options.items() if k != "lr"}
    for key in MODEL_OPTIONS:   # a model default the cache recorded
        if key in config:
            options.setdefault(key, config[key])
    u = Unlearner(copy.deepcopy(base), scheduler, forget=[config["forget"]], lr=lr, seed=config["seed"],
                  method=build_method(name, options))
    recorded = {p["step"]: p for p in curve}
    due = [s for s in sorted(recorded) if s >= held]   # the confirmer's points: light meets the bar at each
    assert all(meets_bar(recorded[s], light_floor) for s in due), "held: every later point meets the bar"
    every = config["eval_every"]
    partial = Partial(partial_folder(out), dict(config, confirm_per_class=per_class), resume=True)
    points = list(partial.resumed[0]) if partial.resumed else []

    def track(u, record):
        step = record["step"]
        if step in due and all(p["step"] != step for p in points):
            m = evaluate(u.unet, **heavy)
            points.append(dict(step=step, recorded=_light(recorded[step]), replayed=_light(evaluate(u.unet, **measure)),
                               heavy=_light(m), meets=m["fa"] <= FA_BAR and m["retain_acc"] >= floor))
            print(f"{spec}, step {step}: heavy FA {m['fa']:.3f}, retain {m['retain_acc']:.3f} "
                  f"(floor {floor:.3f}): {'confirmed' if points[-1]['meets'] else 'not confirmed'}", flush=True)
        if step % every == 0 or step in due:
            partial.save(points, u, config["batch_size"])

    def confirmed(history) -> bool:
        return any(p["meets"] for p in points)

    with RunLock(out, f"confirming {spec}"):
        if not confirmed(None):
            u.fit(task.retain_data, task.forget_data, steps=config["steps"], batch_size=config["batch_size"],
                  progress=progress, callback=track, checkpoint_dir=partial.folder, resume=partial.resumed is not None,
                  stop_when=confirmed)
    answer["points"] = sorted(points, key=lambda p: p["step"])
    answer["confirmed"] = next((p["step"] for p in answer["points"] if p["meets"]), None)
    answer["replay_seconds"] = u.history[-1]["seconds"] if u.history else None
    write_json(out, answer)
    partial.done()
    return answer
