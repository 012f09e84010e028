"""Confirm finished comparisons' held steps with a heavy measurement, after the fact.

The tuned-baselines head-to-head (`tune_baselines.py`) judged every held step on the light
measurement (20 samples per kept class: a standard error of ~3.9 points on Fashion-MNIST, which
cannot resolve the 2-point bar). This replays chosen runs of finished comparisons to their held
step (`safemax.harness.confirm`: same settings, seed and data — the replay's light measurement is
checked against the recorded one) and measures them heavy there and at each later measurement
until one meets the bar — the step `safemax compare --confirm auto` would have reported. The
cheapest replays first (held step × the run's step time), so that ``--max-held`` lets a session
do those that fit.

    python benchmarks/confirm_held.py --comparisons benchmarks/results/tuned-fashion-mnist/head-to-head/class{6,9} \
        --specs safemax:lr=0.0001 safemax:lr=0.0001,kept_contrast=4 --max-held 100 \
        --prices benchmarks/results/tuned-fashion-mnist/head-to-head/prices.json \
        --reference safemax:lr=0.0001,kept_contrast=4 --out benchmarks/results/tuned-fashion-mnist/confirmed
    python benchmarks/confirm_held.py ... --summarise     # the table of what is confirmed so far; runs nothing

Each run's answer is kept beside its comparison (``<comparison>/confirm/<spec>.json``) and reused;
the table (``OUT/confirmed.md``, ``confirmed.json``) lists every finished run of the given
comparisons (``--specs`` chooses only what is replayed), confirmed or not yet (*not replayed*; *under way*: as far as a replay under way or interrupted got). Confirmation can only keep a held step or move it
later (or to *never*): a run not yet replayed has its light held step as a lower bound.
"""
import argparse
import json
import os

from safemax.evaluation.report import write_json
from safemax.harness.bar import RETAIN_SLACK, summarise
from safemax.harness.confirm import confirm_folder, confirm_run
from safemax.harness.store import Partial, method_cache, partial_folder
from safemax.harness.tables import label


def runs(comparison: str, specs=None) -> list:
    """``(spec, finished run + its class as ``forget``)`` of ``comparison``'s finished runs (those of ``specs`` only, if given)."""
    with open(os.path.join(comparison, "results.json")) as f:
        report = json.load(f)
    found = [(spec, dict(r, forget=report["settings"]["forget"])) for spec, r in report["methods"].items()
             if specs is None or spec in specs]
    missing = set(specs or ()) - {spec for spec, _ in found}
    if missing:
        raise SystemExit(f"{comparison} has no finished run of {sorted(missing)}: its runs are {sorted(report['methods'])}")
    return found


def held_step(r: dict):
    return summarise(r, r["curve"][0]["retain_acc"] - RETAIN_SLACK)["steps_to_forget_held"]


def kept(comparison: str, spec: str):
    """The confirmation of ``spec`` on disk, or None; one under way (interrupted, or running now)
    as far as it got, with ``under_way`` True and ``confirmed`` None."""
    path = os.path.join(confirm_folder(comparison), os.path.basename(method_cache(comparison, spec)))
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    curve = os.path.join(partial_folder(path), Partial.CURVE)
    if not os.path.exists(curve):
        return None
    with open(curve) as f:
        saved = json.load(f)
    points = saved["curve"]
    if not points:
        return None
    original = os.path.join(confirm_folder(comparison), f"original-{saved['config']['confirm_per_class']}.json")
    with open(original) as f:
        floor = json.load(f)["retain_acc"] - RETAIN_SLACK
    return dict(points=points, confirmed=None, under_way=True, heavy_floor=floor,
                per_class=saved["config"]["confirm_per_class"])


def row(comparison: str, spec: str, r: dict, prices: dict = None) -> dict:
    c = kept(comparison, spec)
    out = dict(id=f"{r['forget']}/{spec}", comparison=comparison, forget=r["forget"], spec=spec, held=held_step(r),
               budget=r["steps"],
               replayed=c is not None and not c.get("under_way"), under_way=bool(c and c.get("under_way")),
               confirmed=c["confirmed"] if c else None)
    if c and c["points"]:
        last = next((p for p in c["points"] if p["meets"]), c["points"][-1])
        out.update(at=last["step"], heavy=last["heavy"], heavy_floor=c["heavy_floor"], per_class=c["per_class"],
                   points=c["points"],
                   recorded=last["recorded"], replayed_light=last["replayed"],
                   replay_agrees=last["recorded"].get("retain_acc") == last["replayed"].get("retain_acc")
                   and last["recorded"].get("fa") == last["replayed"].get("fa"))
    if prices and spec in prices["seconds_per_step"]:
        step = out["confirmed"] if out["replayed"] else None if out["under_way"] else out["held"]
        out["priced_seconds"] = None if step is None else prices["prep_seconds"].get(spec, 0.0) + step * prices["seconds_per_step"][spec]
    return out


