"""The first steps of a SAFEMax fit, step by step: where the kept classes' dip comes from.

The curves of benchmarks/classes.py and retain_dip.py are measured every 5-10 steps; this script
looks at steps 1, 2, 3, 5, ... (digits, batch 64 + 64, seed 0; each point 50 forget samples and 20
per kept class, DDIM-10 — coarse, but a collapse to 0 is not subtle) and asks two questions:

1. ``ablation``: which weights carry the collapse? One sign step of size lr (what Adam's first
   step is) along the first batch's SAFEMax gradient, applied to one group of weights at a time
   (convolutions and linear layers, attention, time embedding, class embedding, norms, biases),
   to all of them, to all with a fraction of lr, and — as a control — a step of size lr with
   random signs.
2. ``curves``: does any optimiser setting avoid it? The default (Adam, lr 5e-4) against smaller
   learning rates, a large Adam eps, RAdam, a linearly decaying lr, Adam's second moment warmed
   with the kept classes' Fisher information (``fisher1e4``: weights that matter to the kept
   classes take smaller first steps), and a look-ahead retain term (``lookahead``: the retain rows
   also at the weights one sign step ahead, so that they pull back before the drift), and the
   forget gradient without its shared part (``contrast``: minus the halting loss of the same x_t
   under the kept classes' labels; ``hinge0.1``, ``hinge0.5``: that term capped at 1.1 or 1.5 × the
   original's; ``contrast10``: the term for the first 10 steps only; ``project``: the gradient's
   component along the kept labels' halting gradient removed; ``project-retain``: the same, their
   halting measured on the retain rows' own x_t; ``rows-first``: the default, after 40 steps that
   trained the class's embedding row alone — the forget loss is then already small; ``fast-row``:
   the default plus an offset of the class's embedding output trained at lr 0.3 from the start;
   ``warm-rows``: the same with the shared weights held for the first 20 steps while Adam's
   moments take in their gradients, so that their first real steps are not sign steps;
   ``anchor2``, ``anchor4``: contrast plus 2 or 4 × the kept labels' distance from the original's
   prediction on the forget x_t — bounded without a cap that lets go: ``SafeMax(kept_contrast=λ)``).

    python benchmarks/first_steps.py --out benchmarks/results/first-steps      # ~45 min, 1 core
    python benchmarks/first_steps.py --smoke --out /tmp/f                      # seconds: plumbing only

Finished pieces are kept in ``OUT/runs`` and skipped when run again.
"""
import argparse
import os

import torch

from safemax import Unlearner
from safemax.data import rows
from safemax.harness.store import cached
from safemax.harness.task import Task
from safemax.methods import SafeMax
from safemax.methods import mse as _mse
from safemax.methods.robust import Shifted
from safemax.op.reference import halting_target
from safemax.training import loop

LR = 5e-4
GROUPS = ("conv/linear", "attention", "time embedding", "class embedding", "norms", "biases")
SCALED = {"all, 0.1 lr": 0.1, "all, 0.2 lr": 0.2, "all, 0.5 lr": 0.5}   # how small a step still collapses
VARIANTS = ("default", "lr2e-4", "lr1e-4", "eps1e-4", "radam", "decay60", "fisher1e4", "lookahead", "contrast",
            "hinge0.1", "hinge0.5", "contrast10", "project", "project-retain", "rows-first",
            "fast-row", "warm-rows", "sgd0.01", "sgd0.05", "sgd0.2", "anchor2", "anchor4")
WARM = 20   # warm-rows: the steps the shared weights wait (their Adam moments still accumulate)


def group_of(name: str) -> str:
    if "class_embedding" in name:
        return "class embedding"
    if "time_emb" in name:
        return "time embedding"
    if "norm" in name:
        return "norms"
    if name.endswith("bias"):
        return "biases"
    if "attention" in name or "attn" in name:
        return "attention"
    return "conv/linear"


class LookaheadSafeMax(SafeMax):
    """SAFEMax plus the retain rows' distillation loss at the weights one sign step (lr) down the
    step's own gradient — a retain term that is not zero at the start. Experimental: here only."""

    def loss(self, u, retain, forget, batch_size):
        loss, stats = super().loss(u, retain, forget, batch_size)
        x_t, eps, t, cond, _ = self.batch   # eps: the retain rows' targets are the teacher's
        r = self.batch.retain_rows
        params = dict(u.trainable())
        grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)
        shift = {n: u.lr_at(u.step) * (g.sign() if g is not None else torch.zeros_like(p))
                 for (n, p), g in zip(params.items(), grads)}
        ahead = _mse(u.denoiser.predict(x_t[r], t[r], rows.take(cond, r), model=Shifted(u.unet, params, shift)),
                     eps[r])
        return loss + ahead, dict(stats, ahead=ahead.item())


