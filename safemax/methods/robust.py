"""Robust SAFEMax (experimental): SAFEMax that also holds at a simulated relearning attacker's
weights (first-order meta-unlearning)."""
from dataclasses import dataclass
from typing import Optional

import torch

from safemax.data import rows
from safemax.methods.base import mse
from safemax.methods.safemax import SafeMax, SafeMaxSettings
from safemax.op.ops import safemax_loss
from safemax.settings import non_negative, one_of, optional, positive, setting


class Shifted:
    """``module`` called with every trainable weight moved by ``-shift[name]`` (a functional call:
    the module's own weights are untouched, and gradients reach them through the shift)."""

    def __init__(self, module, params: dict, shift: dict):
        self.module, self.params, self.shift = module, params, shift

    def __call__(self, *args, **kwargs):
        moved = {n: p - self.shift[n] for n, p in self.params.items()}
        return torch.func.functional_call(self.module, moved, args, kwargs)


ATTACK_SCOPES = ("weights", "class-embedding")
# (attack_radius, attack_steps) per scope when not given: class-embedding, the best of three radii
# measured over three seeds; weights, the first design's (it breaks the model: docs/results/robust.md)
SCOPE_DEFAULTS = {"class-embedding": (0.5, 2), "weights": (5e-3, 1)}


def _steps(v):
    return None if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1) else \
        "a whole number >= 1 (or None: the scope's default)"


@dataclass(frozen=True)
class SafeMaxRobustSettings(SafeMaxSettings):
    """Robust SAFEMax's settings: SAFEMax's and the simulated attacker's (``SafeMaxRobust``)."""
    attack_radius: Optional[float] = setting(None, "how far the simulated attack moves each coordinate "
                                             "(default: the scope's)", check=optional(positive))
    attack_steps: Optional[int] = setting(None, "the simulated attack's steps K (default: the scope's)",
                                          check=_steps)
    robust_weight: float = setting(1.0, "weight of the attacked term", check=non_negative)
    attacked_retain_weight: float = setting(0.0, "weights scope only: weight of the retain rows' loss at "
                                            "the attacked weights", check=non_negative)
    attack_scope: str = setting("class-embedding", "what the simulated attack moves",
                                check=one_of(*ATTACK_SCOPES))
    attack_norm: str = setting("sign", "signed steps (an L-inf ball) or one L2 step along the gradient",
                               check=one_of("sign", "l2"))

    def check(self):
        super().check()
        radius, steps = SCOPE_DEFAULTS[self.attack_scope]   # a radius is an embedding coordinate's or a weight's
        if self.attack_radius is None:
            object.__setattr__(self, "attack_radius", radius)
        if self.attack_steps is None:
            object.__setattr__(self, "attack_steps", steps)
        if not self.gaussian_fraction < 1:
            raise ValueError("SafeMaxRobust simulates fine-tuning on real forget images: "
                             "gaussian_fraction must be < 1")
        if self.attacked_retain_weight and self.attack_scope != "weights":
            raise ValueError("SafeMaxRobust: attacked_retain_weight needs attack_scope='weights': the "
                             "class-embedding attacker moves only the forgotten rows, which the retain rows never read")


