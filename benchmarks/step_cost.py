"""What a SAFEMax step costs next to a plain diffusers fine-tuning step on the same rows.

    python benchmarks/step_cost.py                                   # ~1.5 min on 2 cores (40 rounds)
    python benchmarks/step_cost.py --out benchmarks/results/step-cost   # also writes step_cost.json
    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --model fashion-mnist --trainers safemax kept-contrast \
        --reps 30 --out benchmarks/results/step-cost-fashion-mnist   # the sweep's kept_contrast step cost
    SAFEMAX_BENCH_QUICK=1 python benchmarks/step_cost.py             # smoke run: tiny, seconds

On the embedded digits model, forgetting digit 3, ``--batch-size`` forget rows plus as many
retain rows per step (64 + 64 by default), lr 5e-4, the trainers side by side in one process
(``--model fashion-mnist``: the sneaker, at that model's demo settings — lr 1e-4, half the forget
rows' x_0 Gaussian — as the tuned-baselines sweep runs SAFEMax; its ``kept-contrast`` /
``safemax`` ratio is the step cost ``tune_baselines.py`` weighs ``kept_contrast`` points by):

- ``plain``: what a diffusers training script does with the same 2·B rows — x_t from the data by
  ``scheduler.add_noise``, t ~ U[0, T), one forward, the MSE to ε, backward, an Adam step, the
  loss logged with ``.item()``; clipping only where the Unlearner clips (SAFEMax does not).
- ``safemax``: ``Unlearner(unet, scheduler, forget=[3], lr=5e-4, seed=0).fit(...)``, default
  settings (the retain rows distilled to a frozen copy of the original model: one more forward,
  no_grad, on the B retain rows).
- ``safemax-noise``: the same with ``retain_target="noise"`` (no teacher).
- ``rows``: ``train="class-embedding"`` — digit 3's embedding row alone trains (lr 0.3); the
  retain rows, whose loss has no gradient there, are not computed.
- ``rows-full-batch``: the same fit computing the retain rows and the teacher anyway (what it did
  before; the same weights to float tolerance, ``tests/test_class_rows.py``).
- ``kept-contrast``: the default with ``kept_contrast=4`` (the retain dip's counter-term: the
  forget rows under kept labels, 64 rows more in the step's student forward and backward and in
  its teacher forward).
- ``kept-contrast-separate``: the same loss with the term's rows in forwards of their own (a
  student and a teacher forward more): how the step ran it before it batched them.

``--trainers`` measures a subset (``plain`` always runs: the ratios are to it).

The three run interleaved, one step at a time: ``--reps`` rounds, each one step of each trainer
(the order rotates from round to round), so that the machine's slow and fast spells (on a shared
2-core VM they last seconds and move a step's time by 10-20%) fall on all three alike. A step's
time: for ``plain``, the wall time of the step (data, forward, loss, backward, Adam, ``.item()``);
for the Unlearner, the time its ``fit`` loop measures for the step (``record["seconds"]``: the
same span — the batch drawn, the loss, backward, the gradient norm, Adam, the logged numbers);
each ``fit(steps=+1)`` call's own set-up around it (~2 ms) is reported apart as
``fit_call_overhead``. A warm-up round is not counted. Reported: each trainer's median seconds
per step, the ratio of the medians to ``plain``, and the median of the per-round ratios (each
step against the plain step of its own round: less sensitive to the machine's spells). Speed is
printed, never asserted.
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

QUICK = os.environ.get("SAFEMAX_BENCH_QUICK") == "1"
TRAINERS = ("plain", "safemax", "safemax-noise", "rows", "rows-full-batch", "kept-contrast",
            "kept-contrast-separate")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


class Plain:
    """A diffusers-style fine-tuning loop over the same data (64 forget + 64 retain rows)."""

    def __init__(self, unet, scheduler, retain, forget, lr, seed, max_grad_norm):
        self.unet, self.scheduler = unet.train(), scheduler
        self.retain, self.forget = retain.tensors, forget.tensors
        self.params = [p for p in unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.max_grad_norm = max_grad_norm
        self.T = scheduler.config.num_train_timesteps

    def _draw(self, data, n):
        idx = torch.randint(0, len(data[0]), (n,), generator=self.generator)
        return data[0][idx], data[1][idx]

    def step(self, batch_size, mark=lambda phase: None):
        xf, yf = self._draw(self.forget, batch_size)
        xr, yr = self._draw(self.retain, batch_size)
        clean, labels = torch.cat([xf, xr]), torch.cat([yf, yr])
        noise = torch.randn(clean.shape, generator=self.generator)
        t = torch.randint(0, self.T, (len(clean),), generator=self.generator)
        noisy = self.scheduler.add_noise(clean, noise, t)
        mark("batch")
        pred = self.unet(noisy, t, class_labels=labels).sample
        mark("forward")
        loss = F.mse_loss(pred.float(), noise.float())
        mark("loss")
        loss.backward()
        mark("backward")
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            mark("gradient norm")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        mark("Adam")
        value = loss.detach().item()  # what the scripts log every step
        mark("logged numbers")
        return value

    def run(self, batch_size):
        """One step: ``(its seconds, the same)`` (no fit call around it)."""
        start = time.perf_counter()
        self.step(batch_size)
        took = time.perf_counter() - start
        return took, took


class Unlearning:
    """The Unlearner, one more step per ``fit`` call."""

    def __init__(self, u, retain, forget):
        self.u, self.retain, self.forget = u, retain, forget

    def run(self, batch_size):
        """One step: ``(the seconds the fit loop measured for it, the wall time of the call)``."""
        start = time.perf_counter()
        self.u.fit(self.retain, self.forget, steps=self.u.step + 1, batch_size=batch_size,
                   progress=False)
        wall = time.perf_counter() - start
        h = self.u.history
        return h[-1]["seconds"] - (h[-2]["seconds"] if len(h) > 1 else 0.0), wall


def FullBatch(**options):
    """SAFEMax computing the retain rows (and keeping the teacher) in a row-only fit too."""
    from safemax.methods import SafeMax

    class FullBatch(SafeMax):
        skips_retain_rows_when_rows_alone = False

    return FullBatch(**options)


def SeparateContrast(lam, **options):
    """``kept_contrast=λ`` on forwards of its own (the term's rows neither in the step's student
    nor in its teacher forward): what the step did before it batched them; the same loss."""
    from safemax.methods import SafeMax

    class SeparateContrast(SafeMax):
        def loss(self, u, retain, forget, batch_size):
            self.kept_contrast = 0.0   # the step without the term, then the term on its own
            try:
                loss, stats = super().loss(u, retain, forget, batch_size)
            finally:
                self.kept_contrast = lam
            bowl = self.kept_bowl(u, self.batch)
            return loss + bowl, dict(stats, kept_bowl=bowl.item())

    return SeparateContrast(kept_contrast=lam, **options)


FORGET = {"digits": 3, "fashion-mnist": 7}   # Fashion-MNIST: the tuned-baselines sweep's class (sneaker)


def settings(model: str) -> tuple:
    """``(lr, forget, method options)`` of the SAFEMax trainers on ``model``: its demo lr and
    Gaussian share, as ``safemax compare`` runs it (digits: lr 5e-4; Fashion-MNIST: lr 1e-4 and
    half the forget rows' x_0 Gaussian)."""
    from safemax.harness.defaults import method_settings
    lr, options = method_settings(model, "safemax")
    return lr, [FORGET[model]], options


def build(batch_size, model="digits", names=TRAINERS, seed=0):
    """The trainers ``names`` on ``model``, each on its own copy of the embedded UNet."""
    from safemax import Unlearner
    from safemax.harness.task import Task
    from safemax.methods import make_method

    lr, classes, options = settings(model)
    task = Task(model, FORGET[model], seed)
    forget, retain = task.forget_data, task.retain_data

    def unlearner(method=None, **k):   # a method object carries its own options
        base = dict(lr=lr, **options) if method is None else dict(lr=lr, method=method)
        return Unlearner(*task.load(), forget=classes, seed=seed, **{**base, **k})

    makers = {
        "plain": lambda: Plain(*task.load(), retain, forget, lr, seed,
                               make_method("safemax", **options).max_grad_norm),
        "safemax": lambda: unlearner(),
        "safemax-noise": lambda: unlearner(retain_target="noise"),
        "rows": lambda: unlearner(train="class-embedding", lr=None),
        "rows-full-batch": lambda: unlearner(train="class-embedding", lr=None, method=FullBatch(**options)),
        "kept-contrast": lambda: unlearner(kept_contrast=4.0),
        "kept-contrast-separate": lambda: unlearner(method=SeparateContrast(4.0, **options)),
    }   # the plain loop clips only where the Unlearner does (SAFEMax: max_grad_norm None, no clipping)
    built = {n: makers[n]() for n in TRAINERS if n in names}
    return {n: t if n == "plain" else Unlearning(t, retain, forget) for n, t in built.items()}


def build_specs(batch_size, model, specs, seed=0, quick=QUICK):
    """``plain`` and each of ``specs`` — `safemax compare`'s method specs (``"salun:lr=5e-4,retain_weight=1"``)
    built as compare builds them on ``model`` (its settings, its method objects, the forgotten
    class of ``FORGET``): what a comparison's steps and preparations cost, side by side."""
    from safemax import Unlearner
    from safemax.harness.compare import build_method, parse_method
    from safemax.harness.defaults import method_settings
    from safemax.harness.task import Task

    lr, classes, _ = settings(model)
    task = Task(model, FORGET[model], seed)
    forget, retain = task.forget_data, task.retain_data
    trainers = {"plain": Plain(*task.load(), retain, forget, lr, seed, None)}
    for spec in specs:
        name, options = parse_method(spec, quick=quick)   # quick: Selective Amnesia's preparation shrunk
        spec_lr, options = method_settings(model, name, options)
        u = Unlearner(*task.load(), forget=classes, lr=spec_lr, seed=seed, method=build_method(name, options))
        trainers[spec] = Unlearning(u, retain, forget)
    return trainers


def measure(reps, batch_size, log=print, names=TRAINERS, model="digits", specs=None, quick=QUICK):
    """``({trainer: [seconds of each counted step]}, {trainer: [wall seconds of each call]},
    {trainer: its preparation's seconds})``, interleaved as the module says (round r's steps are
    entry r of every list); ``specs``: compare's methods instead of ``names`` (see ``build_specs``,
    and ``quick``)."""
    if specs:
        names = ("plain", *dict.fromkeys(specs))
        trainers = build_specs(batch_size, model, names[1:], quick=quick)
    else:
        names = tuple(n for n in TRAINERS if n in names or n == "plain")
        trainers = build(batch_size, model, names)
    for _ in range(2):  # warm-up: Adam's state, the allocator, the first-call paths (and preparation)
        for name in names:
            trainers[name].run(batch_size)
    preps = {n: t.u.prep_seconds or 0.0 for n, t in trainers.items() if n != "plain"}
    times = {name: [] for name in names}
    walls = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step, wall = trainers[name].run(batch_size)
            times[name].append(step)
            walls[name].append(wall)
        if (r + 1) % 10 == 0 or r + 1 == reps:
            log(f"round {r + 1}/{reps}: " + ", ".join(
                f"{n} {statistics.median(times[n]):.3f}" for n in names) + " s/step (medians so far)")
    return times, walls, preps


def kept_prices(path: str, specs: list, reps: int, model: str = "digits", quick: bool = QUICK) -> dict:
    """What each of ``specs`` (compare's method specs) costs, measured side by side: ``measure``'s
    interleaved steps (``reps`` rounds, a comparison's batch) and each method's preparation, on
    ``model``'s ``FORGET`` class, in one process — so that comparisons that ran on shared cores are
    timed by the methods, not by the load of the hour each ran in. Kept in ``path`` and reused while
    it has every spec (same model and size)."""
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if (saved["settings"]["model"] == model and saved["settings"].get("quick", False) == quick
                and set(specs) <= set(saved["seconds_per_step"])):
            return saved
    batch = 2 if quick else 64
    print(f"pricing {len(specs)} settings: {reps} interleaved rounds of their steps, and their "
          "preparations (benchmarks/step_cost.py)", flush=True)
    times, walls, preps = measure(reps, batch, model=model, specs=specs, quick=quick)
    saved = dict(settings=dict(model=model, forget=FORGET[model], reps=reps, batch_size=batch, quick=quick,
                               threads=torch.get_num_threads()), **summarize(times, walls, preps))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    from safemax.evaluation.report import write_json   # (the commit, versions, machine)
    write_json(path, saved, indent=1)
    return saved


def summarize(times, walls, preps=None) -> dict:
    med = {name: statistics.median(v) for name, v in times.items()}
    quartiles = lambda v: statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3  # noqa: E731
    return dict(
        seconds_per_step={n: med[n] for n in times},
        ratio_to_plain={n: med[n] / med["plain"] for n in times},
        paired_ratio_to_plain={n: statistics.median(a / b for a, b in zip(times[n], times["plain"]))
                               for n in times},
        quartiles={n: quartiles(v) for n, v in times.items()},
        fit_call_overhead={n: statistics.median(w - t for w, t in zip(walls[n], times[n]))
                           for n in times if n != "plain"},
        counted_steps={n: len(v) for n, v in times.items()},
        prep_seconds=dict(preps or {}),
    )


PHASES = ("batch", "teacher forward", "target", "forward", "loss", "logged numbers", "backward",
          "gradient norm", "Adam")


class Marks:
    """Seconds per phase: ``mark(phase)`` closes the phase that began at the previous mark."""

    def __init__(self):
        self.seconds, self.last = {}, None

    def start(self):
        self.last = time.perf_counter()

    def __call__(self, phase):
        now = time.perf_counter()
        self.seconds.setdefault(phase, []).append(now - self.last)
        self.last = now


def safemax_step(u, retain, forget, batch_size, mark=lambda phase: None, train=True):
    """One step of ``u``'s fit (``training.loop.train_step`` with ``SafeMax.loss`` inlined), timed by
    phase (``train=False``: the loss only). ``phases`` first checks that it computes the loss
    the method computes."""
    from safemax.data import rows
    from safemax.op.ops import safemax_loss
    from safemax.training import parallel

    m, d = u.method, u.denoiser
    batch = x_t, eps, t, cond, is_forget = m.draw(u, retain, forget, batch_size)
    mark("batch")
    if m.teacher is not None:
        r = batch.retain_rows
        with torch.no_grad():
            target = d.predict(x_t[r], t[r], rows.take(cond, r), model=m.teacher)
        mark("teacher forward")
        eps = eps.clone()
        eps[r] = target
        mark("target")
    pred = d.predict(x_t, t, cond)
    mark("forward")
    loss, nats = safemax_loss(pred, eps, x_t, t, d.table, is_forget, m.t_min, m.forget_weight,
                              m.weighting, d.parametrization)
    mark("loss")
    numbers = [loss.item(), nats[is_forget].mean().item(), nats[~is_forget].mean().item()]
    mark("logged numbers")
    if train:
        u.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mark("backward")
        norm = getattr(parallel, "clip_grad_norm", None) or torch.nn.utils.clip_grad_norm_
        norm(u.optimizer.param_groups[0]["params"], float("inf"))  # as the fit: SAFEMax does not clip
        mark("gradient norm")
        u.optimizer.step()
        mark("Adam")
    return loss, numbers


def phases(steps, batch_size, model="digits"):
    """Median seconds of each phase of the plain step and of the SAFEMax step (default
    settings), ``steps`` of each, alternating."""
    from safemax.data import Batches

    trainers = build(batch_size, model, ("plain", "safemax"))
    plain, unlearning = trainers["plain"], trainers["safemax"]
    u = unlearning.u
    for _ in range(2):  # warm-up (and the Unlearner's preparation)
        plain.run(batch_size)
        unlearning.run(batch_size)
    retain = Batches(unlearning.retain, "retain", form=u.targets.form)
    forget = Batches(unlearning.forget, "forget", form=u.targets.form)
    u.unet.train()
    # the inlined step computes what the method computes: the same loss from the same draws
    state = u.generator.get_state()
    with torch.no_grad():
        want, _ = u.method.loss(u, retain, forget, batch_size)
        u.generator.set_state(state)
        got, _ = safemax_step(u, retain, forget, batch_size, train=False)
    if not torch.equal(want, got):
        raise RuntimeError(f"the inlined SAFEMax step drifted from SafeMax.loss: {got} != {want}")
    timers = {"plain": Marks(), "safemax": Marks()}
    for _ in range(steps):
        timers["plain"].start()
        plain.step(batch_size, timers["plain"])
        timers["safemax"].start()
        safemax_step(u, retain, forget, batch_size, timers["safemax"])
    u.unet.eval()
    return {name: {p: statistics.median(v) for p, v in t.seconds.items()} for name, t in timers.items()}


def print_phases(result):
    print(f"{'phase':18} {'plain (ms)':>11} {'safemax (ms)':>13} {'difference':>11}")
    for p in PHASES:
        a, b = result["plain"].get(p, 0.0), result["safemax"].get(p, 0.0)
        print(f"{p:18} {a * 1e3:11.1f} {b * 1e3:13.1f} {(b - a) * 1e3:+11.1f}")
    a, b = sum(result["plain"].values()), sum(result["safemax"].values())
    print(f"{'sum of medians':18} {a * 1e3:11.1f} {b * 1e3:13.1f} {(b - a) * 1e3:+11.1f}  "
          f"({b / a:.2f}x)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=2 if QUICK else 40,
                   help="interleaved rounds (one step of each trainer per round)")
    p.add_argument("--batch-size", type=int, default=2 if QUICK else 64,
                   help="forget rows per step, and as many retain rows")
    p.add_argument("--out", help="folder for step_cost.json")
    p.add_argument("--model", choices=list(FORGET), default="digits",
                   help="the embedded model (digits: forgetting 3; fashion-mnist: the sneaker, 7)")
    p.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS),
                   help="the trainers to measure (plain always runs)")
    p.add_argument("--specs", nargs="+", metavar="SPEC",
                   help="instead of --trainers: `safemax compare` methods (e.g. safemax:lr=1e-4 "
                        "salun:lr=5e-4,retain_weight=1 sa), each built as compare builds it; their "
                        "preparations are timed too")
    p.add_argument("--phases", type=int, default=0, metavar="STEPS",
                   help="instead: the median time of each phase of the plain and the SAFEMax "
                        "step over STEPS steps of each (a profile by timers)")
    args = p.parse_args(argv)
    import safemax  # the installed package (PYTHONPATH=. measures a checkout's)

    env = dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=_cpu_name(),
               omp_num_threads=os.environ.get("OMP_NUM_THREADS"), quick=QUICK,
               safemax=safemax.__version__, safemax_from=os.path.dirname(safemax.__file__))
    print(f"step cost: safemax {env['safemax']} from {env['safemax_from']}")
    print(f"step cost: torch {env['torch']}, {env['threads']} threads, {env['cpu']}; the {args.model} model, "
          f"{args.batch_size} + {args.batch_size} rows per step")
    if args.phases:
        result = phases(args.phases, args.batch_size, args.model)
        print_phases(result)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            from safemax.evaluation.report import write_json   # (the commit, versions, machine)
            write_json(os.path.join(args.out, "phases.json"),
                       dict(settings=vars(args), environment=env, median_seconds=result), indent=1)
        return result

    print(f"{args.reps} interleaved rounds")
    times, walls, preps = measure(args.reps, args.batch_size, names=args.trainers, model=args.model,
                                  specs=args.specs)
    result = summarize(times, walls, preps)
    w = max(14, *map(len, times))
    print(f"{'trainer':{w}} {'s/step':>8} {'vs plain':>9} {'paired':>8}   quartiles (s)   preparation (s)")
    for n in times:
        q = result["quartiles"][n]
        print(f"{n:{w}} {result['seconds_per_step'][n]:8.4f} {result['ratio_to_plain'][n]:8.2f}x "
              f"{result['paired_ratio_to_plain'][n]:7.2f}x   {q[0]:.4f} – {q[2]:.4f}   "
              f"{result['prep_seconds'].get(n, 0.0):.1f}")
    print("fit call overhead (not in the step times): " + ", ".join(
        f"{n} {s * 1e3:.1f} ms" for n, s in result["fit_call_overhead"].items()))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        from safemax.evaluation.report import write_json
        lr, forget, options = settings(args.model)
        write_json(os.path.join(args.out, "step_cost.json"),
                   dict(settings=vars(args) | dict(lr=lr, seed=0, forget=forget, **options), environment=env,
                        **result, step_seconds=times), indent=1)
        print(f"wrote {os.path.join(args.out, 'step_cost.json')}")
    return result


if __name__ == "__main__":
    main()