def markdown(rows: list, reference: str = None) -> str:
    ref = {r["forget"]: r.get("priced_seconds") for r in rows if r["spec"] == reference and r["confirmed"] is not None}
    lines = ["| class | setting | held (light): step | confirmed: step | heavy there: FA, retain (floor) | "
             "replay's light = recorded | priced s | × reference |",
             "| ---: | --- | ---: | ---: | --- | --- | ---: | ---: |"]
    for r in rows:
        if r["under_way"]:
            confirmed = f"not by step {r['at']} (under way)"
        elif not r["replayed"]:
            confirmed = "not replayed" + (f" (≥ {r['held']})" if r["held"] is not None else "")
        else:
            confirmed = "never" + (f" within {r['budget']}" if r["held"] is not None else " held") if r["confirmed"] is None else str(r["confirmed"])
        heavy = (f"{r['heavy']['fa']:.3f}, {r['heavy']['retain_acc']:.3f} ({r['heavy_floor']:.3f}) at {r['at']}"
                 if "heavy" in r else "—")
        agree = "—" if "replay_agrees" not in r else ("yes" if r["replay_agrees"] else
                                                      f"no: {r['replayed_light']} vs {r['recorded']}")
        t = r.get("priced_seconds")
        ratio = "—"
        if t is not None and ref.get(r["forget"]):
            ratio = f"{'≥ ' if not r['replayed'] and not r['spec'] == reference else ''}{t / ref[r['forget']]:.1f}×"
        lines.append(f"| {r['forget']} | {label(r['spec'])} | {'never' if r['held'] is None else r['held']} | {confirmed} | "
                     f"{heavy} | {agree} | {'—' if t is None else format(t, '.1f')} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comparisons", nargs="+", required=True, help="finished `safemax compare` folders")
    p.add_argument("--specs", nargs="+", help="which runs to replay (default: every finished run)")
    p.add_argument("--max-held", type=int, default=None, help="replay only runs whose light held step is at most this")
    p.add_argument("--per-class", default="auto", help="the heavy measurement's samples per kept class (auto: bar.needed_per_class)")
    p.add_argument("--prices", help="a step_cost.json pricing the specs (times at its measured prices)")
    p.add_argument("--reference", help="the spec whose confirmed time the others are divided by")
    p.add_argument("--summarise", action="store_true", help="the table of what is on disk; replays nothing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    per_class = args.per_class if args.per_class == "auto" else int(args.per_class)
    prices = None
    if args.prices:
        with open(args.prices) as f:
            prices = json.load(f)
    todo = [(comparison, spec, r) for comparison in args.comparisons for spec, r in runs(comparison, args.specs)]
    # the table lists every finished run of the comparisons: --specs chooses what is replayed, and a
    # summary with it must not drop the other methods' rows (the lower bounds the ratios rest on)
    listed = [(comparison, spec, r) for comparison in args.comparisons for spec, r in runs(comparison)]
    if not args.summarise:   # the cheapest first: held step × the run's own step time
        for comparison, spec, r in sorted(todo, key=lambda t: (held_step(t[2]) or 0) * (t[2]["step_seconds"] or 1)):
            held = held_step(r)
            if args.max_held is not None and held is not None and held > args.max_held:
                continue
            print(f"confirming {spec} in {comparison} (light held step {held})", flush=True)
            confirm_run(comparison, spec, per_class=per_class, device=args.device)
    rows = [row(comparison, spec, r, prices) for comparison, spec, r in listed]
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "confirmed.json"), dict(rows=rows, reference=args.reference,
                                                               prices=args.prices, per_class=args.per_class))
    text = markdown(rows, args.reference)
    with open(os.path.join(args.out, "confirmed.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
