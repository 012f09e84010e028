"""``safemax check``: re-run a recorded result at a reduced size, from the settings it records, and
say whether its figures still agree.

A reduced re-run measures fewer samples, so its figures are noisier than the recorded ones; how
far apart the two may be follows from both sample sizes, not from a constant. Every figure checked
is a share of samples (forget accuracy: of the forgotten class's samples; retain accuracy: of the
kept classes'), so each side has a Wilson interval (``evaluation.stats.wilson``) at the chosen
confidence: the recorded figure on the recorded samples, the re-measured one on the re-run's. The
two agree when the intervals overlap. The table gives, as the figure's tolerance, the range of
recorded values that would agree with the re-measurement — wider the fewer samples the re-run
drew. (The re-run draws its samples from the same seeds, so they are the first of the recorded
ones where the model is unchanged: the test is then conservative.) Continuous figures (Fréchet
distance, pixel statistics) have no such interval and are not checked.

Kinds it re-runs (``KINDS``): the demo's ``report.json`` (``safemax demo``) — the fit as recorded
(every step), measured on fewer samples; and ``safemax compare``'s ``results.json`` — each
method's fit up to its held step (or the size's step cap, at a measured step), measured there on
fewer samples and compared with the recorded curve at that step, and the original model's figures.
"""
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import tempfile
import time

KINDS = {"demo": "the demo's report.json (safemax demo)",
         "compare": "safemax compare's results.json"}
# the re-run's samples (at most the recorded ones) and, for a comparison, its step cap
SIZES = {"quick": dict(n_forget=20, n_per_class=5, step_cap=50),
         "small": dict(n_forget=50, n_per_class=15, step_cap=100)}
SHARES = (("fa", "forget accuracy", "forget"), ("fa_digits", "forget accuracy, 10 classes", "forget"),
          ("retain_acc", "retain accuracy", "retain"))


