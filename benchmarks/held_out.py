"""The README's head-to-head, re-measured on classes no method was tuned on, with the power it claims.

SAFEMax's learning rate and early fraction were chosen on digit 3 (`tau_sweep.py`, the demo), the
baselines run their published settings; the old headline compared them on digit 3 and judged the
2-point retain bar on 20 samples per kept class, which cannot resolve it. Here each of
``--classes`` (default: digits 7, 5, 9 — none of 0–4, where every setting was chosen) runs
`safemax compare` with ``--confirm auto`` (a light measurement finds the step, a heavy one with
enough kept samples to resolve 2 points confirms it: ``bar.needed_per_class``) and no attack;
then every method's step and preparation are priced side by side in one process
(`step_cost.py --specs`: the comparisons ran on shared cores, so their wall times compare the
load, not the methods); the summary gives per class and method the first, held and *confirmed*
step and the confirmed time at the measured prices (preparation + steps × step), and its ratio
to SAFEMax's.

    python benchmarks/held_out.py --out benchmarks/results/compare-held-out                 # ~1.5 h a class on 2 cores
    python benchmarks/held_out.py --classes 7 --summarise --out benchmarks/results/compare-held-out  # tables only
    python benchmarks/held_out.py --classes 7 --quick --out /tmp/h                            # seconds, not a result

Each class's comparison is a plain `safemax compare --model digits --forget N --steps 300
--methods safemax sa ga salun --confirm auto --no-attack --resume --out OUT/classN`: finished
methods are reused and an interrupted one continues (nothing is lost); the prices are kept in
``OUT/prices/step_cost.json``.
"""
import argparse
import json
import os

from safemax.evaluation.report import write_json
from safemax.harness.bar import power
from safemax.harness.compare import run as compare
from safemax.harness.tables import label
from safemax.evaluation.stats import t_interval

METHODS = ("safemax", "sa", "ga", "salun")


def class_folder(out: str, c: int) -> str:
    return os.path.join(out, f"class{c}")


def price(out: str, reps: int, quick: bool) -> dict:
    """Seconds per step and preparation of every method, measured side by side (reused when kept)."""
    import step_cost
    return step_cost.kept_prices(os.path.join(out, "prices", "step_cost.json"), list(METHODS), reps,
                                 model="digits", quick=quick)


def summarise(report: dict, prices: dict) -> dict:
    """Per method of one class's comparison: its steps to the bar (first, held, confirmed) and the
    confirmed time at the measured prices, against SAFEMax's."""
    rows = {}
    for spec, r in report["methods"].items():
        step = r.get("steps_to_forget_confirmed")
        per, prep = prices["seconds_per_step"][spec], prices["prep_seconds"].get(spec, 0.0)
        rows[spec] = dict(first=r["steps_to_forget"], held=r["steps_to_forget_held"], confirmed=step,
                          priced_seconds=None if step is None else prep + step * per,
                          budget_seconds=prep + r["steps"] * per, retain_final=r["retain_acc_final"],
                          fa_final=r["fa_final"], frechet_final=r["frechet_final"])
    ref = rows.get("safemax", {}).get("priced_seconds")
    for row in rows.values():
        mine = row["priced_seconds"]
        row["vs_safemax"] = None if not ref else (mine / ref if mine is not None else {">": row["budget_seconds"] / ref})
    confirm = report["settings"].get("confirm_per_class")
    return dict(forget=report["settings"]["forget"], methods=rows,
                light=power(report["settings"], report["original"]["retain_acc"]),
                heavy=power(dict(n_per_class=confirm), report["original"]["confirm"]["retain_acc"]) if confirm else None,
                original_retain=report["original"]["retain_acc"])


def pooled(summaries: list) -> dict:
    """Per method, over the classes: mean and 95% t half-width of the confirmed step, the priced
    time to it and its ratio to SAFEMax's, over the classes where it was confirmed (``n`` of
    ``classes``); ``ratio_at_least``: the mean ratio with the classes where it never was counted
    at their whole budget — a lower bound."""
    out = {}
    for spec in summaries[0]["methods"]:
        rows = [s["methods"][spec] for s in summaries if spec in s["methods"]]
        got = [r for r in rows if r["confirmed"] is not None]
        cell_ = lambda values: dict(zip(("mean", "half"), t_interval(values))) if values else None   # noqa: E731
        ratios = [r["vs_safemax"] if not isinstance(r["vs_safemax"], dict) else r["vs_safemax"][">"] for r in rows
                  if r["vs_safemax"] is not None]
        out[spec] = dict(classes=len(rows), n=len(got), confirmed=cell_([r["confirmed"] for r in got]),
                         priced_seconds=cell_([r["priced_seconds"] for r in got]),
                         vs_safemax=cell_([r["vs_safemax"] for r in got]),
                         ratio_at_least=cell_(ratios) if len(got) < len(rows) else None)
    return out


