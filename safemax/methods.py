"""Unlearning methods behind one interface: SAFEMax and the baselines the paper compares with.

A method prepares once (its cost is reported as ``prep_seconds``) and then gives the loss of one
step; the ``Unlearner`` owns the loop, the optimizer, the checkpoints and the NaN guard, so every
method runs on the same data, batch and optimizer.

============  ===========================================  ================================  ====================
method        forget term                                  keeps the other classes by        preparation
============  ===========================================  ================================  ====================
``safemax``   forget rows → √(1−ᾱ_t)·x_t, the max-entropy   retain rows distilled to the      a frozen copy
              prediction (fused op, early-step window)      original model
``salun``     ε(x_t, forget class) → detached ε(x_t, a      retain denoising loss × 1e-3;     saliency mask: top 50%
              random other class) (Fan et al. 2024)         only the salient weights move     of |∂ forget loss / ∂θ|
``sa``        forget class trained to denoise uniform-      EWC (diagonal Fisher, λ = 10) +   replay set and Fisher,
              noise images (Heng & Soh 2023)                replay of generated other classes both from the original
``ga``        minus the forget rows' denoising loss         plus the retain denoising loss    none
============  ===========================================  ================================  ====================

Every method draws its batches, timesteps and noise from the Unlearner's generator, so a fit is
reproducible and resumable whatever the method.
"""
import copy
import math

import torch
from torch.utils.data import TensorDataset

from .data import Batches, balanced_labels
from .ops import safemax_loss
from .sampling import sample


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).square().mean()


def _denoising_batch(u, retain, forget, batch_size: int):
    """``batch_size`` forget rows then ``batch_size`` retain rows, t ~ U[0, T), noised:
    ``(x_t, eps, t, conds)`` on the model's device — this process's share of them
    (``u.local``; all of them in a single process)."""
    g, B = u.generator, batch_size
    xf, yf = forget.draw(B, g, u.local)
    xr, yr = retain.draw(B, g, u.local)
    t = u.local(torch.randint(0, u.num_train_timesteps, (2 * B,), generator=g), parts=2)
    x0 = torch.cat([xf, xr])
    eps = u.local(torch.randn((2 * B, *x0.shape[1:]), generator=g), parts=2)
    x0, eps, t, conds = u.to_device(x0, eps, t, torch.cat([yf, yr]))
    x_t, eps = u.noisy(x0, t, eps)
    return x_t, eps, t, conds


class Method:
    """Base class. ``prepare`` runs once before the first step (timed as preparation),
    ``loss`` gives one step's loss and a dict of numbers for the history, ``edit_grads`` may
    change the gradients before the optimizer step; ``state``/``load_state`` carry prepared
    tensors through checkpoints so that a resumed fit does not prepare again."""

    name = ""
    default_lr = 1e-4
    max_grad_norm = None  # gradient-norm clipping of the published recipe (None: none)
    uses_forget_data = True  # real (or generated) forget-class images
    uses_retain_data = True  # real images of the kept classes

    def config(self) -> dict:
        return {}

    def bind(self, u) -> None:
        """Called when the Unlearner is built, while its model is still the original."""

    def prepare(self, u, retain, forget, batch_size: int) -> None:
        pass

    def loss(self, u, retain, forget, batch_size: int):
        raise NotImplementedError

    def edit_grads(self, u) -> None:
        pass

    def state(self) -> dict:
        return {}

    def load_state(self, tensors: dict, u) -> None:
        pass