def add_parser(sub):
    p = sub.add_parser(
        "check", help="re-run a recorded result at a reduced size: do its figures still agree?",
        description="Read a results file, re-run it at a reduced size from the settings it records, and print "
                    "for each figure the recorded value, the re-measured one, the tolerance and whether they "
                    "agree. Known kinds: " + "; ".join(KINDS.values()) + ". The demo's fit runs all its "
                    "recorded steps (the result is the model after them) and is measured on fewer samples; "
                    "a comparison's methods run to their held step, or to the size's step cap, and are "
                    "compared with their recorded curve there. The tolerance follows from the sample sizes: "
                    "each figure is a share of samples, so the recorded one (on the recorded samples) and "
                    "the re-measured one (on the re-run's, fewer: noisier) each have a Wilson interval at "
                    "--confidence; they agree when the intervals overlap. The table's tolerance is the "
                    "range of recorded values that would agree with the re-measurement. Exit status 0: "
                    "every figure agrees; 1: one does not; 2: the file is not a result it can re-run.")
    p.add_argument("results_file", metavar="RESULTS_FILE", help="a recorded result: " + "; ".join(KINDS.values()))
    p.add_argument("--size", choices=list(SIZES), default="quick",
                   help="quick (default): at most 20 forget samples and 5 per kept class, a comparison's steps "
                        "capped at 50; small: 50 and 15, steps capped at 100 (minutes on 2 CPU cores for the "
                        "digits)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="confidence of the two Wilson intervals that must overlap (default 0.95; higher "
                        "tolerates more)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="a comparison's methods to re-run, as its results name them (default: all)")


def command(args):
    if not 0 < args.confidence < 1:
        raise ValueError(f"--confidence must be between 0 and 1, got {args.confidence}")
    recorded, kind = read(args.results_file)
    size = SIZES[args.size]
    print(f"safemax check: {args.results_file} — {KINDS[kind]}")
    print(_provenance_line(recorded))
    start = time.time()
    rerun = _demo if kind == "demo" else _compare
    with tempfile.TemporaryDirectory(prefix="safemax-check-") as out:
        figures = rerun(args, recorded, size, out)
    z = statistics.NormalDist().inv_cdf((1 + args.confidence) / 2)
    rows = [(name, rec, n_rec, new, n_new, *agreement(rec, n_rec, new, n_new, z)) for name, rec, n_rec, new, n_new in figures]
    print(table(rows, args.confidence))
    bad = [r[0] for r in rows if not r[5]]
    print(f"re-run at size {args.size} in {time.time() - start:.0f} s: "
          + (f"{len(rows)} of {len(rows)} figures agree" if not bad else
             f"{len(bad)} of {len(rows)} figures do not agree: {', '.join(bad)}"))
    return 1 if bad else 0


def read(path: str) -> tuple:
    """``(the recorded result, its kind)``; a file that is none of ``KINDS`` is refused in one line."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path) as f:
            data = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder: name the results file in it") from None
    kind = None
    if isinstance(data, dict) and {"settings", "original", "methods"} <= set(data):
        kind = "compare"
    elif isinstance(data, dict) and {"forget", "steps", "batch_size", "lr", "before", "after"} <= set(data):
        kind = "demo"
    if kind is None:
        raise ValueError(f"{path}: not a result safemax check can re-run (it knows {'; '.join(KINDS.values())})")
    return data, kind


def agreement(rec: float, n_rec: int, new: float, n_new: int, z: float) -> tuple:
    """``(agree, low, high)``: whether the recorded share ``rec`` of ``n_rec`` samples and the
    re-measured ``new`` of ``n_new`` have overlapping Wilson intervals, and the range of recorded
    values that would (the intervals' ends rise with the share: two bisections)."""
    from safemax.evaluation.stats import wilson
    low_new, high_new = wilson(new * n_new, n_new, z)

    def fits(p):
        low, high = wilson(p * n_rec, n_rec, z)
        return high >= low_new, low <= high_new

    def edge(side: int, want: bool) -> float:   # the boundary where fits(p)[side] turns
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if fits(mid)[side] == want:
                hi = mid
            else:
                lo = mid
        return hi
    low = 0.0 if fits(0.0)[0] else edge(0, True)
    high = 1.0 if fits(1.0)[1] else edge(1, False)
    return all(fits(rec)), low, high


def table(rows, confidence: float) -> str:
    head = ("figure", "recorded (n)", "re-measured (n)", f"agrees if recorded in ({confidence:.0%} Wilson)", "agree")
    cells = [(name, f"{rec:.3f} ({n_rec})", f"{new:.3f} ({n_new})", f"[{low:.3f}, {high:.3f}]", "yes" if ok else "NO")
             for name, rec, n_rec, new, n_new, ok, low, high in rows]
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [head, *cells])


def _provenance_line(recorded: dict) -> str:
    p = recorded.get("provenance")
    if not isinstance(p, dict):
        return "recorded: no provenance in the file"
    if p.get("commit"):
        return f"recorded at commit {p['commit'][:12]}" + (" (dirty tree)" if p.get("dirty") else "")
    if p.get("last_changed_in"):
        return (f"recorded before results kept their provenance: committed in {p['last_changed_in'][:12]}, "
                f"measured at or before {(p.get('measured_at_or_before') or '?')[:12]}")
    return "recorded: provenance without a commit"


def _quietly(fn, **kwargs):
    """``fn(**kwargs)`` with its console output held back (the check prints its own table; the
    progress bars, on stderr, still show how far a re-run of minutes is)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(**kwargs)


def _figures(name: str, recorded: dict, new: dict, sizes: tuple, kept: int) -> list:
    """The shares (``SHARES``) of one recorded measurement and its re-run as check rows
    ``(figure, recorded, its n, re-measured, its n)``; ``sizes``: ``(n_forget, n_per_class)``
    recorded, then re-run."""
    n_forget, n_per_class, n_f, n_pc = sizes
    return [(f"{name}: {label}", recorded[key], n_forget if side == "forget" else n_per_class * kept,
             new[key], n_f if side == "forget" else n_pc * kept)
            for key, label, side in SHARES if key in recorded]


def _kept(model: str) -> int:
    """How many classes a measurement keeps (all but the forgotten one)."""
    from safemax.zoo import model_info
    return len(model_info(model).class_names) - 1


# --- the demo ------------------------------------------------------------------------------------

def _demo_sizes(path: str, r: dict) -> tuple:
    """``(n_forget, n_per_class, DDIM steps, where from)`` of a demo's measurement: report.json
    records them (since the harness's Task); an older one's report.md says them; else the
    demo's defaults."""
    if all(k in r for k in ("n_forget", "n_per_class", "num_inference_steps")):
        return r["n_forget"], r["n_per_class"], r["num_inference_steps"], "report.json"
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), "report.md")) as f:
            m = re.search(r"Samples: (?:DDIM|Euler) (\d+) steps, (\d+) of .+?, (\d+) of each other", f.read(), re.S)
        if m:
            return int(m.group(2)), int(m.group(3)), int(m.group(1)), "report.md"
    except OSError:
        pass
    import inspect

    from safemax.harness.demo import run
    d = inspect.signature(run).parameters
    return d["n_forget"].default, d["n_per_class"].default, d["num_inference_steps"].default, "the demo's defaults (not recorded)"