def _pm(c, spec: str) -> str:
    if c is None:
        return "—"
    return format(c["mean"], spec) + ("" if c["half"] is None else " ± " + format(c["half"], spec))


def _steps(x) -> str:
    return "never" if x is None else str(x)


def _ratio(x) -> str:
    if x is None:
        return "—"
    return f"> {x['>']:.1f}×" if isinstance(x, dict) else f"{x:.1f}×"


def markdown(summaries: list, prices: dict) -> str:
    per = prices["seconds_per_step"]
    lines = ["| class | method | bar first met: step | held from: step | confirmed: step | time to confirmed (priced) | "
             "× SAFEMax | final retain acc | final Fréchet |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        for spec, r in s["methods"].items():
            t = "—" if r["priced_seconds"] is None else f"{r['priced_seconds']:.1f} s"
            lines.append(f"| {s['forget']} | {label(spec)} | {_steps(r['first'])} | {_steps(r['held'])} | "
                         f"{_steps(r['confirmed'])} | {t} | {_ratio(r['vs_safemax'])} | {r['retain_final']:.3f} | "
                         f"{r['frechet_final']:.2f} |")
    if len(summaries) > 1:
        lines += ["", f"Over the {len(summaries)} classes (mean ± 95% t-interval over those where it was confirmed; "
                  "*≥*: counting the others at their whole budget, a lower bound):", "",
                  "| method | confirmed on | confirmed: step | time to confirmed (priced) | × SAFEMax |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for spec, p in pooled(summaries).items():
            ratio = _pm(p["vs_safemax"], ".1f") + "×" if p["n"] else "never"
            if p["ratio_at_least"]:
                ratio += f" (≥ {_pm(p['ratio_at_least'], '.1f')}×)"
            lines.append(f"| {label(spec)} | {p['n']}/{p['classes']} | {_pm(p['confirmed'], '.0f')} | "
                         f"{_pm(p['priced_seconds'], '.1f')}{' s' if p['n'] else ''} | {ratio} |")
    power_lines = [f"- class {s['forget']}: light measurement {s['light']['retain_samples']} kept samples "
                   f"(standard error of the difference {100 * s['light']['difference_se']:.1f} points: "
                   f"{'resolves' if s['light']['resolves_bar'] else 'does not resolve'} 2 points); heavy "
                   + (f"{s['heavy']['retain_samples']} (standard error {100 * s['heavy']['difference_se']:.1f} "
                      f"points: {'resolves' if s['heavy']['resolves_bar'] else 'does not resolve'} it)"
                      if s["heavy"] else "none") for s in summaries]
    price_line = ", ".join(f"{label(k)} {per[k]:.3f} s/step" + (f" + {prices['prep_seconds'][k]:.1f} s preparation"
                                                                 if prices["prep_seconds"].get(k) else "")
                           for k in METHODS)
    return ("\n".join(lines) + "\n\nPower of the bar's judgement (`bar.power`):\n\n" + "\n".join(power_lines)
            + f"\n\nPrices ({prices['settings']['reps']} interleaved rounds, one process, digit "
            f"{prices['settings']['forget']}'s data): {price_line}.\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[7, 5, 9])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--price-reps", type=int, default=20)
    p.add_argument("--summarise", action="store_true", help="tables from the finished comparisons only; runs none")
    p.add_argument("--quick", action="store_true", help="compare's smoke mode (seconds; not a result)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if any(c in range(5) for c in args.classes) and not args.quick:
        p.error("the classes 0-4 are where the settings were chosen: report on 5-9")
    reports = []
    for c in args.classes:
        path = os.path.join(class_folder(args.out, c), "results.json")
        if args.summarise:
            if os.path.exists(path):
                with open(path) as f:
                    reports.append(json.load(f))
            continue
        reports.append(compare(forget=c, methods=METHODS, steps=args.steps, attack=False, confirm_per_class="auto",
                               resume=True, quick=args.quick, out=class_folder(args.out, c), model="digits"))
    if not reports:
        raise SystemExit(f"no finished comparison in {args.out}")
    prices = price(args.out, 2 if args.quick else args.price_reps, args.quick)
    summaries = [summarise(r, prices) for r in reports]
    write_json(os.path.join(args.out, "summary.json"), dict(classes=[s["forget"] for s in summaries],
                                                            summaries=summaries, pooled=pooled(summaries),
                                                            prices=prices["settings"]))
    text = markdown(summaries, prices)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