# ---------------------------------------------------------------------------------- SAFEMax
class SafeMax(Method):
    """Forget rows (t in the early window) are trained towards √(1−ᾱ_t)·x_t, so that denoising
    halts and the class generates Gaussian noise; retain rows towards the original model's
    prediction (``retain_target="distill"``) or ε (``"noise"``). The loss is the fused op.
    Its settings live on the Unlearner (early_fraction, max_snr, forget_weight, weighting,
    retain_target), which validates them."""

    name = "safemax"

    def bind(self, u):
        self.teacher = None
        if u.retain_target == "distill":  # the frozen original, before any step changes it
            self.teacher = copy.deepcopy(u.unet).requires_grad_(False).eval()

    def loss(self, u, retain, forget, batch_size):
        g, T, B = u.generator, u.num_train_timesteps, batch_size
        xf, yf = forget.draw(B, g, u.local)
        xr, yr = retain.draw(B, g, u.local)
        tf = u.local(torch.randint(u.t_min, T, (B,), generator=g))  # t_min < T as τ > 0
        tr = u.local(torch.randint(0, T, (B,), generator=g))
        x0 = torch.cat([xf, xr])
        eps = u.local(torch.randn((2 * B, *x0.shape[1:]), generator=g), parts=2)
        b = len(xf)  # this process's rows of each half
        is_forget = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)])
        x0, eps, t, conds, is_forget = u.to_device(x0, eps, torch.cat([tf, tr]),
                                                   torch.cat([yf, yr]), is_forget)
        x_t, eps = u.noisy(x0, t, eps)
        if self.teacher is not None:  # retain rows: the original model's prediction
            with torch.no_grad():
                r = slice(b, None)
                eps = eps.clone()
                eps[r] = u.predict(x_t[r], t[r], conds[r], model=self.teacher)
        pred = u.predict(x_t, t, conds)
        loss, nats = safemax_loss(pred, eps, x_t, t, u.abar, is_forget, u.t_min,
                                  u.forget_weight, u.weighting)
        return loss, dict(forget_nats=nats[is_forget].mean().item(),
                          retain_nats=nats[~is_forget].mean().item())


