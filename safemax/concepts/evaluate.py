"""How well a concept was erased from a text-to-image pipeline, and what it cost the rest
(``safemax evaluate --pipeline … --concept …``; ``safemax erase`` runs it on its output).

Every prompt is sampled ``n`` times from fixed seeds (image ``k`` of a list from seed
``seed·100003 + k``), so the original and the erased pipeline start from the same noise, at each
guidance scale asked (classifier-free guidance 7.5, and 1 = none). On every pipeline:

- ``noise``: the concept's final latents' mean, std and kurtosis — SAFEMax's halted chain leaves
  its starting noise, N(0, I) in the denoiser's latent space (mean 0, std 1, kurtosis 3);
- ``clip_score`` where a CLIP is shipped beside the base pipeline (``<base>/clip``, as the zoo's
  is): 100 · cos(image, prompt) averaged over samples, of the concept's and of the kept prompts.

On a pipeline trained on ``safemax.data.captions`` (its concepts are Fashion-MNIST classes), by
the embedded Fashion-MNIST classifier on the samples' 28×28 frame, each share with its 95%
Wilson interval and its count:

- ``fa_erase`` / ``fa_paraphrase``: the share of the concept's samples of its erasing prompts /
  of its paraphrases (other synonyms, other templates) that are still its class;
- ``neighbours``: the share of the neighbour classes' samples (their erasing prompts) that are
  their class; ``others``: the same for every other kept class; ``per_class``: each kept
  class's own share (which class a collateral loss falls on);
- ``frechet``: the Fréchet distance, in classifier features, between the kept classes' samples
  and their real test images.

On request, the prompt attacks of ``safemax.concepts.attacks`` (soft embeddings, a discrete
prefix) on each concept, with their attack success rate at guidance 7.5.
"""
import os
import time

import torch

from safemax.data import captions
from safemax.data.fashion_mnist_files import FASHION_MNIST_CLASSES
from safemax.evaluation.metrics import gaussianity
from safemax.evaluation.stats import share_of

GUIDANCE = (7.5, 1.0)
SEED_STRIDE = 100003


@torch.no_grad()
def draw(pipe, prompts, n: int, seed: int = 0, guidance_scale: float = 7.5, num_inference_steps: int = 25,
         progress: bool = False, desc: str = "sampling", options: dict = None):
    """``(latents, images)`` of ``n`` samples of each prompt, prompt-major: final latents in the
    denoiser's space and decoded images in [-1, 1]; image ``k`` from seed ``seed·100003 + k``.
    ``options``: more of the pipeline's call arguments (``height``, ``max_sequence_length``, ...)."""
    from safemax.models.pipelines import decode_latents, latents_of
    latents = latents_of(pipe, prompts, n, seed * SEED_STRIDE, progress, desc, guidance_scale=guidance_scale,
                         num_inference_steps=num_inference_steps, **(options or {}))
    return latents, decode_latents(pipe, latents)


def _noise(latents: torch.Tensor) -> dict:
    g = gaussianity(latents)
    return dict(mean=round(g["gaussian_mean"], 4), std=round(g["gaussian_std"], 4),
                kurtosis=round(g["gaussian_kurtosis"], 3))


class ClipScore:
    """CLIP score with a ``transformers.CLIPModel`` and its tokenizer: 100 · cos(image, text)."""

    def __init__(self, clip, tokenizer):
        self.clip, self.tokenizer = clip.eval(), tokenizer

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list) -> float:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")["input_ids"]
        out = self.clip(input_ids=ids, pixel_values=images.float())
        cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
        return round(float(100 * cos.clamp_min(0).mean()), 3)


def clip_scorer(base: str, tokenizer):
    """The ``ClipScore`` of the CLIP shipped beside the base pipeline, or None."""
    from safemax.concepts.loading import base_folder
    folder = base_folder(base)
    if not folder or not os.path.isfile(os.path.join(folder, "clip", "config.json")):
        return None
    from safemax.zoo.sd_pipeline import load_clip
    return ClipScore(load_clip(folder), tokenizer)


class FashionJudge:
    """The embedded Fashion-MNIST classifier and the real test images the Fréchet distance is
    measured against, loaded once a process (``shared()``): the real side of a Fréchet distance
    is ~20 s of classifier features on one core."""

    _shared = None

    @classmethod
    def shared(cls):
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def __init__(self):
        from safemax.data import fashion_mnist
        from safemax.zoo import load_classifier
        self.classifier = load_classifier("fashion-mnist")
        self.real, self.labels = fashion_mnist("test").tensors
        self._references = {}

    def classes(self, images: torch.Tensor) -> torch.Tensor:
        from safemax.zoo.sd_quality import classes_of
        return classes_of(self.classifier, images)

    def frechet(self, images: torch.Tensor, kept: list) -> float:
        from safemax.evaluation.metrics import FrechetReference
        from safemax.zoo.sd_parts import fashion_frame
        key = tuple(sorted(kept))
        if key not in self._references:
            real = self.real[torch.isin(self.labels, torch.tensor(key))]
            self._references[key] = FrechetReference(self.classifier, real)
        return round(self._references[key].distance(fashion_frame(images).clamp(-1, 1)), 4)


