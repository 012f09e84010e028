"""How good is the label-free stopping rule? It is replayed on the training histories that
``benchmarks/classes.py`` keeps for every run, and its stopping step is held against the
classifier's verdict from the same runs (FA ≤ 1% with retain accuracy within 2 points of the
original, measured every ``--curve-every`` steps):

- *too early*: the rule stopped before the bar held (the classifier would say: not done yet);
- *wasted*: steps the rule ran past the first measurement from which the bar held;
- *bar met at the stop*: the first measurement at or after the stop meets the bar — the model a
  user who stopped there would keep is good, even where the bar had not yet *held* (a later
  measurement dips again);
- *missed*: the rule never fired within the run's steps.

    python benchmarks/stopping.py benchmarks/results/classes-digits [more run folders] \\
        --out benchmarks/results/stopping
    python benchmarks/stopping.py benchmarks/results/classes-digits benchmarks/results/classes-fashion-mnist-lr1e-4 \\
        --choose-on digits:0-4 --out benchmarks/results/stopping-held-out

With ``--choose-on MODEL:CLASSES`` the rule is *chosen* on those runs only (``choose``: the
cheapest rule of the grid whose stop met the bar on every one of them) and *reported* on every
other run — the held-out classes of that model and the other models' runs — beside the default.

A grid of ratios and windows is replayed; the table shows each, and the rule's default is marked.
A last table tells, per run folder, which side (the forget rows' nats or the retain rows') holds
the default rule back: with ``kept_contrast`` it is the forget side (docs/results/stopping.md).
"""
import argparse
import glob
import json
import os

from safemax.evaluation.report import write_json
from safemax.harness.bar import RETAIN_SLACK, held_step, meets_bar, run_held_step
from safemax.training.stopping import NatsRule, stop_rule

RATIOS = (0.2, 0.1, 0.05, 0.02, 0.01)
WINDOWS = (5, 10, 20)
def stop_step(rule, history):
    """The step at which ``rule`` would have stopped this fit (None: not within it)."""
    for i in range(1, len(history) + 1):
        if rule(history[:i]):
            return history[i - 1]["step"]
    return None


def replay(runs, rule) -> dict:
    """The rule against the classifier on every run."""
    rows = []
    for r in runs:
        floor = r["before"]["retain_acc"] - RETAIN_SLACK
        held = held_step(r["curve"], floor)[1]
        stop = stop_step(rule, r["history"])
        seconds = {h["step"]: h["seconds"] for h in r["history"]}   # training time, measurements excluded
        after = next((c for c in r["curve"] if stop is not None and c["step"] >= stop), None)
        rows.append(dict(model=r["model"], forget=r["forget"], seed=r["seed"], held=held, stop=stop,
                         held_seconds=seconds.get(held), stop_seconds=seconds.get(stop),
                         # the model a user keeps: the first measurement at or after the stop
                         met_at_stop=after is not None and meets_bar(after, floor),
                         too_early=stop is not None and (held is None or stop < held),
                         wasted=stop - held if stop is not None and held is not None and stop >= held else None))
    stopped = [x for x in rows if x["stop"] is not None]
    wasted = [x["wasted"] for x in rows if x["wasted"] is not None]
    return dict(rule=str(rule), runs=len(rows), stopped=len(stopped),
                too_early=sum(x["too_early"] for x in rows), missed=len(rows) - len(stopped),
                met_at_stop=sum(x["met_at_stop"] for x in rows),
                mean_stop=sum(x["stop"] for x in stopped) / len(stopped) if stopped else None,
                mean_wasted=sum(wasted) / len(wasted) if wasted else None,
                mean_stop_seconds=sum(x["stop_seconds"] for x in stopped) / len(stopped) if stopped else None,
                rows=rows)


SIDE_STEPS = (25, 50, 100, 200)


def side_step(rule, history, key):
    """The first step at which ``key`` alone passes ``rule``'s test (``NatsRule.under``; the rule
    fires once both sides do, at the same step; None: not within the fit)."""
    return next((history[i]["step"] for i in range(rule.window - 1, len(history))
                 if rule.under(history[:i + 1], key)), None)


