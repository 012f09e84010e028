"""Fair baselines: every method tuned by the same rule on one class, then head to head on others.

1. *Sweep* — on one class that is not among the reported ones, each method runs `safemax compare`
   over a small grid (learning rate; SalUn's retain weight and mask fraction, Selective Amnesia's
   λ) with no attack. Each method's best setting is picked by one rule for all: the fastest *held*
   time to the bar (FA ≤ 1% with retain accuracy within 2 points, holding to the end of the
   budget), preparation included — ranked by steps, since within one method every grid point
   costs the same per step and to prepare (see `pick`); where no setting held it, the fastest
   first time; where none ever met it, the published setting. The grid is *raced*
   (`safemax compare`'s ``race``): once a setting holds the bar from step n, a later one stops at
   its first measurement that fails the bar at or after step n — it can no longer hold it from
   earlier, so the pick is the full sweep's; its row says where it stopped.
2. *Head to head* — on each of ``--classes``, every method runs with its tuned setting and with its
   published one (`safemax compare`, relearning attack included), and the table gives each
   (method, setting) as mean ± 95% t-interval over the classes: first and held steps, held time
   as run and *priced* (its preparation + held steps × its step, every setting's step and
   preparation measured side by side in one process, `prices`: comparisons that ran hours apart
   on shared cores would otherwise compare the load) and against SAFEMax's tuned setting, final
   FA / retain accuracy / Fréchet, FA after each attack; a second table lists every run per class
   (`per_class_table`).

    python benchmarks/tune_baselines.py --model fashion-mnist --out benchmarks/results/tuned-fashion-mnist
    python benchmarks/tune_baselines.py --model digits --out benchmarks/results/tuned-digits
    python benchmarks/tune_baselines.py --model digits --grid smoke --quick --out /tmp/t   # seconds
    python benchmarks/tune_baselines.py --model fashion-mnist --status --out benchmarks/results/tuned-fashion-mnist
                                     # what is done, under way (to which step) and not begun; runs nothing

Every `safemax compare` (its results.md, curves.png, samples.png) is kept under ``OUT/sweep/<method>/``
and ``OUT/head-to-head/class<N>/``, the tables in ``OUT/tuned.md`` and ``tuned.json``
(``tuned-<methods>.*`` when ``--methods`` names only some), each finished method reused when the script runs again
and the one under way continued from its last measurement (an interruption costs at most one
measurement interval). The head-to-head of one class is a plain
`safemax compare --model M --forget N --methods <the tuned and published specs>`. A CPU run of the full plan takes many hours (each run is a 500-step `safemax compare`
with its evaluations): run it in the background over several sessions, or on a GPU
(``benchmarks/gpu_check.sh``'s opt-in part ``tune``).
"""
import argparse
import json
import os
import statistics


from safemax.evaluation.attacks import DEFAULT_ATTACKS, PRESETS
from safemax.evaluation.report import write_json
from safemax.evaluation.stats import cell  # the intervals of every table
from safemax.harness.bar import RETAIN_SLACK, meets_bar, retain_sample, summarise
from safemax.harness.compare import parse_method
from safemax.harness.compare import run as compare
from safemax.harness.defaults import defaults
from safemax.harness.store import Partial, RunLock, method_cache, partial_folder
from safemax.methods import METHODS, make_method
from safemax.zoo import model_info

# the options each method's grid varies besides its learning rate
AXES = {"safemax": ("kept_contrast",), "salun": ("retain_weight", "mask_fraction"), "sa": ("ewc_lambda",), "ga": ()}
PUBLISHED = tuple(AXES)


def published(model: str, method: str) -> str:
    """``method``'s published spec — its authors' learning rate and the defaults of the options its
    grid varies (SalUn: retain weight 1e-3, mask 0.5; Selective Amnesia: λ 10); SAFEMax's: the
    model's demo lr (5e-4 digits, 1e-4 Fashion-MNIST) — written as the grid writes it, so that a
    tuned setting that is the published one is run once, not twice under two names."""
    if method == "safemax":
        return f"safemax:lr={defaults(model)['lr']:g}"
    defaults_of = make_method(method)
    return f"{method}:lr={METHODS[method].default_lr:g}" + "".join(
        f",{k}={getattr(defaults_of, k):g}" for k in AXES[method])


