"""SalUn (Fan et al., ICLR 2024): a saliency mask over the weights, random labelling of the forget rows."""
import math
from dataclasses import dataclass

import torch

from safemax.data import rows
from safemax.methods.base import Method, denoising_batch, mse
from safemax.settings import Settings, non_negative, setting, share


@dataclass(frozen=True)
class SalUnSettings(Settings):
    """SalUn's settings; the defaults are the published recipe's."""
    mask_fraction: float = setting(0.5, "share of the weights, by forget-gradient magnitude, that move", check=share)
    retain_weight: float = setting(1e-3, "weight of the retain rows' denoising loss", check=non_negative)


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
    unsharded_because = "its saliency mask ranks every weight's whole gradient by name"

    settings_class = SalUnSettings

    def __init__(self, settings=None, **options):
        super().__init__(settings, **options)
        self.mask = None  # {parameter name: bool tensor}

    def bind(self, u):
        kept = u.targets.kept_classes
        self.other_classes = torch.tensor(kept) if kept else None  # None: text concepts

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
            t = torch.randint(0, u.denoiser.num_train_timesteps, (len(y),), generator=g)
            eps = torch.randn(x0.shape, generator=g)
            x0, eps, t, y = u.denoiser.to_device(x0, eps, t, y)
            x_t, eps = u.denoiser.noisy(x0, t, eps)
            (mse(u.denoiser.predict(x_t, t, y), eps) * len(y) / n).backward()
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
        x_t, eps, t, cond, _ = batch = denoising_batch(u, forget, retain, batch_size)
        f, r = batch.forget_rows, batch.retain_rows
        if self.other_classes is not None:
            pick = u.local(torch.randint(0, len(self.other_classes), (batch_size,), generator=u.generator))
            other, = u.denoiser.to_device(self.other_classes[pick])
        else:  # text concepts: the retain rows' prompts, a random draw of other concepts
            other = rows.take(cond, r)
        with torch.no_grad():  # the random label's prediction is the target, not trained
            target = u.denoiser.predict(x_t[f], t[f], other)
        pred = u.denoiser.predict(x_t, t, cond)
        forget_loss = mse(pred[f], target)
        retain_loss = mse(pred[r], eps[r])
        return forget_loss + self.retain_weight * retain_loss, \
            dict(forget_loss=forget_loss.item(), retain_loss=retain_loss.item())

    def edit_grads(self, u):
        for name, p in u.trainable():
            if p.grad is not None:
                p.grad.mul_(self.mask[name])

    def state(self):
        return {f"mask.{k}": v.to(torch.uint8) for k, v in self.mask.items()}

    def load_state(self, tensors, u):
        device = u.denoiser.device()
        self.mask = {k[len("mask."):]: v.bool().to(device) for k, v in tensors.items()
                     if k.startswith("mask.")}
