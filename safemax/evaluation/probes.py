"""Erased or only avoided? Probes of a forgotten class (after arXiv 2505.17013, "When are concepts
erased from diffusion models?"), for class-conditional DDPM-style models with an evaluation
classifier (the embedded models' have a "not a ..." class 10).

A model can stop *generating* a class from pure noise while the class is still in its weights,
reachable by a nudge. Each probe gives the model such a nudge and counts how often the forgotten
class comes back (the share of results the classifier labels as it):

- ``trajectory``: start the reverse chain at step t from a *real image of the class*, noised
  (x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε), conditioned on the forgotten class — and, for reference, on the
  other classes. A model that has erased the class turns it into something else (noise) on the
  way down; one that only avoids it lets it through once the start already carries it.
- ``guided``: classifier-guided sampling towards the forgotten class (Dhariwal & Nichol's
  guidance in ε form, ε̂ − s·√(1−ᾱ_t)·∇ log p(class | x̂_0)), at several scales s. The guide is
  the evaluation classifier itself, so a high scale can also fool it: compare against the
  original model under the same probe, and look at the pictures.
- ``seeds``: many seeds of the forgotten class (the tail a short evaluation misses), with the
  95% Wilson upper bound of the share.

``probe(...)`` runs all three; ``safemax probe`` is its command line. ``ExactlyHalted`` is the
reference every rate should be read against: the model with the class replaced by SAFEMax's exact
fixed point — forgetting done perfectly — so a rate it shares is the probe's (or the classifier's)
floor, not the class coming back. Tables: docs/results/probes.md.
"""
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

from safemax.evaluation.stats import wilson, wilson_upper  # noqa: F401 (probes' API)
from safemax.models.families import family_of
from safemax.models.sampling import epsilon_part, make_sampler, sample
from safemax.models.schedule import is_flow
from safemax.op.reference import halting_target


def _check(unet, scheduler, classifier, forget: int):
    if is_flow(scheduler):
        raise ValueError("the erasure probes are written for DDPM-style (ε, v) models; a "
                         "rectified-flow model is not supported yet")
    if getattr(unet.config, "num_class_embeds", None) is None:
        raise ValueError("the erasure probes need a class-conditional model (num_class_embeds)")
    if not 0 <= forget < unet.config.num_class_embeds:
        raise ValueError(f"forget={forget} is not a class of this model (0..{unet.config.num_class_embeds - 1})")
    if getattr(classifier, "size", unet.config.sample_size) != unet.config.sample_size:
        raise ValueError(f"the classifier measures {classifier.size}×{classifier.size} images, the model "
                         f"makes {unet.config.sample_size}×{unet.config.sample_size}")