GRIDS = {
    "small": {
        # the retain dip's term (kept_contrast, off by default) as a second axis; run after the
        # plain points, so that the race has their marks
        "safemax": [f"safemax:lr={lr:g}" for lr in (1e-4, 5e-4, 1e-3)]
        + [f"safemax:lr={lr:g},kept_contrast=4" for lr in (1e-4, 5e-4, 1e-3)],
        "salun": [f"salun:lr={lr:g},retain_weight={w:g},mask_fraction={m:g}"
                  for lr in (1e-4, 5e-4) for w in (1e-3, 1, 10) for m in (0.3, 0.5)],
        "sa": [f"sa:lr={lr:g},ewc_lambda={lam:g}" for lr in (1e-4, 5e-4) for lam in (1, 10, 100)],
        "ga": [f"ga:lr={lr:g}" for lr in (1e-5, 1e-4)],
    },
    "smoke": {m: [None] for m in PUBLISHED},   # one point each, the published one: tests the plumbing
}
SWEEP_CLASS = {"digits": 2, "fashion-mnist": 7}            # sneaker: not among the reported classes
CLASSES = {"digits": (1, 5, 8), "fashion-mnist": (2, 6, 9)}   # the seeded classes of classes.py


STEP_COSTS = {m: os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", folder, "step_cost.json")
              for m, folder in (("digits", "step-cost-kept-contrast-batched"),
                                ("fashion-mnist", "step-cost-fashion-mnist"))}


def step_costs(model: str, specs: list, path: str = None) -> dict:
    """``{spec: its step's cost relative to the method's plain step}`` — 1, except SAFEMax with
    ``kept_contrast``, whose step also runs the term's rows: the ratio of the median step times of
    the ``kept-contrast`` and ``safemax`` trainers that `benchmarks/step_cost.py --model ``model``` measured
    (``path``, default ``STEP_COSTS[model]``), read only when the grid has such a point."""
    costs, options = {}, {spec: parse_method(spec)[1] for spec in specs}
    contrast = [spec for spec, o in options.items() if o.get("kept_contrast")]
    if not contrast:
        return {spec: 1.0 for spec in specs}
    path = path or STEP_COSTS[model]
    cmd = (f"python benchmarks/step_cost.py --model {model} --trainers safemax kept-contrast "
           f"--out {os.path.dirname(path)}")
    if not os.path.exists(path):
        raise SystemExit(f"{path} is missing: the kept_contrast points' step cost is measured by\n    {cmd}")
    with open(path) as f:
        measured = json.load(f)
    if measured["settings"].get("model", "digits") != model:
        raise SystemExit(f"{path} measured the {measured['settings'].get('model', 'digits')} model, not {model}: {cmd}")
    seconds = measured["seconds_per_step"]
    if not {"safemax", "kept-contrast"} <= set(seconds):
        raise SystemExit(f"{path} has no safemax and kept-contrast step times: {cmd}")
    for spec in specs:
        costs[spec] = seconds["kept-contrast"] / seconds["safemax"] if spec in contrast else 1.0
    return costs


def comparison(model: str, forget: int, specs: list, out: str, args, attack: bool, race: bool = False,
               costs: dict = None, keep_finished: bool = False) -> list:
    """`safemax compare` of ``specs`` on one class (finished methods reused): their results.
    ``keep_finished``: the class's report also holds the other methods' finished runs (a lane
    running one method must not drop the others' rows)."""
    report = compare(forget=forget, methods=specs, steps=args.steps, eval_every=args.eval_every, out=out,
                     attack=attack, attacks=args.attacks, quick=args.quick, resume=True, progress=not args.quiet, model=model,
                     n_forget=args.n_forget, n_per_class=args.n_per_class, device=args.device, race=race,
                     step_costs=costs, keep_finished=keep_finished)
    return [dict(spec=spec, forget=forget, bar=report["bar"], **report["methods"][spec]) for spec in dict.fromkeys(specs)]