def sides(runs, rule) -> dict:
    """Which side holds the rule back: per side, where each run first got under the bound, and
    both sides' nats (window means, relative to the first step's forget nats) at SIDE_STEPS."""
    out = dict(runs=len(runs), steps=min(len(r["history"]) for r in runs))
    for key in ("forget_nats", "retain_nats"):
        at = [side_step(rule, r["history"], key) for r in runs]
        rel = {}
        for s in SIDE_STEPS:   # the window of steps s-window+1 .. s, where every run has them
            windows = [[h[key] for h in r["history"] if s - rule.window < h["step"] <= s] for r in runs]
            if all(len(w) == rule.window for w in windows):
                rel[s] = sum(sum(w) / rule.window / r["history"][0]["forget_nats"]
                             for w, r in zip(windows, runs)) / len(runs)
        out[key] = dict(under=[a for a in at if a is not None], relative=rel)
    return out


def sides_table(groups, rule) -> list:
    """``groups``: {name: runs}. One row per group and side."""
    lines = [f"Which side holds the rule ({rule}) back — each side's nats over the last {rule.window} steps "
             "relative to the first step's forget nats (mean over the runs), and the step from which it is "
             f"under the bound {rule.ratio:g} (mean over the runs that got there):\n",
             "| runs | side | under the bound from | " + " | ".join(f"at step {s}" for s in SIDE_STEPS) + " |",
             "| --- | --- | ---: |" + " ---: |" * len(SIDE_STEPS)]
    for name, runs in groups.items():
        res = sides(runs, rule)
        for key in ("forget_nats", "retain_nats"):
            under = res[key]["under"]
            when = (f"{sum(under) / len(under):.0f} ({len(under)} of {res['runs']})" if under
                    else f"— (0 of {res['runs']} within {res['steps']} steps)")
            cells = [f"{res[key]['relative'][s]:.3f}" if s in res[key]["relative"] else "—" for s in SIDE_STEPS]
            lines.append(f"| {name} | {key.split('_')[0]} | {when} | " + " | ".join(cells) + " |")
    return lines


def choose(results: list) -> dict:
    """The rule a user would pick from these replays: the most runs with the bar met at the stop
    (a stop on a model that is not done is the failure that matters), then none missed, then the
    fewest steps to the stop."""
    return min(results, key=lambda r: (-r["met_at_stop"], r["missed"], r["mean_stop"] or float("inf")))


def parse_classes(spec: str) -> tuple:
    """``digits:0-4`` or ``fashion-mnist:0,2,5`` → (model, set of class ids)."""
    model, _, classes = spec.partition(":")
    ids = set()
    for part in filter(None, classes.split(",")):
        lo, _, hi = part.partition("-")
        ids.update(range(int(lo), int(hi or lo) + 1))
    if not model or not ids:
        raise SystemExit(f"--choose-on {spec!r}: write MODEL:CLASSES, e.g. digits:0-4")
    return model, ids