def kept_residual(u, batch, model=None, on: str = "forget"):
    """Per row, the halting loss under a kept class's label (from the batch's retain rows) — how far
    the kept labels are from halting: on the forget rows' x_t (``on="forget"``) or on the retain
    rows' own x_t (``on="retain"``). ``batch``: the rows SAFEMax's loss used (``SafeMax.batch``)."""
    x_t, _, t, cond, _ = batch
    f, r = batch.forget_rows, batch.retain_rows
    if on == "retain":
        xf, tf, kept = x_t[r], t[r], rows.take(cond, r)
    else:
        xf, tf = x_t[f], t[f]
        kept = rows.take(rows.take(cond, r), torch.arange(len(tf)))   # kept-class labels on forget x_t
    target = halting_target(u.denoiser.table[tf], xf)
    return (u.denoiser.predict(xf, tf, kept, model=model) - target).square().flatten(1).mean(1)


class ContrastSafeMax(SafeMax):
    """SAFEMax minus the halting loss of the same forget x_t under the kept classes' labels: the
    forget gradient without its shared 'halt every class' part. With ``margin`` the subtracted term
    is capped per row at (1 + margin) × the original model's value (a hinge: the kept labels are
    pushed off the halting target only that far); with ``until``, it is dropped from that step on;
    without either, it is unbounded. Experimental: here only."""

    def __init__(self, margin: float = None, until: int = None):
        super().__init__()
        self.margin, self.until = margin, until

    def loss(self, u, retain, forget, batch_size):
        loss, stats = super().loss(u, retain, forget, batch_size)
        if self.until is not None and u.step >= self.until:   # switched off: plain SAFEMax
            return loss, stats
        res = kept_residual(u, self.batch)
        if self.margin is not None:
            with torch.no_grad():
                cap = (1 + self.margin) * kept_residual(u, self.batch, self.teacher)
            res = torch.minimum(res, cap)
        # x 0.5: the forget rows are half of the batch whose mean SAFEMax's loss is
        return loss - 0.5 * res.mean(), stats


class ProjectSafeMax(SafeMax):
    """SAFEMax's gradient with its component along the kept labels' halting gradient removed
    (only when it points that way: a projection, PCGrad-like). Unlike ``contrast`` it never pushes
    the kept labels *away* from halting, it only stops the step from pulling them towards it
    (to first order). ``on``: which x_t the kept labels' halting is measured on (see
    ``kept_residual``). Experimental: here only."""

    def __init__(self, on: str = "forget"):
        super().__init__()
        self.on = on

    def loss(self, u, retain, forget, batch_size):
        loss, stats = super().loss(u, retain, forget, batch_size)
        shared = kept_residual(u, self.batch, on=self.on).mean()
        params = [p for _, p in u.trainable()]
        g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        gs = torch.autograd.grad(shared, params, retain_graph=True, allow_unused=True)
        dot = sum((a * b).sum() for a, b in zip(g, gs) if a is not None and b is not None)
        norm = sum(b.square().sum() for b in gs if b is not None)
        w = (dot / norm).clamp(min=0).detach()
        return loss - w * shared, dict(stats, projected=w.item())


class FastRow:
    """An extra trainable offset of the forgotten class's class-embedding output, with its own
    Adam at the row-only fit's lr (0.3), stepped with the Unlearner's optimizer: the class's row
    can move by units per step while the shared weights move by lr. Experimental: here only."""

    def __init__(self, u, unet, forget: int, lr: float = 0.3):
        emb = unet.class_embedding
        self.delta = torch.nn.Parameter(torch.zeros(emb.weight.shape[1]))
        self.hook = emb.register_forward_hook(
            lambda m, inputs, out: out + (inputs[0] == forget).unsqueeze(-1).to(out.dtype) * self.delta)
        self.opt = torch.optim.Adam([self.delta], lr=lr)
        step, zero = u.optimizer.step, u.optimizer.zero_grad

        def step_(*a, **k):
            out = step(*a, **k)
            self.opt.step()
            return out

        def zero_(*a, **k):
            zero(*a, **k)
            self.opt.zero_grad(set_to_none=True)

        u.optimizer.step, u.optimizer.zero_grad = step_, zero_


