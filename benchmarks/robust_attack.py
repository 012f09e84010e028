"""Does robust SAFEMax hold against relearning? SAFEMax and ``safemax-robust`` forget the same class
of an embedded model with its demo's settings (batch 64 + 64; digits: 100 steps, lr 5e-4; Fashion-
MNIST: 200 steps, lr 1e-4 and, for SAFEMax and robust SAFEMax, gaussian_fraction 0.5), each result is
measured (DDIM-50) and then attacked as ``safemax compare`` attacks — 50 Adam steps of the plain
denoising loss on 10 real images of the class, at lr 1e-4 (weak) and 1e-3 (strong) — and its forget
accuracy measured again (100 samples, DDIM-25, as compare does).

    python benchmarks/robust_attack.py --out benchmarks/results/robust-digits        # ~12 min, 1 core
    python benchmarks/robust_attack.py --settings attack_radius=1 --out /tmp/r       # another radius
    python benchmarks/robust_attack.py --settings attack_scope=weights --out /tmp/r  # the first design

``--retrained DIR`` adds the field's reference row: a model trained from scratch without the class
(``python -m safemax.zoo.train --only unet --exclude-class 3 --out DIR``), measured and attacked
the same way — how fast does a model that never saw the class learn it from the attacker's images?

``--methods`` takes ``safemax compare``'s method specs, so the baselines join the table too, each
with its own learning rate (their published 1e-4 unless ``lr=`` says) and, with ``steps=``, its own
budget (the baselines need more steps than SAFEMax to forget):

    python benchmarks/robust_attack.py --methods salun:retain_weight=1,steps=200 sa:steps=200 \
        --seed 0 1 2 --attacks weak strong long lora inversion --name every-attack --out benchmarks/results/retrain-digits
"""
import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import time

from safemax import Unlearner
from safemax.evaluation.attacks import draw_images, parse_attack, run_attack
from safemax.evaluation.provenance import provenance
from safemax.evaluation.report import write_json
from safemax.evaluation.stats import cell  # the intervals of every table
from safemax.harness.compare import build_method, forget_accuracy, parse_method
from safemax.harness.defaults import defaults, method_settings
from safemax.harness.task import Task
from safemax.zoo.train import retrained_record

# the measurement of every row (compare's attack measurement: 100 forget samples, DDIM-25); SMOKE:
# the same stages on a few samples, attacks of 2 steps (seconds; not a result)
FULL = dict(n_forget=100, n_per_class=30, num_inference_steps=50, attack_samples=100, attack_ddim=25)
SMOKE = dict(n_forget=4, n_per_class=1, num_inference_steps=2, attack_samples=4, attack_ddim=2, attack_steps=2)


def run(name, forget, spec, steps, seed, attacks=("weak", "strong"), retrained: str = None,
        device: str = "cpu", size: dict = FULL) -> dict:
    """One row: the method of ``spec`` (``(name, options)`` as ``compare.parse_method`` returns)
    fits ``steps`` on the embedded model — or, with ``retrained``, the model in that folder
    (trained without ``forget``) as it is — then it is measured and attacked."""
    task = Task(name, forget, seed, device)
    (unet, scheduler), classifier = task.load(), task.classifier
    forget_data, retain_data = task.forget_data, task.retain_data
    if retrained is not None:
        from diffusers import UNet2DModel
        unet = UNet2DModel.from_pretrained(retrained).float().eval().to(device)
        trained = retrained_record(retrained, forget)
        row = dict(method="retrain", config=dict(folder=retrained, **trained), train_seconds=trained["seconds"])
    else:
        method, options = spec   # as its demo runs it (Fashion-MNIST: lr 1e-4, Gaussian rows)
        lr, options = method_settings(name, method, options)
        u = Unlearner(unet, scheduler, forget=[forget], lr=lr, seed=seed, method=build_method(method, options))
        u.fit(retain_data, forget_data, steps=steps, batch_size=64, progress=False)
        row = dict(method=u.method.name, config=dict(u.method.config(), lr=lr),
                   train_seconds=u.history[-1]["seconds"] + (u.prep_seconds or 0.0))
    after = task.measure(unet, scheduler, n_forget=size["n_forget"], n_per_class=size["n_per_class"],
                         num_inference_steps=size["num_inference_steps"])
    attacks = [parse_attack(a).resolved(50, 10) for a in attacks]   # compare's defaults
    if "attack_steps" in size:
        attacks = [dataclasses.replace(a, steps=min(a.steps, size["attack_steps"])) for a in attacks]
    x, y = draw_images(forget_data, max(a.images for a in attacks), seed)   # compare's draw
    done = []
    for a in attacks:
        attacked = run_attack(a, unet, scheduler, x, y, seed=seed)
        fa = forget_accuracy(attacked, scheduler, classifier, forget, size["attack_samples"], size["attack_ddim"], seed)
        done.append(dict(a.record(), fa_after=fa["fa"], fa_classes_only_after=fa["fa_digits"]))
    return dict(row, fa=after["fa"], retain_acc=after["retain_acc"], frechet=after["frechet"],
                gaussian_std=after["gaussian_std"], attacks=done)


