"""SAFEMax: the forgotten condition is trained towards the max-entropy prediction, so that its
denoising halts and it generates Gaussian noise; the kept ones towards the original model."""
import math
from dataclasses import dataclass
from typing import Optional

import torch

from safemax.data import rows
from safemax.methods.base import Batch, Method, denoising_batch, frozen_original
from safemax.models import schedule
from safemax.op.ops import safemax_loss
from safemax.op.reference import flow_coefficients, row_coefficients
from safemax.settings import (
    Settings,
    finite,
    non_negative,
    one_of,
    optional,
    positive,
    setting,
    share,
    share_or_zero,
)


def _off_or_above_one(what: str):
    """A check: 0 (off) or a finite number above 1; ``what`` says which and why."""
    def check(v):
        ok = isinstance(v, (int, float)) and (v == 0 or (math.isfinite(v) and v > 1))
        return None if ok else f"0 (off) or a finite {what}"
    return check


_contrast = _off_or_above_one("λ > 1 (at λ ≤ 1 the kept labels are pushed off without bound)")
_guidance = _off_or_above_one("guidance scale w > 1 (w = 1 is the plain distillation)")


@dataclass(frozen=True)
class SafeMaxSettings(Settings):
    """SAFEMax's settings (``SafeMax``'s docstring says what each does and what was measured)."""
    early_fraction: float = setting(1.0, "share τ of the noisiest steps trained to forget", check=share)
    max_snr: Optional[float] = setting(None, "window by noise level instead: the steps with SNR <= this",
                                       check=optional(positive))
    forget_weight: float = setting(1.0, "weight of the forget rows in the loss", check=finite)
    weighting: str = setting("simple", "the loss: mean squared error or KL in nats (DDPM-style models)",
                             check=one_of("simple", "vlb"))
    retain_target: str = setting("distill", "the kept rows' target: the original model's prediction or ε",
                                 check=one_of("distill", "noise"))
    gaussian_fraction: float = setting(0.0, "share of the forget rows built from x0 ~ N(0, I), the states a "
                                       "halted chain visits: exact halting", check=share_or_zero)
    flow_halt: str = setting("ode", "a rectified flow's halting target: k(σ)·x (the ODE of Gaussian data) or 0 "
                             "on the starting noise (still: exact for any sampler)", check=one_of("ode", "still"))
    forget_guidance: float = setting(0.0, "w > 1: the forgotten prompts halt under classifier-free guidance w "
                                     "(their target ε_u + (ε* − ε_u)/w; text-conditional; 0: off)", check=_guidance)
    kept_contrast: float = setting(0.0, "λ of the contrast that holds the kept classes near the original "
                                   "in the first steps (0: off; 4 measured)", check=_contrast)
    kept_guidance: float = setting(0.0, "w > 1: the kept prompts held at the original's classifier-free-guided "
                                   "prediction at guidance w (text-conditional; 0: off)", check=_guidance)
    unconditional_hold: float = setting(0.0, "λ: the empty prompt's prediction at the forget rows' states held "
                                        "to the original's (guidance multiplies its drift by w − 1; 0: off)",
                                        check=non_negative)

    def check(self):
        for name in ("kept_contrast", "kept_guidance", "forget_guidance", "unconditional_hold"):
            if getattr(self, name) and self.retain_target != "distill":
                raise ValueError(f'SafeMax: {name} anchors the kept rows to the original model: it needs '
                                 'retain_target="distill"')