class Setup(Task):
    """The task on the digits (seed 0) and this script's measurement and variants."""

    def __init__(self, forget: int, args):
        super().__init__("digits", forget, seed=0)
        self.args = args

    def measure(self, unet, scheduler) -> dict:
        a = self.args
        e = super().measure(unet, scheduler, n_forget=a.n_forget, n_per_class=a.n_per_class,
                            num_inference_steps=a.ddim_steps)
        return dict(fa=e["fa"], retain_acc=e["retain_acc"])

    def unlearner(self, variant: str):
        unet, scheduler = self.load()
        if variant == "rows-first":   # the class's embedding row alone first (40 steps), then everything
            rows_only = Unlearner(unet, scheduler, forget=[self.forget], seed=0, train="class-embedding")
            rows_only.fit(self.retain_data, self.forget_data, steps=40, batch_size=self.args.batch_size, progress=False)
            for hook in rows_only.row_hooks:   # the kept rows' mask too: from here on, the default
                hook.remove()
            unet.requires_grad_(True)
        method = {"lookahead": LookaheadSafeMax(), "contrast": ContrastSafeMax(),
                  "hinge0.1": ContrastSafeMax(margin=0.1), "contrast10": ContrastSafeMax(until=10),
                  "hinge0.5": ContrastSafeMax(margin=0.5), "project": ProjectSafeMax(),
                  "project-retain": ProjectSafeMax(on="retain"), "anchor2": SafeMax(kept_contrast=2.0),
                  "anchor4": SafeMax(kept_contrast=4.0)}.get(variant, "safemax")
        lr = {"lr2e-4": 2e-4, "lr1e-4": 1e-4}.get(variant, LR)
        u = Unlearner(unet, scheduler, forget=[self.forget], lr=lr, seed=0, method=method)
        params = [p for p in unet.parameters() if p.requires_grad]
        if variant == "eps1e-4":
            u.optimizer = torch.optim.Adam(params, lr=lr, eps=1e-4)
        elif variant.startswith("sgd"):   # steps along the gradient itself, not its signs
            u.lr = float(variant[3:])
            u.optimizer = torch.optim.SGD(params, lr=u.lr, momentum=0.9)
        elif variant == "radam":
            u.optimizer = torch.optim.RAdam(params, lr=lr)
        elif variant == "decay60":
            u.lr_at = lambda step: lr * max(1 - step / 60, 0.02)
        elif variant in ("fast-row", "warm-rows"):
            # the class's row forgets fast (lr 0.3); warm-rows: the shared weights' lr is 0 for the
            # first WARM steps — Adam's moments still take in those steps' large gradients, so that
            # once the row has forgotten, the shared weights' small gradients make small steps
            # (not the sign step of a fresh Adam: rows-first)
            u.fast_row = FastRow(u, unet, self.forget)
            if variant == "warm-rows":
                u.lr_at = lambda step: 0.0 if step < WARM else lr
        elif variant == "fisher1e4":
            self.warm_with_fisher(u, params, 1e4)
        return u, unet, scheduler

    def warm_with_fisher(self, u, params, scale: float, batches: int = 8):
        """Adam's second moment starts at scale × the kept classes' (batch) Fisher information, so
        that v̂ of the first step is scale·F + g² and weights that matter to them move less."""
        x0, y0 = self.retain_data.tensors
        g = torch.Generator().manual_seed(123)
        fisher = [torch.zeros_like(p) for p in params]
        for _ in range(batches):
            i = torch.randint(0, len(x0), (64,), generator=g)
            eps, t = torch.randn(x0[i].shape, generator=g), torch.randint(0, 1000, (64,), generator=g)
            loss = _mse(u.unet(u.scheduler.add_noise(x0[i], eps, t), t, class_labels=y0[i]).sample, eps)
            for f, gr in zip(fisher, torch.autograd.grad(loss, params)):
                f += gr.square() / batches
        beta2 = u.optimizer.defaults["betas"][1]
        for p, f in zip(params, fisher):   # v̂_1 = (β2·v0 + (1-β2)·g²) / (1-β2) = scale·F + g²
            u.optimizer.state[p] = dict(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                                        exp_avg_sq=scale * f * (1 - beta2) / beta2)


def ablation(s: Setup, args) -> dict:
    u, unet, scheduler = s.unlearner("default")
    retain, forget = loop.fit_data(u, s.retain_data, s.forget_data, args.batch_size)
    loss, _ = u.method.loss(u, retain, forget, args.batch_size)   # the fit's first batch
    named = list(u.trainable())
    grads = dict(zip([n for n, _ in named], torch.autograd.grad(loss, [p for _, p in named])))
    original = {n: p.detach().clone() for n, p in named}
    out = dict(none=s.measure(unet, scheduler))
    gen = torch.Generator().manual_seed(0)
    for which in (*GROUPS, "all", *SCALED, "all, random signs"):
        size = LR * SCALED.get(which, 1.0)
        with torch.no_grad():
            for n, p in named:
                if which == "all, random signs":
                    p -= size * (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.dtype)
                elif which in ("all", group_of(n)) or which in SCALED:
                    p -= size * grads[n].sign()
        out[which] = dict(s.measure(unet, scheduler), weights=sum(p.numel() for n, p in named
                                                                  if which.startswith("all") or group_of(n) == which))
        with torch.no_grad():
            for n, p in named:
                p.copy_(original[n])
    return out