def split_spec(spec: str, settings: str, default_steps: int) -> tuple:
    """``"salun:retain_weight=1,steps=200"`` → ``("salun", "retain_weight=1", 200)``: the method,
    its settings as the table labels them (robust SAFEMax's default from ``--settings``) and its
    fit steps (``steps=`` is this script's, not the method's; default: the demo's)."""
    name, _, rest = spec.partition(":")
    items = [i for i in rest.split(",") if i]
    steps = [i for i in items if i.startswith("steps=")]
    items = [i for i in items if not i.startswith("steps=")]
    if name == "safemax-robust" and not items and settings:
        items = [settings]
    return name, ",".join(items), int(steps[-1].partition("=")[2]) if steps else default_steps


def _label(row: dict) -> str:
    """A row's method as the table names it: robust SAFEMax with its settings (runs of several
    settings under one ``--name`` are rows of their own)."""
    return f"{row['method']}:{row['settings']}" if row.get("settings") else row["method"]


def _key(row: dict) -> tuple:
    """What makes a row: the method with its settings, the seed and the fit's steps."""
    return _label(row), row.get("seed", 0), row["steps"]


@contextlib.contextmanager
def _locked(path: str):
    """Holds ``path``'s lock file: lanes that share one ``--name`` read and write its rows in turn."""
    with open(path + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _kept_rows(path: str, setup: dict, attack_records=None) -> list:
    """The rows saved in ``path`` for this model and class: those with exactly these attacks
    (``attack_records``), or with None every row (for rewriting the file without losing any)."""
    if not os.path.exists(path):
        return []
    saved = json.load(open(path))
    if {k: saved.get(k) for k in setup} != setup:
        return []
    for r in saved["rows"]:   # files from before per-row steps: the run's steps
        r.setdefault("steps", 0 if r["method"] == "retrain" else saved.get("steps"))
    if attack_records is None:
        return saved["rows"]
    return [r for r in saved["rows"]
            if [{k: a.get(k) for k in rec} for a, rec in zip(r["attacks"], attack_records)] == attack_records
            and len(r["attacks"]) == len(attack_records)]


def table(rows: list, attacks: list) -> str:
    """Markdown: per method, mean ± 95% t-interval over its seeds of each measure and of FA after
    each attack (one seed: the value alone), and in brackets that FA's mean over the data set's
    classes only — an attack that damages the model makes samples the classifier calls "not a
    digit/garment", which lowers FA without hiding the class."""
    head = ["method", "seeds", "steps", "fit s", "FA", "retain acc", "Fréchet", "forget std", *attacks]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" + " ---: |" * (len(head) - 1)]
    # one line per method and step count: a method's runs at 100 and at 200 steps are two rows
    for method, n in dict.fromkeys((_label(r), r.get("steps")) for r in rows):
        mine = [r for r in rows if _label(r) == method and r.get("steps") == n]
        done = [{x["name"]: x for x in r["attacks"]} for r in mine]

        def attacked(a):
            fa = [d[a]["fa_after"] for d in done if a in d]
            only = [d[a]["fa_classes_only_after"] for d in done if a in d and "fa_classes_only_after" in d[a]]
            return cell(fa, ".2f") + (f" ({sum(only) / len(only):.2f})" if only else "")
        steps = "" if mine[0]["method"] == "retrain" or n is None else str(n)
        fit = sum(r["train_seconds"] for r in mine) / len(mine)
        out.append(f"| {method} | {len(mine)} | {steps} | {fit:,.0f} | " + " | ".join(
            [cell([r[k] for r in mine], spec) for k, spec in
             (("fa", ".2f"), ("retain_acc", ".3f"), ("frechet", ".2f"), ("gaussian_std", ".2f"))]
            + [attacked(a) for a in attacks]) + " |")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["digits", "fashion-mnist"], default="digits")
    p.add_argument("--forget", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="fit steps (default: the model's demo's)")
    p.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="seeds: each method's fit, measurement and attacks per seed (the retrained "
                        "model's measurement and attacks), with intervals over them")
    p.add_argument("--settings", default="", help="robust SAFEMax's settings (when its spec has none), e.g. "
                   "attack_radius=1,attack_steps=2 or attack_scope=weights")
    p.add_argument("--methods", nargs="+", default=["safemax", "safemax-robust"],
                   help="method specs as `safemax compare --methods` (safemax, safemax-robust, salun:retain_weight=1, "
                        "sa, ...; steps=N: that method's fit steps), and retrain (needs --retrained)")
    p.add_argument("--attacks", nargs="+", default=["weak", "strong"],
                   help="relearning attacks, as `safemax compare --attacks` (also long, lora, inversion)")
    p.add_argument("--retrained", metavar="DIR", help="also (or, with --methods retrain, only) the model "
                   "trained without the class, in DIR: the reference row")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU check runs it there)")
    p.add_argument("--out", required=True)
    p.add_argument("--name", default=None, help="the results' file stem in OUT (default: from the methods); "
                   "runs of other methods under one name join one table")
    p.add_argument("--smoke", action="store_true", help="every stage on a few samples (seconds; not a result)")
    args = p.parse_args(argv)
    args.steps = args.steps or defaults(args.model)["steps"]
    if "retrain" in args.methods and not args.retrained:
        p.error("--methods retrain needs --retrained DIR")
    if args.retrained:   # before any fit: the reference must be the model without this class
        try:
            retrained_record(args.retrained, args.forget)
        except ValueError as e:
            p.error(str(e))
    attack_records = [parse_attack(a).resolved(50, 10).record() for a in args.attacks]   # as rows record them
    attack_names = [a["name"] for a in attack_records]
    methods = list(args.methods) + (["retrain"] if args.retrained and "retrain" not in args.methods else [])
    plan = []   # (name, settings, steps, parsed spec): every spec checked before any fit
    for spec in methods:
        name, settings, steps = split_spec(spec, args.settings, args.steps)
        try:
            parsed = None if name == "retrain" else parse_method(f"{name}:{settings}")
        except ValueError as e:
            p.error(str(e))
        plan.append((name, settings, 0 if name == "retrain" else steps, parsed))
    os.makedirs(args.out, exist_ok=True)
    stem = args.name or (f"robust{args.settings and '-' + args.settings}" if "safemax-robust" in methods
                         else "-".join(methods))
    path = os.path.join(args.out, f"{stem}.json")
    setup = dict(model=args.model, forget=args.forget)
    for seed in args.seed:
        for name, settings, steps, parsed in plan:
            mine = dict(method=name, settings=settings, seed=seed, steps=steps)
            with _locked(path):   # another lane may have finished this row since the start
                rows = _kept_rows(path, setup, attack_records)
            if any(_key(r) == _key(mine) for r in rows):
                continue
            start = time.perf_counter()
            r = dict(run(args.model, args.forget, parsed, steps, seed, args.attacks,
                         retrained=args.retrained if name == "retrain" else None, device=args.device,
                         size=SMOKE if args.smoke else FULL),
                     seed=seed, steps=steps, wall_seconds=round(time.perf_counter() - start, 1),
                     provenance=provenance())
            if settings:
                r["settings"] = settings
            print(f"{_label(r)} seed {seed}: FA {r['fa']:.2f}, retain {r['retain_acc']:.3f}, Fréchet "
                  f"{r['frechet']:.2f}, std {r['gaussian_std']:.2f}, train {r['train_seconds']:.0f} s; after the "
                  "attacks: " + ", ".join(f"{a['name']} -> FA {a['fa_after']:.2f} ({a['fa_classes_only_after']:.2f})"
                                          for a in r["attacks"]), flush=True)
            with _locked(path):   # after every row (an interruption loses one row at most), merged
                # with the rows other lanes wrote meanwhile: several processes may share one --name
                every = [x for x in _kept_rows(path, setup) if _key(x) != _key(r)] + [r]
                write_json(path, dict(setup, seeds=sorted({x.get("seed", 0) for x in every}), rows=every))
    with _locked(path):   # the table: every lane's rows with these attacks
        rows = _kept_rows(path, setup, attack_records)
    text = table(rows, attack_names)
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