class ExactlyHalted(torch.nn.Module):
    """``unet`` with the ``forget`` classes replaced by SAFEMax's exact fixed point: for a row of
    a forgotten class the prediction is ε* = √(1−ᾱ_t)·x_t (the class *is* N(0, I), the reverse
    chain halts); every other row is ``unet``'s. The perfectly forgetting model, as a control for
    the probes: e.g. classifier guidance that makes *its* samples look like the class to the
    classifier measures the guide fooling the classifier, not a memory of the class.
    ε-prediction DDPM-style class-conditional models only."""

    def __init__(self, unet, scheduler, forget):
        super().__init__()
        prediction = getattr(scheduler.config, "prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(f"ExactlyHalted is written for ε-prediction models, this one predicts {prediction!r}")
        self.unet, self.config = unet, unet.config
        self.register_buffer("abar", scheduler.alphas_cumprod.detach().clone().float(), persistent=False)
        self.register_buffer("forget", torch.as_tensor(list(forget)), persistent=False)

    def forward(self, x, t, class_labels=None, **kwargs):
        out = self.unet(x, t, class_labels=class_labels, **kwargs).sample
        t = torch.as_tensor(t, device=x.device).long().expand(x.shape[0])
        halt = torch.isin(class_labels, self.forget.to(class_labels.device)).view(-1, 1, 1, 1)
        c = x.shape[1]
        eps = torch.where(halt, halting_target(self.abar.to(x.device)[t], x.to(out.dtype)), out[:, :c])
        return SimpleNamespace(sample=torch.cat([eps, out[:, c:]], 1))


@torch.no_grad()
def _labels_of(classifier, images: torch.Tensor) -> torch.Tensor:
    from safemax.evaluation.metrics import classify
    return classify(classifier, images).argmax(1)


@torch.no_grad()
def _denoise_from(unet, scheduler, x_start: torch.Tensor, t_start: int, labels: torch.Tensor,
                  num_inference_steps: int, batch_size: int = 256) -> torch.Tensor:
    """DDIM from ``x_start`` at step ``t_start`` down to 0 (the sampler's steps ≤ t_start)."""
    family = family_of(unet)
    param = next(unet.parameters())
    out = []
    for s in range(0, len(labels), batch_size):
        x = x_start[s:s + batch_size].to(param.device, param.dtype)
        y = labels[s:s + batch_size].to(param.device)
        sampler = make_sampler(scheduler, "ddim", num_inference_steps)
        for t in [t for t in sampler.timesteps if int(t) <= t_start]:
            tt = torch.full((len(y),), int(t), device=param.device, dtype=torch.long)
            eps = epsilon_part(family.call(unet, x, tt, y), x.shape[1])
            x = sampler.step(eps, t, x, eta=0.0).prev_sample
        out.append(x.float().cpu())
    return torch.cat(out)


def trajectory(unet, scheduler, classifier, forget: int, images: torch.Tensor,
               t_starts=(250, 500, 750), others=None, num_inference_steps: int = 50,
               seed: int = 0, progress: bool = False) -> list:
    """The noise-trajectory probe: for each ``t_start``, every real forget-class image in
    ``images`` noised to t and denoised conditioned on the forgotten class (and on each class in
    ``others``, the reference: how much of the class the noised start alone carries). Returns one
    row per (t, condition): ``dict(probe, t, condition, n, rate)``, rate = share labelled ``forget``."""
    _check(unet, scheduler, classifier, forget)
    abar = scheduler.alphas_cumprod.double()
    others = [c for c in (others if others is not None else range(10)) if c != forget]
    g = torch.Generator().manual_seed(seed)
    x0 = images.float()
    noise = torch.randn(x0.shape, generator=g)
    rows = []
    unet.eval()
    work = [(t, c) for t in t_starts for c in [forget, *others]]
    for t, c in tqdm(work, desc="trajectory probe", disable=not progress, leave=False):
        sampler = make_sampler(scheduler, "ddim", num_inference_steps)
        first = max(int(s) for s in sampler.timesteps if int(s) <= t)   # where DDIM can start
        a = abar[first]
        x_t = (a.sqrt() * x0 + (1 - a).sqrt() * noise).float()
        out = _denoise_from(unet, scheduler, x_t, first, torch.full((len(x0),), c), num_inference_steps)
        rate = float((_labels_of(classifier, out) == forget).float().mean())
        rows.append(dict(probe="trajectory", t=first, condition="forgotten" if c == forget else c,
                         n=len(x0), rate=rate))
    # the references, summarised: the mean over the other conditions at each t
    for t in sorted({r["t"] for r in rows}):
        ref = [r["rate"] for r in rows if r["t"] == t and r["condition"] != "forgotten"]
        if ref:
            rows.append(dict(probe="trajectory", t=t, condition="others (mean)", n=len(x0) * len(ref),
                             rate=sum(ref) / len(ref)))
    return rows


def guided(unet, scheduler, classifier, forget: int, n: int = 100, scales=(0.0, 1.0, 3.0, 10.0),
           num_inference_steps: int = 50, seed: int = 0, batch_size: int = 128, progress: bool = False,
           return_samples: bool = False):
    """Classifier-guided sampling towards ``forget`` at each guidance ``scale``: ``n`` samples
    conditioned on the forgotten class; one row per scale, ``dict(probe, scale, n, rate)``."""
    _check(unet, scheduler, classifier, forget)
    family = family_of(unet)
    param = next(unet.parameters())
    abar = scheduler.alphas_cumprod.to(param.device, torch.float32)
    shape = family.sample_shape()
    rows, pictures = [], {}
    unet.eval()
    for scale in scales:
        g = torch.Generator().manual_seed(seed)   # the same starting noise at every scale
        out = []
        for s in tqdm(range(0, n, batch_size), desc=f"guided probe, scale {scale:g}",
                      disable=not progress, leave=False):
            m = min(batch_size, n - s)
            x = torch.randn((m, *shape), generator=g).to(param.device, param.dtype)
            y = torch.full((m,), forget, device=param.device)
            sampler = make_sampler(scheduler, "ddim", num_inference_steps)
            for t in sampler.timesteps:
                tt = torch.full((m,), int(t), device=param.device, dtype=torch.long)
                a = abar[int(t)]
                with torch.enable_grad() if scale != 0 else torch.no_grad():
                    xg = x.detach().requires_grad_(scale != 0)
                    eps = epsilon_part(family.call(unet, xg, tt, y), shape[0])
                    if scale != 0:
                        x0_hat = (xg - (1 - a).sqrt() * eps) / a.sqrt()
                        logp = classifier(x0_hat.float()).log_softmax(1)[:, forget].sum()
                        grad, = torch.autograd.grad(logp, xg)
                        eps = eps - scale * (1 - a).sqrt() * grad
                x = sampler.step(eps.detach(), t, x, eta=0.0).prev_sample
            out.append(x.float().cpu())
        images = torch.cat(out)
        rate = float((_labels_of(classifier, images) == forget).float().mean())
        rows.append(dict(probe="guided", scale=scale, n=n, rate=rate))
        pictures[scale] = images
    return (rows, pictures) if return_samples else rows


def seeds(unet, scheduler, classifier, forget: int, n: int = 1000, num_inference_steps: int = 50,
          seed: int = 0, progress: bool = False) -> list:
    """Many seeds of the forgotten class: ``dict(probe, n, rate, upper95)`` — the share labelled
    as the class and the 95% Wilson upper bound of that share."""
    _check(unet, scheduler, classifier, forget)
    images = sample(unet, scheduler, torch.full((n,), forget), num_inference_steps=num_inference_steps,
                    seed=seed, progress=progress)
    k = int((_labels_of(classifier, images) == forget).sum())
    return [dict(probe="seeds", n=n, rate=k / n, upper95=wilson_upper(k, n))]


def probe(unet, scheduler, classifier, forget: int, images: torch.Tensor, n_guided: int = 100,
          n_seeds: int = 1000, t_starts=(250, 500, 750), scales=(0.0, 1.0, 3.0, 10.0),
          num_inference_steps: int = 50, seed: int = 0, progress: bool = False) -> list:
    """All three probes of class ``forget``; ``images`` are real images of it (the trajectory
    probe's starts). Returns the rows of every probe (see each probe)."""
    return (trajectory(unet, scheduler, classifier, forget, images, t_starts,
                       num_inference_steps=num_inference_steps, seed=seed, progress=progress)
            + guided(unet, scheduler, classifier, forget, n_guided, scales, num_inference_steps,
                     seed, progress=progress)
            + seeds(unet, scheduler, classifier, forget, n_seeds, num_inference_steps, seed, progress))


def table(results: dict) -> str:
    """A markdown table of ``{model name: probe rows}``: one line per probe setting, one column
    per model (the share of results labelled as the forgotten class). The trajectory probe shows
    the forgotten condition and the mean over the others (each other class is in the rows)."""
    names = list(results)
    first = results[names[0]]

    def key(r):
        return (r["probe"], r.get("t"), str(r.get("condition")), r.get("scale"))

    def setting(r):
        if r["probe"] == "trajectory":
            return f"trajectory from a noised real image, t = {r['t']}, conditioned on {r['condition']}"
        if r["probe"] == "guided":
            return f"classifier-guided towards the class, scale {r['scale']:g}"
        return "many seeds of the class (rate, 95% upper bound)"

    lines = ["| probe | n | " + " | ".join(names) + " |", "| --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for r in first:
        if isinstance(r.get("condition"), int):
            continue
        cells = []
        for name in names:
            match = next((x for x in results[name] if key(x) == key(r)), None)
            if match is None:
                cells.append("—")
            elif "upper95" in match:
                cells.append(f"{match['rate']:.3f} (≤ {match['upper95']:.3f})")
            else:
                cells.append(f"{match['rate']:.3f}")
        lines.append(f"| {setting(r)} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