def curve(s: Setup, variant: str, args) -> dict:
    u, unet, scheduler = s.unlearner(variant)
    points = [dict(step=0, **s.measure(unet, scheduler))]
    for step in args.at:
        try:
            u.fit(s.retain_data, s.forget_data, steps=step, batch_size=args.batch_size, progress=False)
        except FloatingPointError as e:   # a result too (SGD at too large an lr): recorded, not retried
            return dict(points=points, diverged=str(e), train_seconds=u.history[-1]["seconds"] if u.history else 0.0)
        points.append(dict(step=step, **s.measure(unet, scheduler)))
    return dict(points=points, train_seconds=u.history[-1]["seconds"])


def plot(curves, args, path):
    """Retain accuracy (solid) and FA (dotted) against the step, one panel per class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(args.classes), figsize=(6 * len(args.classes), 4), squeeze=False)
    for ax, c in zip(axes[0], args.classes):
        for i, v in enumerate(args.variants):
            pts = curves[c, v]["points"]
            steps = [p["step"] for p in pts]
            line, = ax.plot(steps, [p["retain_acc"] for p in pts], marker="o", ms=3, label=v, color=f"C{i}")
            ax.plot(steps, [p["fa"] for p in pts], ls=":", color=line.get_color())
        ax.set(title=f"digits, class {c} forgotten", xlabel="step", ylabel="retain acc (solid), FA (dotted)",
               ylim=(-0.02, 1.02), xscale="symlog", xlim=(0, max(args.at)))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cell(p) -> str:
    return f"{p['fa']:.2f} / {p['retain_acc']:.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[5])
    p.add_argument("--ablation-classes", type=int, nargs="*", default=[5, 0, 3],
                   help="the sign-step ablation's classes (none: skip it)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--at", type=int, nargs="+", default=[1, 2, 3, 5, 10, 15, 20, 30, 40])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-forget", type=int, default=50)
    p.add_argument("--n-per-class", type=int, default=20)
    p.add_argument("--ddim-steps", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny settings: tests the plumbing, not a result")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.smoke:
        args.at, args.batch_size, args.n_forget, args.n_per_class, args.ddim_steps = [1, 2], 4, 2, 1, 2
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    runs = os.path.join(args.out, "runs")
    lines = ["# The first steps of a SAFEMax fit (digits)\n",
             f"Each cell: FA / retain accuracy ({args.n_forget} forget samples, {args.n_per_class} per kept "
             f"class, DDIM-{args.ddim_steps}, seed 0).\n"]
    if args.ablation_classes:   # (--ablation-classes with none: the curves alone)
        lines += ["## One sign step of size lr along the first batch's SAFEMax gradient, by group of weights\n",
                  "| weights moved | count | " + " | ".join(f"class {c}" for c in args.ablation_classes) + " |",
                  "| --- | ---: | " + " | ".join("---" for _ in args.ablation_classes) + " |"]
        abl = {c: cached(os.path.join(runs, f"ablation-class{c}.json"), lambda c=c: ablation(Setup(c, args), args))
               for c in args.ablation_classes}
        first = abl[args.ablation_classes[0]]
        for which in ("none", *GROUPS, "all", *SCALED, "all, random signs"):
            lines.append(f"| {which} | {first[which].get('weights', 0):,} | "
                         + " | ".join(cell(abl[c][which]) for c in args.ablation_classes) + " |")
    lines += ["", "## Step by step, by optimiser setting\n",
              "| variant | class | " + " | ".join(f"step {a}" for a in [0, *args.at]) + " | train s |",
              "| --- | ---: | " + " | ".join("---" for _ in range(len(args.at) + 1)) + " | ---: |"]
    curves = {}
    for c in args.classes:
        for v in args.variants:
            r = curves[c, v] = cached(os.path.join(runs, f"{v}-class{c}.json"), lambda c=c, v=v: curve(Setup(c, args), v, args))
            at = {pt["step"]: pt for pt in r["points"]}   # (a run cached with other --at: "—" where it has none)
            gone = "NaN" if "diverged" in r else "—"   # after a divergence: no model left to measure
            lines.append(f"| {v} | {c} | " + " | ".join(cell(at[a]) if a in at else gone for a in [0, *args.at])
                         + f" | {r['train_seconds']:.0f} |")
            print(lines[-1], flush=True)
    plot(curves, args, os.path.join(args.out, "first-steps.png"))
    lines += ["", "![retain accuracy and FA against the step](first-steps.png)"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "first-steps.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
