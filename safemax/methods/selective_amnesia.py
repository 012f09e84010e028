"""Selective Amnesia (Heng & Soh, NeurIPS 2023): EWC plus generative replay, the forget class
mapped to a surrogate distribution."""
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from safemax.data import Batches, balanced_labels
from safemax.methods.base import Method, denoising_batch
from safemax.models.sampling import sample
from safemax.settings import Settings, non_negative, setting, whole


@dataclass(frozen=True)
class SelectiveAmnesiaSettings(Settings):
    """Selective Amnesia's settings: λ and the replay weight are the published recipe's; the replay
    set and the Fisher's sample count are scaled down for the embedded models."""
    ewc_lambda: float = setting(10.0, "λ of the EWC penalty", check=non_negative)
    replay_weight: float = setting(1.0, "weight of the replayed kept-class samples", check=non_negative)
    n_replay: int = setting(500, "generated kept-class samples replayed", check=whole)
    n_fisher: int = setting(100, "generated samples the Fisher information is estimated on", check=whole)
    fisher_timesteps: int = setting(20, "timesteps per sample in the Fisher estimate", check=whole)
    sample_steps: int = setting(50, "DDIM steps of the generated samples", check=whole)


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
    unsharded_because = "its Fisher and EWC penalty read every whole weight by name"

    settings_class = SelectiveAmnesiaSettings

    def __init__(self, settings=None, **options):
        super().__init__(settings, **options)
        self.fisher = self.replay = self._replay_batches = None

    def check(self, denoiser, targets):
        if targets.concepts is not None:
            raise ValueError("Selective Amnesia replays samples of the kept classes, which a "
                             "text-conditional model does not enumerate: use method "
                             '"safemax", "salun" or "ga" for concepts')

    def bind(self, u):
        self.original = {n: p.detach().clone() for n, p in u.trainable()}  # θ*
        self.kept = u.targets.kept_classes
        self.surrogate = _Surrogate(u.targets.ids)

    def prepare(self, u, retain, forget, batch_size):
        d = u.denoiser
        labels = balanced_labels(self.kept, self.n_replay)
        replay = sample(d.unet, d.scheduler, labels, num_inference_steps=self.sample_steps,
                        seed=u.seed + 2).clamp(-1, 1)
        self._set_replay(TensorDataset(replay, labels))
        self.fisher = self._fisher(u)

    def _fisher(self, u):
        d = u.denoiser
        labels = balanced_labels(range(u.targets.num_classes), self.n_fisher)
        images = sample(d.unet, d.scheduler, labels, num_inference_steps=self.sample_steps,
                        seed=u.seed + 3).clamp(-1, 1)
        T, K = d.num_train_timesteps, self.fisher_timesteps
        grid = torch.linspace(0, T - 1, K).round().long()
        named = u.trainable()
        fisher = [torch.zeros_like(p, dtype=torch.float32) for _, p in named]
        for x, y in zip(images, labels):  # per-sample gradients: E[g²], not (E g)²
            eps = torch.randn((K, *x.shape), generator=u.generator)
            x0, eps, t, y = d.to_device(x.expand(K, *x.shape), eps, grid, y.expand(K))
            x_t, eps = d.noisy(x0, t, eps)
            nll = (d.predict(x_t, t, y).float() - eps.float()).square().flatten(1).sum(1).mean()
            for f, gr in zip(fisher, torch.autograd.grad(nll, [p for _, p in named])):
                f.add_(gr.float().square(), alpha=1.0 / len(labels))
        return {name: f for (name, _), f in zip(named, fisher)}

    def loss(self, u, retain, forget, batch_size):
        x_t, eps, t, labels, _ = batch = denoising_batch(u, self.surrogate, self._replay_batches,
                                                         batch_size, retain_first=True)
        per_sample = (u.denoiser.predict(x_t, t, labels).float() - eps.float()).square().flatten(1).sum(1)
        forget_loss = per_sample[batch.forget_rows].mean()
        replay_loss = per_sample[batch.retain_rows].mean()
        ewc = sum((self.fisher[n] * (p.float() - self.original[n].float()).square()).sum()
                  for n, p in u.trainable())
        loss = forget_loss + self.replay_weight * replay_loss + 0.5 * self.ewc_lambda * ewc
        return loss, dict(forget_loss=forget_loss.item(), retain_loss=replay_loss.item(), ewc=ewc.item())

    def _set_replay(self, replay: TensorDataset):
        self.replay, self._replay_batches = replay, Batches(replay, "replay")
        self.surrogate.shape = tuple(replay.tensors[0].shape[1:])

    def state(self):
        out = {f"fisher.{k}": v for k, v in self.fisher.items()}
        out.update({"replay_images": self.replay.tensors[0], "replay_labels": self.replay.tensors[1]})
        return out

    def load_state(self, tensors, u):
        device = u.denoiser.device()
        self.fisher = {k[len("fisher."):]: v.to(device) for k, v in tensors.items()
                       if k.startswith("fisher.")}
        self._set_replay(TensorDataset(tensors["replay_images"], tensors["replay_labels"]))


class _Surrogate:
    """SA's forget rows: uniform-noise images in [-1, 1] (the surrogate distribution), each
    labelled with a random forget class; drawn like a data set (labels first, then images)."""

    def __init__(self, ids):
        self.ids, self.shape = torch.tensor(ids), None  # shape: set with the replay set

    def draw(self, n: int, generator: torch.Generator, local=None):
        local = local or (lambda x: x)
        y = local(self.ids[torch.randint(0, len(self.ids), (n,), generator=generator)])
        x = local(torch.rand((n, *self.shape), generator=generator) * 2 - 1)
        return x, y