class SafeMaxRobust(SafeMax):
    """SAFEMax against relearning: each step also simulates an attacker and trains the forgetting
    to hold at the attacked model too (first-order meta-unlearning, after arXiv 2410.12777).

    Per step, on the batch's real forget rows: δ = Σ_k (radius/K)·sign(∇ℓ_relearn(θ − δ)) over
    ``attack_steps`` K — the plain denoising loss, as the attacker's Adam takes its first steps —
    then loss = SAFEMax's loss at θ + ``robust_weight`` × the forget rows' SAFEMax loss at θ − δ
    (δ held constant: its gradient reaches θ unchanged). Cost: K + 1 extra forward/backward
    passes over the forget rows.

    What δ moves is ``attack_scope``:

    - ``"class-embedding"`` (default): the *inversion* attacker — only the forgotten classes' rows
      of the class-embedding tables (``safemax.models.class_rows``); the shared weights learn to halt
      at the moved rows too. Measured (digit 3 of the embedded model, three seeds): FA after the
      inversion attack 0.13 against SAFEMax's 0.29 (a model retrained without the class: 0.15),
      after the strong attack 0.41 against 0.65, at 1.3× SAFEMax's fit time — and 0.927 retain
      accuracy against 0.985. Given 200 steps it keeps the kept digits (0.977; two seeds of
      three within 2 points) and the inversion gain (0.09), not the strong attack's (0.58).
      Its radius is an embedding coordinate's (≈ N(0, 1) in the
      embedded models); default 0.5, K = 2.
    - ``"weights"``: every trained weight — fine-tuning itself. It breaks the kept classes at
      every radius and norm measured (retain accuracy 0.00–0.27; 0.74 with
      ``attacked_retain_weight`` at radius 2e-4, holding no better than SAFEMax); default radius
      5e-3 per weight, K = 1. docs/results/robust.md has both.

    Experimental: neither scope meets the relearning target it was built for (FA ≤ 0.15 after the
    strong attack with the kept classes within 2 points).

    Settings (``SafeMaxRobustSettings``), besides SAFEMax's:
        attack_radius: how far the simulated attack moves each coordinate it moves (an embedding
            coordinate or a weight; with ``attack_norm="l2"`` the total L2 length); the
            attacker's Adam moves a weight about this far in ``radius / lr`` steps. Default: the
            scope's (``SCOPE_DEFAULTS``).
        attack_steps: K, the simulated attack's steps (default: the scope's).
        robust_weight: weight of the attacked term.
        attacked_retain_weight: (``attack_scope="weights"`` only) weight of a second attacked
            term: the retain rows' loss (their distillation towards the original) at θ − δ, so
            that the cheapest way to halt the forget rows there — halting every class — is
            ruled out. One more forward/backward pass over the retain rows. 0 (default): off.
        attack_scope: ``"class-embedding"`` (default) or ``"weights"``, as above.
        attack_norm: ``"sign"`` (default: every moved coordinate by ``attack_radius``, an L∞
            ball) or ``"l2"``: each step along the gradient itself, of total L2 length
            ``attack_radius`` — SAM's ascent step (sharpness-aware unlearning, arXiv 2502.05374),
            which moves the coordinates the relearning loss is steep in and leaves the rest.

    The other settings are SAFEMax's (``gaussian_fraction < 1``: the attack needs real forget
    images); all are declared in ``SafeMaxRobustSettings``. ``guard_weight`` (a guard moving the kept
    classes' rows towards the attacked one) left the code after commit ccee319: measured, it did not
    keep the kept classes (docs/results/robust.md).
    """

    name = "safemax-robust"
    default_lr = 5e-4  # SAFEMax's (the demo's)
    skips_retain_rows_when_rows_alone = False   # its attacked retain term reads their targets
    unsharded_because = "its simulated attack calls the model with whole shifted weights (functional_call)"

    settings_class = SafeMaxRobustSettings

    def bind(self, u):
        if u.local.world > 1:   # its extra passes go around DDP's wrapper: not proven there
            raise ValueError("safemax-robust runs on one process for now (its simulated attack is "
                             "not tested under DDP); launch without accelerate's multi-process")
        if self.attack_scope == "class-embedding":
            from safemax.models.class_rows import class_tables
            try:
                class_tables(u.unet)
            except ValueError as e:
                raise ValueError(f"safemax-robust's attack_scope='class-embedding' (the default) simulates "
                                 f"the inversion attacker on the class-embedding table, and this model has "
                                 f"none; attack_scope='weights' simulates fine-tuning instead ({e})") from None
        super().bind(u)

    def simulate_attack(self, u, x_t, t, cond, eps) -> tuple:
        """``(params, shift)``: the attacker's ``attack_steps`` signed steps down the plain
        denoising loss on these forget rows, as a shift δ of the tensors it moves (by name, as the
        UNet calls them: every trained weight, or the class tables with δ on the forgotten rows
        only); ``Shifted(u.unet, params, shift)`` is the model at θ − δ."""
        if self.attack_scope == "weights":
            params, where = dict(u.trainable()), {}
        else:
            from safemax.models.class_rows import class_tables, row_mask
            params = dict(class_tables(u.unet))
            where = {n: row_mask(w, u.forget).to(w.device) for n, w in params.items()}
        shift = {n: torch.zeros_like(p) for n, p in params.items()}
        for _ in range(self.attack_steps):
            # the gradient at θ − δ, on detached copies (a LoRA fit's class tables are frozen)
            probe = {n: (p.detach() - shift[n]).requires_grad_() for n, p in params.items()}
            pred = u.denoiser.predict(x_t, t, cond, model=lambda *a, **k: torch.func.functional_call(u.unet, probe, a, k))
            grads = torch.autograd.grad(mse(pred, eps), list(probe.values()), allow_unused=True)
            grads = {n: torch.where(where[n], g, 0) if n in where else g for n, g in zip(params, grads)
                     if g is not None}
            if self.attack_norm == "sign":
                scale = self.attack_radius / self.attack_steps
                steps = {n: scale * g.sign() for n, g in grads.items()}
            else:   # one step of length radius/K along the whole gradient (SAM's ascent step)
                norm = torch.sqrt(sum(g.double().square().sum() for g in grads.values())).clamp_min(1e-30)
                steps = {n: g * (self.attack_radius / self.attack_steps / norm).to(g.dtype) for n, g in grads.items()}
            for n, step in steps.items():
                shift[n] = shift[n] + step
        return params, shift

    def _retain_rows_loss(self, u, model) -> tuple:
        """``(loss, mean nats)``: the batch's retain rows distilled towards their targets (the
        teacher's) through ``model`` — a moved copy of the UNet."""
        x_t, eps, t, cond, _ = self.batch
        r = self.batch.retain_rows
        pred = u.denoiser.predict(x_t[r], t[r], rows.take(cond, r), model=model)
        kept, nats = safemax_loss(pred, eps[r], x_t[r], t[r], u.denoiser.table,
                                  torch.zeros_like(t[r], dtype=torch.bool), self.t_min, self.forget_weight,
                                  self.weighting, u.denoiser.parametrization)
        return kept, nats.mean().item()

    def loss(self, u, retain, forget, batch_size):
        loss, stats = super().loss(u, retain, forget, batch_size)
        x_t, eps, t, cond, _ = self.batch
        f = self.batch.forget_rows
        # the real forget rows (the first gaussian_fraction·B of the batch's forget rows are N(0, I))
        real = u.local(torch.arange(batch_size) >= round(self.gaussian_fraction * batch_size)).to(x_t.device)
        if not real.any():   # (this process drew only Gaussian forget rows)
            return loss, dict(stats, attacked_forget_nats=float("nan"))
        xf, ef, tf, cf = x_t[f][real], eps[f][real], t[f][real], rows.take(rows.take(cond, f), real)
        params, shift = self.simulate_attack(u, xf, tf, cf, ef)   # the attacker's fine-tuning, simulated
        attacked = Shifted(u.unet, params, shift)
        pred = u.denoiser.predict(xf, tf, cf, model=attacked)
        held, nats = safemax_loss(pred, ef, xf, tf, u.denoiser.table, torch.ones_like(tf, dtype=torch.bool),
                                  self.t_min, self.forget_weight, self.weighting, u.denoiser.parametrization)
        stats["attacked_forget_nats"] = nats.mean().item()
        loss = loss + self.robust_weight * held
        if self.attacked_retain_weight:   # the kept classes at the attacked weights
            kept, stats["attacked_retain_nats"] = self._retain_rows_loss(u, attacked)
            loss = loss + self.attacked_retain_weight * kept
        return loss, stats