def pick(results: list, published: str, costs: dict = None, held_key: str = "steps_to_forget_held") -> tuple:
    """(spec, why): the best result by the one rule. Within one method every grid point does the
    same preparation, and its step costs ``costs[spec]`` (1 where missing) of the method's plain
    step, so its time to the bar is ranked by *steps × cost* (ties: the lower Fréchet) and priced
    at the grid's median preparation and plain-step time: a CPU sweep spans sessions and shared
    cores, and its raw seconds would rank the machine's load. ``held_key``: which held step ranks
    (``steps_to_forget_held_within_one``: does the pick survive one retain sample's flip?)."""
    cost = lambda r: (costs or {}).get(r["spec"], 1.0)   # noqa: E731
    prep = statistics.median(r["prep_seconds"] for r in results)
    steps = [r["step_seconds"] / cost(r) for r in results if r["step_seconds"]]
    step = statistics.median(steps) if steps else 0.0

    def why(r, n):
        at = f" at {cost(r):.2f}× the step" if cost(r) != 1.0 else ""
        return f"{n} steps{at}: {prep + n * cost(r) * step:.0f} s at the grid's median times"

    held = [r for r in results if r[held_key] is not None]
    if held:
        best = min(held, key=lambda r: (r[held_key] * cost(r), r["frechet_final"]))
        return best["spec"], f"the least time to the held bar ({why(best, best[held_key])})"
    first = [r for r in results if r["steps_to_forget"] is not None]
    if first:
        best = min(first, key=lambda r: (r["steps_to_forget"] * cost(r), r["frechet_final"]))
        return best["spec"], f"none held the bar; the least time to it ({why(best, best['steps_to_forget'])})"
    return published, "no setting met the bar: the published one"