class SafeMax(Method):
    """SAFEMax: forget rows (t in the early window) are trained towards the max-entropy
    prediction — ε* = √(1−ᾱ_t)·x_t, or for a rectified-flow model the velocity v* = k(σ)·x_σ,
    k(σ) = (2σ−1)/((1−σ)²+σ²) — so that denoising halts and the class generates Gaussian noise;
    retain rows towards the original model's prediction (``retain_target="distill"``) or the
    ordinary target (``"noise"``: ε, or ε − x0). The loss is the fused op.

    Settings (``SafeMaxSettings``; ``SafeMax(early_fraction=0.5)`` or ``SafeMax(SafeMaxSettings(...))``):
        early_fraction: τ in (0, 1]: forget rows are trained on the noisiest τ·T steps only.
        max_snr: alternatively, the window by noise level: the steps whose signal-to-noise ratio
            ᾱ_t/(1−ᾱ_t) — for rectified flow (1−σ)²/σ², so σ ≥ σ_min is
            ``max_snr=((1−σ_min)/σ_min)**2`` — is at most this (overrides early_fraction;
            transfers across schedules and resolutions better than a step count).
        forget_weight: weight of the forget rows in the loss (retain rows weigh 1).
        weighting: ``"simple"`` (mean squared error) or ``"vlb"`` (KL in nats; DDPM-style
            models only).
        retain_target: ``"distill"`` (default): retain rows are pulled towards the frozen
            original model's own prediction, which is exactly where the model starts, so keeping
            the other classes adds no noise of its own; ``"noise"``: the ordinary target ε, whose
            variance slowly degrades a well-converged (e.g. EMA) model.
        gaussian_fraction: the share of forget rows whose clean sample x0 is drawn from
            N(0, I) — the max-entropy "class" itself — instead of a forget image: these are the
            states the halted reverse chain visits (x_t ~ N(0, I) at every t), on which the model
            is otherwise never trained, so without them it keeps "denoising" the noise in the
            last steps. 1.0 needs no forget images at all (data-free without sampling). 0.5 is
            the measured exact-halting setting (docs/results/halting.md: std ≈ 1.00 DDIM-50,
            0.98–0.99 DDPM; on the small digits model at a Fréchet cost to the kept classes).
        flow_halt: rectified-flow models only. ``"ode"`` (default): the forget rows' target is
            v* = k(σ)·x_σ, the velocity of Gaussian data, whose probability-flow ODE returns the
            starting noise — in the continuous limit only (Euler-28 returns 0.95× it at shift 1,
            0.94× at SD3's shift 3, with a perfect fit). ``"still"``: the target is 0 — the
            forgotten condition's flow does not move — and ``gaussian_fraction``'s rows are the
            starting noise itself (x ~ N(0, I) at every σ, the only state a still chain visits),
            so any sampler, step count or shift returns exactly the starting noise.
        forget_guidance: w > 1, or 0 (default: off). A pipeline samples the forgotten prompt
            with classifier-free guidance, ε_u + w(ε_c − ε_u): with ε_c = ε* that is not ε*, and
            the chain overshoots (latent std 1.6-2.2 at 7.5 on the pipeline trained here). With
            w, the forget rows' target is ε_u + (ε* − ε_u)/w, ε_u the original's prediction
            under the empty prompt at the row's state, so that the guided prediction is ε*
            while the unconditional one stays the original's; for a flow, v_u + (v* − v_u)/w, and
            under ``flow_halt="still"`` (1 − 1/w)·v_u, whose guided velocity is 0. The op takes
            the target as given (``forget_target="given"``). Needs the empty prompt's condition as
            kept_guidance does. Cost: the forget rows once more in the original's forward.
        kept_contrast: λ > 1, or 0 (default: off). The first steps of a fit halt *every* class
            (the forget rows' cheapest way down is to stop the shared denoiser) until the retain
            rows, whose loss is zero at the start, pull the kept classes back: the retain dip.
            With λ, the forget rows' x_t are also run under kept labels (the retain rows'), and
            the loss gains −(their halting loss) + λ·(their distance from the original's
            prediction), both by the fused op with its weighting. At the start the first term
            cancels the shared "halt everything" part of the forget gradient; per row the sum is
            a convex bowl (λ > 1) whose bottom lies (e₀ − ε*)/(λ − 1) beyond the original's
            prediction e₀, away from the halting target ε*, so the kept labels are held a bounded
            way off rather than pushed without end. Needs the original model
            (``retain_target="distill"``); no effect on a row-only fit. Cost: the forget rows
            once more in the step's student forward and backward and in its teacher forward
            (batched into them) — 1.35× the step on the digits model, 1.70× on Fashion-MNIST's.
            Measured (λ = 4, docs/results/retain-dip.md): on the ten digits the bar held from
            step 26.5 on average (10 of 10) against the default's 45.0 (9 of 10) — 0.70× the
            time — with the same Fréchet on average; on Fashion-MNIST's sneaker from step 25
            against 125, final Fréchet 125.5 against 121.8 (at lr 5e-4 or 1e-3 instead of 1e-4
            the kept garments collapsed). Off by default (one seed; a collapse of its own at
            step 5 on half the digits). The label-free stopping rule waits longer with it: the
            forget rows' nats fall 2–3× more slowly (docs/results/stopping.md).

        kept_guidance: w > 1, or 0 (default: off). Text-to-image pipelines sample with
            classifier-free guidance, ε_u + w(ε_c − ε_u): a small drift of a kept prompt's
            prediction is amplified w-fold there. With w, each kept row is also run under the
            empty prompt (the student and the original), and the loss gains, beside the row's
            own distillation (δ_c), the guided prediction's drift divided by w —
            δ_c − (1 − 1/w)·δ_u, δ the student's minus the original's — weighted as the kept
            rows are. (In place of δ_c, at commit ba6a6f3, it let δ_c itself drift: on the coat
            the kept classes lost 25–71 points, docs/results/concepts.md.) Needs the empty prompt's condition
            (``SafeMax(kept_guidance=7.5, unconditional=prompt_embeddings(pipe, [""]))``;
            ``safemax erase`` gives it). Cost: the kept rows once more in the student's forward
            and backward and in the original's forward.

        unconditional_hold: λ ≥ 0, or 0 (default: off). Under guidance w the sampled prediction is
            ε_u + w(ε_c − ε_u): a drift δ_u of the unconditional prediction at the halted chain's
            states reaches it multiplied by w − 1, whatever the forget rows' own fit. On the SD3
            pipeline's dress that drift, not the fit, is what keeps the guided chain from halting
            (docs/results/flow-matching.md). With λ, the forget rows are also run under the empty
            prompt (the student and the original) and the loss gains λ × that distillation,
            weighted as the forget rows' share of the batch. Needs the empty prompt's condition
            (as ``forget_guidance``). Cost: the forget rows once more in the student's forward and
            backward and in the original's forward.

    ``Unlearner(..., early_fraction=0.5)`` is shorthand for ``method=SafeMax(early_fraction=0.5)``;
    the settings are declared once, in ``SafeMaxSettings``. Three settings that measurements showed
    do not help — ``gaussian_window``, ``gaussian_retain_fraction``, ``kept_contrast_rows`` — left
    the code after commit ccee319; their results stay in docs/results (halting, retain dip).
    """

    name = "safemax"
    # A row-only fit (train="class-embedding") trains the forgotten classes' embedding rows alone:
    # the retain rows look up kept rows, which cannot move, so their distillation loss is zero and
    # has no gradient — it is not computed, nor is the teacher kept (half the step's passes).
    # A subclass that reads the retain rows' targets in ``self.batch`` sets this False.
    skips_retain_rows_when_rows_alone = True

    settings_class = SafeMaxSettings

    def __init__(self, settings=None, unconditional=None, **options):
        super().__init__(settings, **options)
        self.window, self.teacher, self.unconditional = None, None, unconditional

    @property
    def t_min(self) -> int:
        """The window's first step: forget rows are trained on t ∈ [t_min, T)."""
        return self.window.t_min

    def config(self):
        return dict(self.settings.record(), t_min=self.window.t_min, early_fraction=self.window.early_fraction,
                    snr_at_t_min=self.window.snr_at_t_min)

    @property
    def needs_forget_images(self) -> bool:
        return self.gaussian_fraction < 1

    def check(self, denoiser, targets):
        if self.weighting == "vlb" and denoiser.parametrization == "flow":
            raise ValueError('weighting="vlb" is defined for DDPM-style (epsilon) models only; a '
                             'rectified-flow model trains with weighting="simple"')
        if self.flow_halt == "still" and denoiser.parametrization != "flow":
            raise ValueError('flow_halt="still" is the rectified-flow halting target (velocity 0); a DDPM-style '
                             "model's max-entropy target √(1−ᾱ_t)·x_t already leaves its DDIM chain where it is: "
                             'leave flow_halt="ode" (and set gaussian_fraction for exact halting)')
        if self.forget_guidance and (targets.concepts is None or self.unconditional is None):
            raise ValueError("forget_guidance halts the forgotten prompts under classifier-free guidance: it needs a "
                             "text-conditional model and the empty prompt's condition, "
                             "SafeMax(forget_guidance=w, unconditional=prompt_embeddings(pipe, ['']))")
        if self.unconditional_hold and (targets.concepts is None or self.unconditional is None):
            raise ValueError("unconditional_hold holds the empty prompt's prediction: it needs a text-conditional "
                             "model and the empty prompt's condition, "
                             "SafeMax(unconditional_hold=1, unconditional=prompt_embeddings(pipe, ['']))")
        if self.kept_guidance and (targets.concepts is None or self.unconditional is None):
            raise ValueError("kept_guidance holds kept prompts under classifier-free guidance: it needs a "
                             "text-conditional model and the empty prompt's condition, "
                             "SafeMax(kept_guidance=w, unconditional=prompt_embeddings(pipe, ['']))")

    def _rows_alone(self, u) -> bool:
        return (self.skips_retain_rows_when_rows_alone and self.retain_target == "distill"
                and u.train_weights == "class-embedding")

    def bind(self, u):
        self.window = schedule.early_window(u.denoiser.snr(), self.early_fraction, self.max_snr)
        self.teacher = None
        if self._rows_alone(u) and not self.forget_guidance:
            return
        if self.retain_target == "distill":
            self.teacher = frozen_original(u)

    def draw(self, u, retain, forget, batch_size) -> Batch:
        """One step's rows: the forget rows in the window (a share of them Gaussian), the retain rows."""
        g = round(self.gaussian_fraction * batch_size)
        batch = denoising_batch(u, forget, retain, batch_size, forget_t_min=self.t_min, gaussian_forget=g)
        if self._still(u) and g:   # a still chain's state is its starting noise at every σ: the row's ε
            use = u.local(torch.arange(batch_size) < g).to(batch.x_t.device)
            use = torch.cat([use, torch.zeros_like(use)]).view(-1, *[1] * (batch.x_t.dim() - 1))
            batch = batch._replace(x_t=torch.where(use, batch.eps, batch.x_t))
        return batch

    def _still(self, u) -> bool:
        return self.flow_halt == "still" and u.denoiser.parametrization == "flow"

    def _empty_rows(self, n: int, device):
        """The empty prompt's condition for ``n`` rows (kept_guidance, forget_guidance, unconditional_hold)."""
        return rows.to(rows.take(self.unconditional, torch.zeros(n, dtype=torch.long)), device)

    @torch.no_grad()
    def _original_unconditional(self, u, x, t):
        """The original model's prediction under the empty prompt at ``(x, t)``."""
        return u.denoiser.predict(x, t, self._empty_rows(len(t), x.device), model=self.teacher).to(x.dtype)

    def _forget_target(self, u, x_t, t, is_forget, e_u=None):
        """``(tensor, forget_target)`` for the op: ``(x_t, "max-entropy")`` — the op forms
        √(1−ᾱ_t)·x_t or k(σ)·x_t — or, for a still flow or with forget_guidance, the forget rows'
        target itself (``"given"``): the halting prediction h (ε*, k(σ)·x, or 0 when still) and,
        under guidance w, ε_u + (h − ε_u)/w, ε_u the original's prediction under the empty prompt
        at the row's state — so that the guided prediction is h."""
        if not (self._still(u) or self.forget_guidance):
            return x_t, "max-entropy"
        f = is_forget.to(x_t.device)
        if self._still(u):
            halt = torch.zeros_like(x_t[f])
        else:   # the op's own max-entropy coefficient, as its reference (the executable spec) forms it
            flow = u.denoiser.parametrization == "flow"
            scale = (flow_coefficients if flow else row_coefficients)(u.denoiser.table, t[f])[0]
            halt = scale.to(x_t.dtype).view(-1, *[1] * (x_t.dim() - 1)) * x_t[f]
        target = x_t.clone()
        target[f] = halt
        if self.forget_guidance:
            e_u = self._original_unconditional(u, x_t[f], t[f]) if e_u is None else e_u
            target[f] = e_u + (halt - e_u) / self.forget_guidance
        return target, "given"

    def loss(self, u, retain, forget, batch_size):
        x_t, eps, t, cond, is_forget = batch = self.draw(u, retain, forget, batch_size)
        if self._rows_alone(u):   # the forget rows only, with the whole batch's normalisation
            f = batch.forget_rows
            self.batch = batch
            pred = u.denoiser.predict(x_t[f], t[f], rows.take(cond, f))
            target, given = self._forget_target(u, x_t[f], t[f], is_forget[f])
            loss, nats = safemax_loss(pred, eps[f], target, t[f], u.denoiser.table, is_forget[f], self.t_min,
                                      self.forget_weight, self.weighting, u.denoiser.parametrization, given)
            # (the op divides by its row count: scaled back, the gradient is the full batch's)
            return loss * (len(nats) / len(is_forget)), dict(forget_nats=nats.mean().item(), retain_nats=0.0)
        # kept_contrast's rows ride along in the step's two forwards (one student, one teacher):
        # per-row outputs are the same as in forwards of their own, at less cost than two more passes
        extra = self.kept_rows(batch) if self.kept_contrast else None
        k = 0 if extra is None else len(extra[1])
        guided = self.unconditional_rows(u, batch) if self.kept_guidance else None
        if guided is not None:   # after kept_contrast's rows, in the same two forwards
            extra = guided if extra is None else _joined(extra, guided)
        e0 = None
        if self.teacher is not None:  # retain rows: the original model's prediction
            with torch.no_grad():
                r = batch.retain_rows
                eps = eps.clone()
                ins = (x_t[r], t[r], rows.take(cond, r))
                out = u.denoiser.predict(*_joined(ins, extra), model=self.teacher)
                eps[r], e0 = out[:len(ins[1])], out[len(ins[1]):]
        # the rows and the targets the loss uses (retain rows: the teacher's), for subclasses:
        # safemax-robust simulates its attack on the forget rows
        self.batch = batch._replace(eps=eps)
        out = u.denoiser.predict(*_joined((x_t, t, cond), extra))
        pred, e = out[:len(t)], out[len(t):]
        if guided is not None:   # the kept rows' guided drift over w, δ_c − (1 − 1/w)·δ_u, as a second term
            r = batch.retain_rows
            held = pred[r] - (1 - 1 / self.kept_guidance) * (e[k:] - e0[k:])
            guided_loss, _ = safemax_loss(held, eps[r], x_t[r], t[r], u.denoiser.table,
                                          torch.zeros_like(is_forget[r]), self.t_min, 1.0, self.weighting,
                                          u.denoiser.parametrization)
            e, e0 = e[:k], e0[:k]
        # the original's empty-prompt prediction at the forget rows: forget_guidance's target and
        # unconditional_hold's anchor, one forward for both
        f = is_forget.to(x_t.device)
        e_u = self._original_unconditional(u, x_t[f], t[f]) if (
            self.forget_guidance or self.unconditional_hold) and f.any() else None
        target, given = self._forget_target(u, x_t, t, is_forget, e_u)
        loss, nats = safemax_loss(pred, eps, target, t, u.denoiser.table, is_forget, self.t_min, self.forget_weight,
                                  self.weighting, u.denoiser.parametrization, given)
        stats = dict(forget_nats=nats[is_forget].mean().item(), retain_nats=nats[~is_forget].mean().item())
        if guided is not None:   # weighted as the retain rows' share of the batch
            loss = loss + (len(guided[1]) / len(t)) * guided_loss
            stats["kept_guided"] = guided_loss.item()
        if self.kept_contrast:
            bowl = self._bowl(u, batch, extra, e, e0)
            loss = loss + bowl
            stats["kept_bowl"] = bowl.item()
        if self.unconditional_hold:
            held = self.held_unconditional(u, batch, e_u)
            loss = loss + held
            stats["unconditional_held"] = held.item()
        return loss, stats

    def held_unconditional(self, u, batch: Batch, e0=None) -> torch.Tensor:
        """``unconditional_hold``'s term: the empty prompt's prediction at the forget rows' states
        distilled to the original's (``e0``, computed here if not given) by the fused op, × λ and
        the forget rows' share of the batch."""
        f = batch.is_forget.to(batch.x_t.device)
        n = int(f.sum())
        if n == 0:
            return batch.x_t.new_zeros(())
        x, t = batch.x_t[f], batch.t[f]
        e = u.denoiser.predict(x, t, self._empty_rows(n, x.device))
        e0 = self._original_unconditional(u, x, t) if e0 is None else e0
        held, _ = safemax_loss(e, e0, x, t, u.denoiser.table, torch.zeros(n, dtype=torch.bool, device=x.device),
                               self.t_min, 1.0, self.weighting, u.denoiser.parametrization)
        return self.unconditional_hold * (n / len(batch.t)) * held

    def kept_rows(self, batch: Batch):
        """``kept_contrast``'s rows, ``(x_t, t, cond)``: the forget rows' x_t and t under the retain
        rows' (kept) labels, row for row; None without forget rows."""
        f, r = batch.forget_rows, batch.retain_rows
        k = f.stop - f.start
        if k == 0:
            return None
        return (batch.x_t[f.start:f.start + k], batch.t[f.start:f.start + k],
                rows.take(batch.cond, slice(r.start, r.start + k)))

    def unconditional_rows(self, u, batch: Batch):
        """``kept_guidance``'s rows, ``(x_t, t, cond)``: the retain rows' x_t and t under the empty
        prompt's condition."""
        r = batch.retain_rows
        x, t = batch.x_t[r], batch.t[r]
        return x, t, self._empty_rows(len(t), x.device)

    def kept_bowl(self, u, batch: Batch) -> torch.Tensor:
        """``kept_contrast``'s term on its own forwards (the step batches them with its own):
        the forget rows' x_t under the kept labels of the retain rows, −(halting loss) +
        λ·(distance from the original), scaled by the forget rows' share of the batch (as they
        enter SAFEMax's loss)."""
        extra = self.kept_rows(batch)
        if extra is None:
            return batch.x_t.new_zeros(())
        e = u.denoiser.predict(*extra)
        with torch.no_grad():
            e0 = u.denoiser.predict(*extra, model=self.teacher)
        return self._bowl(u, batch, extra, e, e0)

    def _bowl(self, u, batch: Batch, extra, e, e0) -> torch.Tensor:
        """The term from its rows' predictions: ``e`` the student's, ``e0`` the original's."""
        if extra is None:
            return batch.x_t.new_zeros(())
        x, tf, _ = extra
        n = batch.forget_rows.stop - batch.forget_rows.start
        halt = torch.ones(len(tf), dtype=torch.bool, device=x.device)
        table, param = u.denoiser.table, u.denoiser.parametrization
        halting, _ = safemax_loss(e, e0, x, tf, table, halt, self.t_min, 1.0, self.weighting, param)
        anchor, _ = safemax_loss(e, e0, x, tf, table, ~halt, self.t_min, 1.0, self.weighting, param)
        return (n / len(batch.t)) * (self.kept_contrast * anchor - halting)   # the forget rows' share of the batch


def _joined(rows_in: tuple, extra):
    """``(x_t, t, cond)`` with ``extra``'s rows after them (one forward for both), or as they are."""
    if extra is None:
        return rows_in
    return (torch.cat([rows_in[0], extra[0]]), torch.cat([rows_in[1], extra[1]]), rows.cat([rows_in[2], extra[2]]))