def evaluate_concepts(pipe, concepts, keep, base: str = None, captioned: bool = False, n: int = 8,
                      seed: int = 0, guidance=GUIDANCE, num_inference_steps: int = 25, judge=None,
                      progress: bool = True, options: dict = None, attacks=(), attack_budget: dict = None,
                      concept_latents: dict = None) -> dict:
    """The measurements of the module's docstring for ``concepts`` (``prompts.Concept``) and
    ``keep`` (prompts), at each guidance scale: ``{"guidance_7.5": {...}, ...}`` plus the
    settings and seconds. ``options``: more of the pipeline's call arguments (``height``, ...).

    ``attacks``: kinds of ``safemax.concepts.attacks`` to run on each concept (``attack_budget``:
    their budget, ``attacks.BUDGET`` by default), on latents of the concept — real Fashion-MNIST
    images of its class on the captioned pipelines, else ``concept_latents[name]`` — each judged
    at the first guidance scale: ``{"attacks": {concept: {kind: {...record, "asr": share}}}}``
    (the attack success rate needs the classifier: captioned pipelines only)."""
    start = time.perf_counter()
    clip = clip_scorer(base, pipe.tokenizer) if base else None
    if captioned and judge is None:
        judge = FashionJudge.shared()
    erased = {c.class_id for c in concepts}
    out = dict(n_per_prompt=n, seed=seed, num_inference_steps=num_inference_steps, guidance=list(guidance))
    for g in guidance:
        at = {}
        common = dict(n=n, seed=seed, guidance_scale=g, num_inference_steps=num_inference_steps, progress=progress,
                      options=options)
        for c in concepts:
            lat, img = draw(pipe, c.erase_prompts, desc=f"{c.name} @ {g:g}", **common)
            row = dict(noise=_noise(lat))
            if clip:
                row["clip_score"] = clip(img, [p for p in c.erase_prompts for _ in range(n)])
            if captioned:
                row["fa_erase"] = share_of(judge.classes(img) == c.class_id)
                _, para = draw(pipe, c.paraphrases, desc=f"{c.name} paraphrases @ {g:g}", **common)
                row["fa_paraphrase"] = share_of(judge.classes(para) == c.class_id)
            at[c.name] = row
        kept = {}
        if captioned:
            neighbours = sorted({k for c in concepts for k in c.neighbours} - erased)
            others = [k for k in range(captions.NUM_CLASSES) if k not in erased and k not in neighbours]
            prompts = [(k, p) for k in neighbours + others for p in captions.prompts(k, "erase")]
            _, images = draw(pipe, [p for _, p in prompts], desc=f"kept classes @ {g:g}", **common)
            labels = torch.tensor([k for k, _ in prompts]).repeat_interleave(n)
            hits = judge.classes(images) == labels
            near = torch.isin(labels, torch.tensor(neighbours, dtype=torch.long))
            kept.update(neighbours=share_of(hits[near]), others=share_of(hits[~near]), neighbour_classes=neighbours,
                        per_class={FASHION_MNIST_CLASSES[k]: share_of(hits[labels == k]) for k in neighbours + others},
                        frechet=judge.frechet(images, neighbours + others))
            if clip:
                kept["clip_score"] = clip(images, [p for _, p in prompts for _ in range(n)])
        elif clip and [k for k in keep if k]:
            prompts = [k for k in keep if k]
            _, img = draw(pipe, prompts, desc=f"kept @ {g:g}", **common)
            kept["clip_score"] = clip(img, [p for p in prompts for _ in range(n)])
        at["kept"] = kept
        out[f"guidance_{g:g}"] = at
    if attacks:
        out["attacks"] = _attacked(pipe, concepts, attacks, dict(attack_budget or {}), concept_latents or {},
                                   captioned, judge, n, seed, guidance[0], num_inference_steps, progress, options)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _attacked(pipe, concepts, kinds, budget, concept_latents, captioned, judge, n, seed, g, steps, progress,
              options) -> dict:
    """Each attack on each concept: its record, and with the classifier its success rate."""
    from safemax.concepts.attacks import BUDGET, attack
    budget = dict(BUDGET, **budget)
    out = {}
    for c in concepts:
        latents = concept_latents.get(c.name)
        if latents is None and captioned:
            latents = real_latents(pipe, c.class_id, seed=seed)
        if latents is None:
            out[c.name] = dict(skipped="no latents of the concept to attack with (pass concept_latents)")
            continue
        out[c.name] = {}
        for kind in kinds:
            found = attack(pipe, c.erase_prompts, latents, kind=kind, seed=seed, **budget)
            row = dict(found.record(), budget=budget)
            if captioned:
                _, img = draw(found.pipe, found.prompts, n=n, seed=seed, guidance_scale=g, num_inference_steps=steps,
                              progress=progress, desc=f"{c.name}: {kind} attack", options=options)
                row["asr"] = share_of(judge.classes(img) == c.class_id)
            out[c.name][kind] = row
    return out


def real_latents(pipe, class_id: int, n: int = 64, seed: int = 0) -> torch.Tensor:
    """Latents of ``n`` real Fashion-MNIST training images of the class (padded to 32×32), as
    the pipeline's VAE encodes them: what the attacks fit their tokens to."""
    from safemax.data import fashion_mnist
    from safemax.models.pipelines import encode_images
    from safemax.zoo.sd_parts import IMAGE_SIZE
    images, labels = fashion_mnist("train", size=IMAGE_SIZE).tensors
    return encode_images(pipe, images[labels == class_id][:n], seed=seed)


__all__ = ["GUIDANCE", "SEED_STRIDE", "draw", "real_latents", "ClipScore", "clip_scorer", "FashionJudge", "evaluate_concepts"]