def sweep_table(model: str, sweep: dict, chosen: dict, costs: dict, loose: dict = None) -> list:
    """The sweep's rows; ``loose``: each method's pick by *held ±1* (``pick``'s ``held_key``),
    named under the table where it differs from the pick."""
    info = model_info(model)
    out = [f"## Sweep (class {info.class_name(SWEEP_CLASS[model])})\n",
           "*held ±1*: the held step where a later measurement may miss the retain floor by one retain "
           "sample (`compare.retain_sample`).\n",
           "| method | setting | step cost | held: steps | s | held ±1: steps | first: steps | final FA | "
           "retain acc | Fréchet | picked |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for m, results in sweep.items():
        for r in results:
            mark = "**yes**: " + chosen[m][1] if r["spec"] == chosen[m][0] else ""
            held, out_at = r["steps_to_forget_held"], r.get("raced_out_at")
            held_text = f"— (stopped at {out_at}: out of the race)" if out_at is not None else "—" if held is None else held
            out.append(f"| {m} | `{r['spec']}` | {costs[m][r['spec']]:.2f}× | {held_text} | "
                       f"{'—' if held is None else format(r['seconds_to_forget_held'], '.1f')} | "
                       f"{_or_dash(r.get('steps_to_forget_held_within_one'))} | "
                       f"{'—' if r['steps_to_forget'] is None else r['steps_to_forget']} | {r['fa_final']:.2f} | "
                       f"{r['retain_acc_final']:.3f} | {r['frechet_final']:.2f} | {mark} |")
    differ = [f"{m}: `{loose[m][0]}`" for m in sweep if loose and loose[m][0] != chosen[m][0]]
    out.append("\nBy *held ±1* the picks are the same." if loose and not differ else
               f"\nBy *held ±1* the pick would differ — {'; '.join(differ)}." if differ else "")
    return out


def _or_dash(v) -> str:
    return "—" if v is None else str(v)


def prices(args, specs: list) -> dict:
    """What each of ``specs`` costs, measured side by side (``step_cost.kept_prices``, ``--price-reps``
    rounds): so that the head to head's times compare the methods, not the load of the hour each
    ran in (its comparisons span sessions and shared cores). Kept in
    ``OUT/head-to-head/prices.json``; None with ``--price-reps 0``."""
    if not args.price_reps:
        return None
    import step_cost
    # --quick: Selective Amnesia's preparation shrunk as compare shrinks it
    return step_cost.kept_prices(os.path.join(args.out, "head-to-head", "prices.json"), specs, args.price_reps,
                                 model=args.model, quick=args.quick)


def priced(r: dict, price: dict, steps):
    """A result's time to ``steps`` at the measured prices: preparation + steps × its step."""
    return None if steps is None else price["prep_seconds"][r["spec"]] + steps * price["seconds_per_step"][r["spec"]]


def met_at_stop(r: dict) -> bool:
    """Whether the first measurement at or after the stopping rule's step (the last one if the
    rule fired after it) meets the bar."""
    at = next((p for p in r["curve"] if p["step"] >= r["stop_rule"]["step"]), r["curve"][-1])
    return meets_bar(at, r["bar"]["retain_acc_min"])


def stop_cells(rs: list, price: dict = None) -> list:
    """The label-free stopping rule on SAFEMax's runs (``compare.stop_rule_replay``): the step it
    stopped at, how many runs it stopped and in how many the first measurement from there meets the
    bar — what a user without a classifier pays; with ``price`` also that step's priced time. "—"
    for a method that logs no nats (the baselines: a user must guess their budget)."""
    if not any(r.get("stop_rule") for r in rs):
        return ["—"] * (2 if price else 1)
    fired = [r for r in rs if r["stop_rule"]["step"] is not None]
    good = sum(met_at_stop(r) for r in fired)
    cells = [f"{cell([r['stop_rule']['step'] for r in fired], '.0f')} ({len(fired)}/{len(rs)} stopped; bar met there: {good})"]
    if price:
        cells.append(cell([priced(r, price, r["stop_rule"]["step"]) for r in fired], ".1f"))
    return cells


def steps_cell(rs: list, key: str) -> str:
    """Mean ± interval of ``key`` over the runs that reached it (how many, in brackets); where some
    did not, also "≥": the mean with those counted at their whole budget — a lower bound, since
    they had not got there by then (leaving them out would flatter the method)."""
    got = [r[key] for r in rs if r.get(key) is not None]
    if not got:   # a mean at the budget would read as a measurement: say it never got there
        budgets = sorted({r["steps"] for r in rs})
        return f"never within {'/'.join(map(str, budgets))} (0/{len(rs)})"
    text = f"{cell(got, '.0f')} ({len(got)}/{len(rs)})"
    if len(got) < len(rs):
        text += f"; ≥ {statistics.mean(r[key] if r.get(key) is not None else r['steps'] for r in rs):.0f} counting the rest at the budget"
    return text


def head_to_head_table(rows: dict, attack_names, price: dict = None) -> list:
    """Mean ± 95% t-interval over the classes of every (method, setting)'s numbers; with ``price``
    (``prices``) also its held time priced at the measured step and preparation, and that time
    against SAFEMax's tuned setting's on the same class."""
    ref = rows.get(("safemax", "tuned"))
    cols = ["first: steps", "held: steps", "held ±1: steps", "held s (as run)"] + (
        ["held s (priced)", "× SAFEMax tuned (priced)", "prep s (priced)", "stopping rule: steps",
         "stopping rule s (priced)"] if price else ["prep s", "stopping rule: steps"])
    out = ["## Head to head\n",
           "Mean ± 95% t-interval over the classes. *held*: over the classes where the bar held "
           "(how many, in brackets; where not every class held, ≥ is the mean with the others counted at "
           "their whole budget, a lower bound; *never within N*: no class got there in N steps); *held ±1*: the same where a later measurement may miss the retain "
           "floor by one retain sample. *as run*: the wall time the comparison measured (cores shared "
           "with other jobs, sessions apart); *priced*: preparation + steps × the step, both measured "
           "side by side in one process (`prices.json`). *Stopping rule*: where SAFEMax's label-free "
           "rule (`nats:0.01:5`) would have stopped, and in how many runs the measurement there meets "
           "the bar — what a user without a classifier pays; the baselines have no such rule."
           + (f" Prices: {price['settings']['reps']} interleaved rounds at {price['settings']['threads']} "
              f"thread(s), forgetting class {price['settings']['forget']}." if price else "") + "\n",
           "| method | setting | " + " | ".join(cols) + " | final FA | retain acc | Fréchet | "
           + " | ".join(f"FA after the {a} attack" for a in attack_names) + " |",
           "| --- | --- | " + " | ".join("---:" for _ in cols) + " | ---: | ---: | ---: | "
           + " | ".join("---:" for _ in attack_names) + " |"]
    for (m, which), rs in rows.items():
        same = [r["spec"] for r in rows.get((m, "tuned"), [])] == [r["spec"] for r in rows.get((m, "published"), [])]
        if same and which == "published":
            continue   # the tuned row is this one: the same runs
        which = "tuned = published" if same else which
        held = [r["seconds_to_forget_held"] for r in rs if r["seconds_to_forget_held"] is not None]
        cells = [steps_cell(rs, key) for key in ("steps_to_forget", "steps_to_forget_held",
                                                 "steps_to_forget_held_within_one")] + [cell(held, '.1f')]
        if price:
            times = [priced(r, price, r["steps_to_forget_held"]) for r in rs]
            ratios = [t / priced(q, price, q["steps_to_forget_held"]) for t, q in zip(times, ref or [])
                      if t is not None and q["steps_to_forget_held"] is not None]
            cells += [cell([t for t in times if t is not None], '.1f'), f"{cell(ratios, '.2f')} ({len(ratios)}/{len(rs)})",
                      format(price["prep_seconds"][rs[0]["spec"]], '.1f')]
        else:
            cells.append(cell([r["prep_seconds"] for r in rs], '.1f'))
        cells += stop_cells(rs, price)
        attacks = [cell([a["fa_after"] for r in rs for a in r.get("attack") or [] if a["name"] == name], ".2f")
                   for name in attack_names]
        out.append(f"| {m} | {which}: `{rs[0]['spec']}` | " + " | ".join(cells) + " | "
                   f"{cell([r['fa_final'] for r in rs], '.2f')} | {cell([r['retain_acc_final'] for r in rs], '.3f')} | "
                   f"{cell([r['frechet_final'] for r in rs], '.2f')} | " + " | ".join(attacks) + " |")
    return out


def per_class_table(model: str, rows: dict, attack_names) -> list:
    """Every head-to-head run, one row per (class, method, setting): the numbers the means above
    are made of, with the retain floor and the lowest retain accuracy measured after step 0 (the
    dip a held step hides)."""
    info = model_info(model)
    out = ["## Per class\n",
           "Steps: *first*, *held*, *held ±1* as above; *stopping rule*: the step where SAFEMax's "
           "label-free rule stopped, and whether the first measurement from there meets the bar; "
           "*lowest retain*: the lowest retain accuracy measured after step 0; the attacks' columns: "
           "FA after each, and in brackets where it differs, FA over the model's classes only (a "
           "damaged sample the classifier calls none of them may still look most like the class).\n",
           "| class | method | setting | first | held | held ±1 | stopping rule | lowest retain | "
           "final FA | retain acc | Fréchet | " + " | ".join(attack_names) + " |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
           + " | ".join("---:" for _ in attack_names) + " |"]
    runs = {}   # (class, spec) -> [method, which, result]: a tuned setting that is the published one is one run
    for (m, which), rs in rows.items():
        for r in rs:
            if (r["forget"], r["spec"]) in runs:
                runs[r["forget"], r["spec"]][1] = "tuned = published"
            else:
                runs[r["forget"], r["spec"]] = [m, which, r]
    order = list(dict.fromkeys(m for m, _ in rows))   # the methods in the plan's order
    for m, which, r in sorted(runs.values(), key=lambda x: (x[2]["forget"], order.index(x[0]), x[1] == "published")):
        floor = r["bar"]["retain_acc_min"]
        rule = r.get("stop_rule")
        if not rule:
            stop = "—"
        elif rule["step"] is None:
            stop = "did not stop"
        else:
            stop = f"{rule['step']} ({'met' if met_at_stop(r) else 'not met'})"
        lowest = min((p["retain_acc"] for p in r["curve"] if p["step"] > 0), default=None)
        attacks = {a["name"]: f"{a['fa_after']:.2f}" + (f" ({a['fa_digits_after']:.2f})" if abs(
            a.get("fa_digits_after", a["fa_after"]) - a["fa_after"]) >= 0.005 else "") for a in r.get("attack") or []}
        out.append(f"| {info.class_name(r['forget'])}, floor {floor:.3f} | {m} | {which}: `{r['spec']}` | "
                   + " | ".join(_or_dash(r.get(k)) for k in ("steps_to_forget", "steps_to_forget_held",
                                                              "steps_to_forget_held_within_one"))
                   + f" | {stop} | {'—' if lowest is None else format(lowest, '.3f')} | {r['fa_final']:.2f} | "
                   f"{r['retain_acc_final']:.3f} | {r['frechet_final']:.2f} | "
                   + " | ".join(attacks.get(a, "—") for a in attack_names) + " |")
    return out


def report_name(methods, classes=None, planned=None) -> str:
    """The report's file name: ``tuned`` for every method on the planned head-to-head classes;
    ``tuned-<methods>`` for some methods, ``-class<c>-<c>`` added for other classes — lanes that
    split the plan by method or by class write their own reports instead of overwriting each other's."""
    name = "tuned" if set(methods) == set(PUBLISHED) else "tuned-" + "-".join(m for m in PUBLISHED if m in methods)
    if classes is not None and planned is not None and list(classes) != list(planned):
        name += "-class" + "-".join(map(str, classes))
    return name


def status(args, sweep_class: int, classes: list) -> str:
    """The plan's state from what is on disk, running nothing: per comparison, each setting done
    (its first / held steps — the bar from the run's own step 0, the original's measurement, so
    known before its comparison has finished — and where the race stopped it), under way (its
    last measured step; "running now" where a process holds its lock) or not begun; a sweep's pick once its grid is done. It reads the files,
    not their settings: a run made with other settings (steps, attacks) shows as done, though the
    comparison would run it again. Its last line counts the runs left."""
    out, left = [], {"sweep": 0, "head to head": 0}

    def runs(folder, specs, part="sweep"):
        done = []
        for spec in specs:
            cache = method_cache(folder, spec)
            under_way = os.path.join(partial_folder(cache), Partial.CURVE)
            if os.path.exists(cache):
                with open(cache) as f:
                    saved = json.load(f)
                r, config = saved["result"], saved["config"]
                floor = r["curve"][0]["retain_acc"] - RETAIN_SLACK   # step 0: the original model
                done.append(dict(spec=spec, **(r | summarise(r, floor, leeway=retain_sample(config)))))
                at = lambda k: "—" if done[-1][k] is None else done[-1][k]   # noqa: E731
                text = (f"first {at('steps_to_forget')}, held {at('steps_to_forget_held')} "
                        f"(±1 sample: {at('steps_to_forget_held_within_one')})") + (
                    f", stopped by the race at {r['raced_out_at']}" if r.get("raced_out_at") is not None else "")
                out.append(f"    {spec}: {text}; final FA {r['fa_final']:.2f}, retain {r['retain_acc_final']:.3f}")
            elif os.path.exists(under_way):
                with open(under_way) as f:
                    curve = json.load(f)["curve"]
                now = " (running now)" if RunLock.held(cache) else ""
                out.append(f"    {spec}: under way, measured to step {curve[-1]['step']}{now}")
            elif RunLock.held(cache):
                out.append(f"    {spec}: under way, running now (before its first measurement)")
            else:
                out.append(f"    {spec}: not begun")
            left[part] += not os.path.exists(cache)
        return done

    info, chosen = model_info(args.model), {}
    out.append(f"sweep (class {info.class_name(sweep_class)}):")
    for m in args.methods:
        grid = [spec or published(args.model, m) for spec in GRIDS[args.grid][m]]
        out.append(f"  {m}:")
        head = len(out) - 1
        done = runs(os.path.join(args.out, "sweep", m), grid)
        out[head] += f" {len(done)} of {len(grid)} done"
        if len(done) == len(grid):
            chosen[m] = pick(done, published(args.model, m), step_costs(args.model, grid, args.step_costs))
            out[head] += f"; tuned: {chosen[m][0]} — {chosen[m][1]}"
    for c in classes:
        folder = os.path.join(args.out, "head-to-head", f"class{c}")
        specs = [spec for m in args.methods for spec in (chosen.get(m, (None,))[0], published(args.model, m)) if spec]
        out.append(f"head to head, class {info.class_name(c)} (the tuned settings of the methods whose "
                   "sweep is done, and every published one):")
        runs(folder, list(dict.fromkeys(specs)), "head to head")
    # a method whose sweep is not done has a tuned setting to come on each class (none if it is the published one)
    unknown = len(classes) * sum(m not in chosen for m in args.methods)
    out.append(f"left: {left['sweep']} sweep runs and {left['head to head']}"
               + (f" to {left['head to head'] + unknown}" if unknown else "")
               + " head-to-head runs (counting any run in progress)")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["digits", "fashion-mnist"], default="fashion-mnist")
    p.add_argument("--methods", nargs="+", default=list(PUBLISHED), choices=list(PUBLISHED))
    p.add_argument("--grid", choices=list(GRIDS), default="small")
    p.add_argument("--sweep-class", type=int, default=None, help="default: sneaker (F-MNIST) / 2 (digits)")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="head-to-head classes")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--n-forget", type=int, default=100)
    p.add_argument("--n-per-class", type=int, default=20)
    p.add_argument("--only", choices=["sweep", "all"], default="all")
    p.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS),
                   help="the head to head's relearning attacks, as `safemax compare --attacks` "
                        f"(default: {' '.join(DEFAULT_ATTACKS)}; also {', '.join(n for n in PRESETS if n not in DEFAULT_ATTACKS)})")
    p.add_argument("--step-costs", metavar="FILE",
                   help="step_cost.py's step_cost.json for the kept_contrast points' step cost "
                        "(default: benchmarks/results/step-cost-<model>'s; see step_costs)")
    p.add_argument("--price-reps", type=int, default=None,
                   help="interleaved rounds that price the head to head's settings (see prices; default "
                        "20 on the CPU, 0 — no pricing — on a GPU; 0: none)")
    p.add_argument("--status", action="store_true", help="print the plan's state from the files on disk, run nothing")
    p.add_argument("--quick", action="store_true", help="compare's smoke mode (seconds; not a result)")
    p.add_argument("--quiet", action="store_true", help="no progress bar per run (a run is ~45 min on one CPU core)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU check runs it there)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.price_reps is None:
        args.price_reps = (1 if args.quick else 20) if args.device == "cpu" else 0
    sweep_class = SWEEP_CLASS[args.model] if args.sweep_class is None else args.sweep_class
    classes = list(CLASSES[args.model] if args.classes is None else args.classes)
    if sweep_class in classes:
        raise SystemExit(f"the sweep class {sweep_class} must not be one of the reported classes {classes}")
    if args.status:
        print(status(args, sweep_class, classes))
        return

    sweep, chosen, costs, loose = {}, {}, {}, {}
    for m in args.methods:   # one comparison per method: its grid on the sweep class
        grid = [spec or published(args.model, m) for spec in GRIDS[args.grid][m]]
        costs[m] = step_costs(args.model, grid, args.step_costs)
        sweep[m] = comparison(args.model, sweep_class, grid, os.path.join(args.out, "sweep", m), args, attack=False,
                              race=True, costs=costs[m])
        chosen[m] = pick(sweep[m], published(args.model, m), costs[m])
        loose[m] = pick(sweep[m], published(args.model, m), costs[m], held_key="steps_to_forget_held_within_one")
        print(f"{m}: tuned {chosen[m][0]} — {chosen[m][1]}", flush=True)
    lines = [f"# Tuned baselines: {args.model}{' (--quick: a smoke run, not a result)' if args.quick else ''}\n",
             f"{args.steps}-step budget at batch 64 + 64, measured every {args.eval_every} steps "
             f"({args.n_forget} forget samples, {args.n_per_class} per kept class, DDIM-25); the bar: FA ≤ 1% "
             f"with retain accuracy ≥ the original's − {RETAIN_SLACK}.\n"] + sweep_table(args.model, sweep, chosen, costs, loose)
    rows, attack_names, price = {}, [], None
    if args.only == "all":   # one comparison per class: every method, tuned and published
        plan = [(m, which, spec) for m in args.methods
                for which, spec in (("tuned", chosen[m][0]), ("published", published(args.model, m)))]
        price = prices(args, list(dict.fromkeys(spec for _, _, spec in plan)))
        for c in classes:
            results = {r["spec"]: r for r in comparison(args.model, c, [spec for _, _, spec in plan],
                                                        os.path.join(args.out, "head-to-head", f"class{c}"), args,
                                                        attack=True, keep_finished=True)}
            for m, which, spec in plan:
                rows.setdefault((m, which), []).append(results[spec])
                attack_names = [a["name"] for a in results[spec].get("attack") or []] or attack_names
        lines += [""] + head_to_head_table(rows, attack_names, price) + [""] + per_class_table(args.model, rows, attack_names)
    os.makedirs(args.out, exist_ok=True)
    name = report_name(args.methods, classes, CLASSES[args.model])
    write_json(os.path.join(args.out, f"{name}.json"),
               dict(model=args.model, sweep_class=sweep_class, classes=classes,
                    chosen={m: dict(spec=spec, why=why) for m, (spec, why) in chosen.items()}, step_costs=costs,
                    sweep=sweep, head_to_head={f"{m}/{w}": rs for (m, w), rs in rows.items()}, prices=price),
               indent=1)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