# ---------------------------------------------------------------------------------- SalUn
class SalUn(Method):
    """SalUn (Fan et al., ICLR 2024) for class-conditional diffusion models.

    Preparation: the gradient of the plain denoising loss over the forget data, once, on the
    original model; the ``mask_fraction`` of weights with the largest |gradient| (one global
    threshold over all weights) form the saliency mask, and only they are updated.
    Step: random labelling — the forget class's prediction on x_t is pulled towards the
    *detached* prediction for a random other class on the same x_t — plus ``retain_weight`` ×
    the denoising loss on retain data. Published recipe: mask 50%, retain weight 1e-3, Adam
    1e-4 with the gradient norm clipped at 1 (before masking), 1000 iterations × batch 128.
    """

    name = "salun"
    max_grad_norm = 1.0  # the published configs clip the gradient norm at 1

    def __init__(self, mask_fraction: float = 0.5, retain_weight: float = 1e-3):
        if not 0 < mask_fraction <= 1:
            raise ValueError(f"mask_fraction must be in (0, 1], got {mask_fraction}")
        if not retain_weight >= 0:
            raise ValueError(f"retain_weight must be >= 0, got {retain_weight}")
        self.mask_fraction, self.retain_weight = mask_fraction, retain_weight
        self.mask = None  # {parameter name: bool tensor}

    def config(self):
        return dict(mask_fraction=self.mask_fraction, retain_weight=self.retain_weight)

    def bind(self, u):
        self.other_classes = None if u.num_classes is None else \
            torch.tensor([c for c in range(u.num_classes) if c not in u.forget])

    def prepare(self, u, retain, forget, batch_size):
        named = u.trainable()
        for _, p in named:
            p.grad = None
        # every forget image once (data sets), or as many batches as one pass would take
        n = len(forget.data) if forget.map_style else 8 * batch_size
        chunks = math.ceil(n / batch_size)
        g = u.generator
        for i in range(chunks):
            if forget.map_style:
                x0, y = forget.items(torch.arange(i * batch_size, min(n, (i + 1) * batch_size)))
            else:
                x0, y = forget.draw(batch_size, g)
            t = torch.randint(0, u.num_train_timesteps, (len(y),), generator=g)
            eps = torch.randn(x0.shape, generator=g)
            x0, eps, t, y = u.to_device(x0, eps, t, y)
            x_t, eps = u.noisy(x0, t, eps)
            (_mse(u.predict(x_t, t, y), eps) * len(y) / n).backward()
        scores = torch.cat([(p.grad.abs() if p.grad is not None else torch.zeros_like(p)).flatten().float()
                            for _, p in named])
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.topk(scores, round(self.mask_fraction * scores.numel()), sorted=False).indices] = True
        self.mask, offset = {}, 0
        for name, p in named:
            self.mask[name] = keep[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            p.grad = None

    def loss(self, u, retain, forget, batch_size):
        x_t, eps, t, conds = _denoising_batch(u, retain, forget, batch_size)
        b = len(conds) // 2
        if self.other_classes is not None:
            pick = u.local(torch.randint(0, len(self.other_classes), (batch_size,), generator=u.generator))
            other, = u.to_device(self.other_classes[pick])
        else:  # text concepts: the retain rows' prompts, a random draw of other concepts
            other = conds[b:]
        f = slice(0, b)
        with torch.no_grad():  # the random label's prediction is the target, not trained
            target = u.predict(x_t[f], t[f], other)
        pred = u.predict(x_t, t, conds)
        forget_loss = _mse(pred[f], target)
        retain_loss = _mse(pred[b:], eps[b:])
        return forget_loss + self.retain_weight * retain_loss, \
            dict(forget_loss=forget_loss.item(), retain_loss=retain_loss.item())

    def edit_grads(self, u):
        for name, p in u.trainable():
            if p.grad is not None:
                p.grad.mul_(self.mask[name])

    def state(self):
        return {f"mask.{k}": v.to(torch.uint8) for k, v in self.mask.items()}

    def load_state(self, tensors, u):
        device = u.device()
        self.mask = {k[len("mask."):]: v.bool().to(device) for k, v in tensors.items()
                     if k.startswith("mask.")}


# ---------------------------------------------------------------------------------- Selective Amnesia
class SelectiveAmnesia(Method):
    """Selective Amnesia (Heng & Soh, NeurIPS 2023) for class-conditional diffusion models.

    Preparation, on the original model: ``n_replay`` samples of the kept classes (generative
    replay) and a diagonal Fisher information F over ``n_fisher`` generated samples of all
    classes: F = mean over samples of (∂ℓ/∂θ)², ℓ = the sample's denoising loss (summed over
    pixels, as a log-likelihood) averaged over ``fisher_timesteps`` evenly spaced timesteps.
    Step: the forget class is trained to denoise uniform-noise images (the surrogate
    distribution), the replayed samples with their labels (weight ``replay_weight``), plus the
    EWC penalty λ/2·Σ F·(θ − θ*)². Real data are not used at all. Published recipe: λ = 10,
    replay weight 1, 20k iterations × batch 128, Adam 1e-4, gradient norm clipped at 1; the
    replay set and the Fisher sample count are scaled down for the embedded model (defaults).
    """

    name = "sa"
    max_grad_norm = 1.0  # the published configs clip the gradient norm at 1
    uses_forget_data = False
    uses_retain_data = False

    def __init__(self, ewc_lambda: float = 10.0, replay_weight: float = 1.0, n_replay: int = 500,
                 n_fisher: int = 100, fisher_timesteps: int = 20, sample_steps: int = 50):
        for name, v in (("n_replay", n_replay), ("n_fisher", n_fisher),
                        ("fisher_timesteps", fisher_timesteps), ("sample_steps", sample_steps)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not ewc_lambda >= 0 or not replay_weight >= 0:
            raise ValueError("ewc_lambda and replay_weight must be >= 0")
        self.ewc_lambda, self.replay_weight = ewc_lambda, replay_weight
        self.n_replay, self.n_fisher = n_replay, n_fisher
        self.fisher_timesteps, self.sample_steps = fisher_timesteps, sample_steps
        self.fisher = self.replay = self._replay_batches = None

    def config(self):
        return dict(ewc_lambda=self.ewc_lambda, replay_weight=self.replay_weight,
                    n_replay=self.n_replay, n_fisher=self.n_fisher,
                    fisher_timesteps=self.fisher_timesteps, sample_steps=self.sample_steps)

    def bind(self, u):
        self.original = {n: p.detach().clone() for n, p in u.trainable()}  # θ*
        self.kept = [c for c in range(u.num_classes) if c not in u.forget]

    def prepare(self, u, retain, forget, batch_size):
        labels = balanced_labels(self.kept, self.n_replay)
        replay = sample(u.unet, u.scheduler, labels, num_inference_steps=self.sample_steps,
                        seed=u.seed + 2).clamp(-1, 1)
        self._set_replay(TensorDataset(replay, labels))
        self.fisher = self._fisher(u)

    def _fisher(self, u):
        labels = balanced_labels(range(u.num_classes), self.n_fisher)
        images = sample(u.unet, u.scheduler, labels, num_inference_steps=self.sample_steps,
                        seed=u.seed + 3).clamp(-1, 1)
        T, K = u.num_train_timesteps, self.fisher_timesteps
        grid = torch.linspace(0, T - 1, K).round().long()
        named = u.trainable()
        fisher = [torch.zeros_like(p, dtype=torch.float32) for _, p in named]
        for x, y in zip(images, labels):  # per-sample gradients: E[g²], not (E g)²
            eps = torch.randn((K, *x.shape), generator=u.generator)
            x0, eps, t, y = u.to_device(x.expand(K, *x.shape), eps, grid, y.expand(K))
            x_t, eps = u.noisy(x0, t, eps)
            nll = (u.predict(x_t, t, y).float() - eps.float()).square().flatten(1).sum(1).mean()
            for f, gr in zip(fisher, torch.autograd.grad(nll, [p for _, p in named])):
                f.add_(gr.float().square(), alpha=1.0 / len(labels))
        return {name: f for (name, _), f in zip(named, fisher)}

    def loss(self, u, retain, forget, batch_size):
        g, B = u.generator, batch_size
        xr, yr = self._replay_batches.draw(B, g, u.local)
        forget_ids = torch.tensor(u.forget)
        yf = u.local(forget_ids[torch.randint(0, len(forget_ids), (B,), generator=g)])
        xf = u.local(torch.rand((B, *xr.shape[1:]), generator=g) * 2 - 1)  # surrogate: uniform noise
        t = u.local(torch.randint(0, u.num_train_timesteps, (2 * B,), generator=g), parts=2)
        x0 = torch.cat([xf, xr])
        eps = u.local(torch.randn((2 * B, *x0.shape[1:]), generator=g), parts=2)
        x0, eps, t, labels = u.to_device(x0, eps, t, torch.cat([yf, yr]))
        x_t, eps = u.noisy(x0, t, eps)
        b = len(yf)
        per_sample = (u.predict(x_t, t, labels).float() - eps.float()).square().flatten(1).sum(1)
        forget_loss, replay_loss = per_sample[:b].mean(), per_sample[b:].mean()
        ewc = sum((self.fisher[n] * (p.float() - self.original[n].float()).square()).sum()
                  for n, p in u.trainable())
        loss = forget_loss + self.replay_weight * replay_loss + 0.5 * self.ewc_lambda * ewc
        return loss, dict(forget_loss=forget_loss.item(), retain_loss=replay_loss.item(), ewc=ewc.item())

    def _set_replay(self, replay: TensorDataset):
        self.replay, self._replay_batches = replay, Batches(replay, "replay")

    def state(self):
        out = {f"fisher.{k}": v for k, v in self.fisher.items()}
        out.update({"replay_images": self.replay.tensors[0], "replay_labels": self.replay.tensors[1]})
        return out

    def load_state(self, tensors, u):
        device = u.device()
        self.fisher = {k[len("fisher."):]: v.to(device) for k, v in tensors.items()
                       if k.startswith("fisher.")}
        self._set_replay(TensorDataset(tensors["replay_images"], tensors["replay_labels"]))


# ---------------------------------------------------------------------------------- gradient ascent
class GradientAscent(Method):
    """Gradient ascent on the forget data's denoising loss, with the retain data's denoising
    loss to keep the rest: loss = −ℓ(forget) + ℓ(retain). Unbounded below, so it eventually
    destroys the model; its forgetting point is what the comparison measures."""

    name = "ga"
    max_grad_norm = 1.0  # the published configs clip the gradient norm at 1

    def loss(self, u, retain, forget, batch_size):
        x_t, eps, t, conds = _denoising_batch(u, retain, forget, batch_size)
        pred = u.predict(x_t, t, conds)
        b = len(conds) // 2
        forget_loss = _mse(pred[:b], eps[:b])
        retain_loss = _mse(pred[b:], eps[b:])
        return retain_loss - forget_loss, dict(forget_loss=forget_loss.item(),
                                               retain_loss=retain_loss.item())


METHODS = {cls.name: cls for cls in (SafeMax, SalUn, SelectiveAmnesia, GradientAscent)}


def make_method(method) -> Method:
    """A method object from a name (``"safemax"``, ``"salun"``, ``"sa"``, ``"ga"``) or itself."""
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {sorted(METHODS)} "
                         "or pass a safemax.methods.Method")
    return METHODS[method]()