def _demo(args, r: dict, size: dict, out: str) -> list:
    from safemax.harness.demo import run
    model = r.get("model", "digits")   # (reports from before the Fashion-MNIST model: the digits)
    n_forget, n_per_class, ddim, said = _demo_sizes(args.results_file, r)
    n_f, n_pc = min(n_forget, size["n_forget"]), min(n_per_class, size["n_per_class"])
    # a report without gaussian_fraction predates the option: real forget rows, i.e. 0
    settings = dict(forget=r["forget"], steps=r["steps"], batch_size=r["batch_size"], early_fraction=r["early_fraction"],
                    lr=r["lr"], seed=r.get("seed", 0), dataset=model, gaussian_fraction=r.get("gaussian_fraction", 0.0),
                    flow_halt=r.get("flow_halt", "ode"))
    print(f"the demo on {model}: forget {r['forget']}, {r['steps']} steps at batch {r['batch_size']}+{r['batch_size']}, "
          f"lr {r['lr']:g}, early fraction {r['early_fraction']:g}, Gaussian fraction {settings['gaussian_fraction']:g}, "
          f"seed {settings['seed']}")
    print(f"re-running all {r['steps']} steps; measuring {n_f} forget samples and {n_pc} per kept class with "
          f"DDIM-{ddim} (recorded: {n_forget} and {n_per_class}, from {said})", flush=True)
    new = _quietly(run, **settings, out=out, eval_every=0, n_forget=n_f, n_per_class=n_pc, num_inference_steps=ddim,
                   progress=True)   # (the fit's progress bar, on stderr)
    sizes, kept = (n_forget, n_per_class, n_f, n_pc), _kept(model)
    return [row for when in ("before", "after") for row in _figures(when, r[when], new[when], sizes, kept)]


# --- a comparison --------------------------------------------------------------------------------

def _spec(spec: str, result: dict) -> str:
    """The method as it ran: the recorded spec's options (its lr aside: given on its own) and every
    setting its recorded ``method_config`` names — so a default changed since does not change it."""
    from safemax.methods import METHODS
    name, _, rest = spec.partition(":")
    if name not in METHODS:
        raise ValueError(f"method {name!r} of the results file is not a method of this safemax ({list(METHODS)})")
    options = dict(item.split("=", 1) for item in filter(None, rest.split(",")))
    options.pop("lr", None)
    fields = set(METHODS[name].settings_class.names())
    options.update({k: str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in (result.get("method_config") or {}).items() if k in fields})
    return name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")


def _target(result: dict, cap: int) -> int:
    """The step a method is checked at: its held step if within ``cap``, else the last step its
    curve measured within ``cap`` (the first it measured, if none is)."""
    steps = sorted(p["step"] for p in result["curve"] if p["step"] > 0)
    if not steps:
        raise ValueError("a method of the results file has no measured step past 0")
    held = result.get("steps_to_forget_held", result.get("steps_to_forget"))
    if held is not None and held <= cap and held in steps:
        return held
    within = [s for s in steps if s <= cap]
    return within[-1] if within else steps[0]


def _compare(args, r: dict, size: dict, out: str) -> list:
    from safemax.harness.compare import run
    s, methods = r["settings"], r["methods"]
    model = s.get("model", "digits")
    chosen = args.methods or list(methods)
    unknown = [m for m in chosen if m not in methods]
    if unknown:
        raise ValueError(f"--methods {' '.join(unknown)}: the results file has {' '.join(methods)}")
    n_forget, n_per_class = s["n_forget"], s["n_per_class"]
    n_f, n_pc = min(n_forget, size["n_forget"]), min(n_per_class, size["n_per_class"])
    sizes, kept = (n_forget, n_per_class, n_f, n_pc), _kept(model)
    print(f"the comparison on {model}: forget {s['forget']}, batch {s['batch_size']}+{s['batch_size']}, seed {s['seed']}; "
          f"measuring {n_f} forget samples and {n_pc} per kept class with DDIM-{s['num_inference_steps']} "
          f"(recorded: {n_forget} and {n_per_class})")
    figures = []
    for i, spec in enumerate(chosen):
        result = methods[spec]
        at = _target(result, size["step_cap"])
        point = next(p for p in result["curve"] if p["step"] == at)
        again = _spec(spec, result)
        held = "its held step" if at == result.get("steps_to_forget_held", result.get("steps_to_forget")) else \
            f"of {result['steps']} (capped at {size['step_cap']})"
        print(f"re-running {spec} to step {at} ({held}; lr {result['lr']:g}{'; as ' + again if again != spec else ''})",
              flush=True)
        report = _quietly(run, forget=s["forget"], methods=[again], steps=at, eval_every=10 ** 9, batch_size=s["batch_size"],
                          lr=result["lr"], out=os.path.join(out, f"run{i}"), seed=s["seed"], attack=False,
                          n_forget=n_f, n_per_class=n_pc, num_inference_steps=s["num_inference_steps"], progress=True,
                          model=model, device="cpu")
        if not figures:   # the original model: measured by every re-run alike
            figures += _figures("original", r["original"], report["original"], sizes, kept)
        new = next(p for p in report["methods"][again]["curve"] if p["step"] == at)
        figures += _figures(f"{spec} at step {at}", point, new, sizes, kept)
        shutil.rmtree(os.path.join(out, f"run{i}"), ignore_errors=True)   # (a saved model each: tens of MB)
    return figures