def held_out(runs: list, spec: str) -> tuple:
    """(lines, record): the rule chosen on ``spec``'s runs, then it and the default on the others."""
    model, ids = parse_classes(spec)
    chosen_on = [r for r in runs if r["model"] == model and r["forget"] in ids]
    if not chosen_on:
        raise SystemExit(f"--choose-on {spec}: no {model} run of classes {sorted(ids)} among the folders")
    pick = choose([replay(chosen_on, NatsRule(ratio, window)) for window in WINDOWS for ratio in RATIOS])
    rule = stop_rule(pick["rule"])
    default = NatsRule()
    groups = {f"{model} {sorted(ids)[0]}–{sorted(ids)[-1]} (chosen on)": chosen_on}
    for m in sorted({r["model"] for r in runs}):
        rest = [r for r in runs if r["model"] == m and r not in chosen_on]
        if rest:
            held = sorted({r["forget"] for r in rest})
            groups[f"{m} {held[0]}–{held[-1]} (held out)" if m == model else f"{m} (held out)"] = rest
    lines = [f"## Chosen on {model} classes {sorted(ids)[0]}–{sorted(ids)[-1]}, reported on the rest\n",
             f"The grid replayed on the {len(chosen_on)} runs of {model} classes {sorted(ids)} only picks "
             f"**{pick['rule']}** (`choose`: the most stops with the bar met, then none missed, then the fewest "
             f"steps). It and the default ({default}) on every group of runs:\n",
             "| runs | rule | stopped | too early | bar met at the stop | missed | mean stop step | mean wasted steps |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    record = dict(chosen_on=dict(model=model, classes=sorted(ids)), chosen=pick["rule"], default=str(default), groups=[])
    for name, group in groups.items():
        record["groups"].append(dict(name=name, rules=[]))
        for r in (rule, default) if str(rule) != str(default) else (rule,):
            res = replay(group, r)
            record["groups"][-1]["rules"].append({k: v for k, v in res.items() if k != "rows"})
            ms = "—" if res["mean_stop"] is None else f"{res['mean_stop']:.1f}"
            mw = "—" if res["mean_wasted"] is None else f"{res['mean_wasted']:.1f}"
            tag = " (chosen)" if str(r) == str(rule) else " (default)"
            lines.append(f"| {name} | {r}{tag} | {res['stopped']} of {res['runs']} | {res['too_early']} | "
                         f"{res['met_at_stop']} | {res['missed']} | {ms} | {mw} |")
    return lines, record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="output folders of benchmarks/classes.py")
    p.add_argument("--out", required=True)
    p.add_argument("--choose-on", metavar="MODEL:CLASSES", default=None,
                   help="choose the rule on these runs only (e.g. digits:0-4) and report it on the others")
    args = p.parse_args(argv)
    names = [os.path.basename(os.path.normpath(d)) for d in args.folders]
    if len(set(names)) < len(names):   # folders with the same last name: name each by its path
        names = list(args.folders)
    groups = {name: [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, "runs", "*.json")))]
              for name, d in zip(names, args.folders)}
    runs = [r for g in groups.values() for r in g]
    if not runs:
        raise SystemExit(f"no runs in {args.folders}: run benchmarks/classes.py first")
    default = NatsRule()
    results = [replay(runs, NatsRule(ratio, window)) for window in WINDOWS for ratio in RATIOS]
    held = [run_held_step(r)[1] for r in runs]
    models = sorted({r["model"] for r in runs})
    steps = [h for h in held if h is not None]
    when = (f", from step {sum(steps) / len(steps):.1f} on average (measured every few steps: the first "
            "measurement from which it held)") if steps else ""
    lines = [f"Replayed on {len(runs)} runs ({', '.join(models)}); the classifier's bar held within the "
             f"run in {len(steps)} of them{when}.\n",
             "| rule (ratio:window) | stopped | too early | bar met at the stop | missed | mean stop step | "
             "mean wasted steps | mean training s to the stop |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for res in results:
        mark = " (default)" if res["rule"] == str(default) else ""
        ms = "—" if res["mean_stop"] is None else f"{res['mean_stop']:.1f}"
        mw = "—" if res["mean_wasted"] is None else f"{res['mean_wasted']:.1f}"
        mss = "—" if res["mean_stop_seconds"] is None else f"{res['mean_stop_seconds']:.1f}"
        lines.append(f"| {res['rule']}{mark} | {res['stopped']} | {res['too_early']} | {res['met_at_stop']} | "
                     f"{res['missed']} | {ms} | {mw} "
                     f"| {mss} |")
    dflt = next(r for r in results if r["rule"] == str(default))
    # with several folders, each run's row says which (the rows follow the folders' order)
    folder = [name for name, g in groups.items() for _ in g] if len(groups) > 1 else None
    lines += ["", f"Per run, the default rule ({default}):\n",
              ("| runs " if folder else "") + "| model | class | seed | bar held from step (training s) | "
              "rule stopped at (training s) |",
              ("| --- " if folder else "") + "| --- | ---: | ---: | ---: | ---: |"]
    for i, x in enumerate(dflt["rows"]):
        held = "—" if x["held"] is None else f"{x['held']} ({x['held_seconds']:.1f})"
        stop = "—" if x["stop"] is None else f"{x['stop']} ({x['stop_seconds']:.1f})"
        lines.append((f"| {folder[i]} " if folder else "") + f"| {x['model']} | {x['forget']} | {x['seed']} | "
                     f"{held} | {stop}{' (too early)' if x['too_early'] else ''} |")
    lines += [""] + sides_table({k: v for k, v in groups.items() if v}, default)
    os.makedirs(args.out, exist_ok=True)
    if args.choose_on:
        extra, record = held_out(runs, args.choose_on)
        lines += [""] + extra
        write_json(os.path.join(args.out, "held-out.json"), record)
    write_json(os.path.join(args.out, "stopping.json"), results)   # (a list: its provenance in a sidecar)
    with open(os.path.join(args.out, "stopping.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
