"""Does the Stable Diffusion pipeline trained here draw what it is asked for? Its bar: at guidance
7.5, the decoded samples of every class's prompts — all its synonyms in all templates — are at
least 80% that class by the embedded Fashion-MNIST classifier, and the empty prompt draws garments.

    python -m safemax.zoo.sd_quality                      # the zoo's pipeline, 2 samples a prompt
    python -m safemax.zoo.sd_quality --pipeline DIR --n 4 --out quality.json --grid samples.png

Image ``k`` of a list of prompts starts from seed ``seed + k`` (``pipelines.latents_of``), so
two measurements with different ``seed``\\s share no noise.
"""
import argparse
import json

import torch

from safemax.data import captions
from safemax.data.fashion_mnist_files import FASHION_MNIST_CLASSES
from safemax.evaluation.stats import share_of

BAR = 0.80
GUIDANCE = 7.5


def classes_of(classifier, images: torch.Tensor) -> torch.Tensor:
    """The Fashion-MNIST classifier's class (10: not a garment) of each decoded 32×32 sample, read
    on its 28×28 Fashion-MNIST frame."""
    from safemax.evaluation.metrics import classify
    from safemax.zoo.sd_parts import fashion_frame
    return classify(classifier, fashion_frame(images)).argmax(1)


@torch.no_grad()
def sample_quality(pipe, n: int = 2, n_empty: int = 50, guidance_scale: float = GUIDANCE,
                   num_inference_steps: int = 25, seed: int = 0, progress: bool = True, grid: str = None) -> dict:
    """Per class, the share of its samples (``n`` of each of its ``captions.prompts(c, "all")``)
    the classifier calls that class, with its 95% Wilson interval; ``min_class``; ``meets``
    (every class ≥ ``BAR``); and of ``n_empty`` samples of the empty prompt the share called a
    garment (not "not a garment") and how they spread over the classes. ``grid``: also save a
    PNG there, a row per class (the first sample of every third of its prompts: each synonym, many
    templates), then a row of the empty prompt's."""
    from safemax.models.pipelines import decode_latents, latents_of
    from safemax.zoo import load_classifier
    from safemax.zoo.classifier import NOT_A_GARMENT

    classifier = load_classifier("fashion-mnist")
    call = dict(guidance_scale=guidance_scale, num_inference_steps=num_inference_steps)
    prompts = [(c, p) for c in range(captions.NUM_CLASSES) for p in captions.prompts(c, "all")]
    latents = latents_of(pipe, [p for _, p in prompts], n, seed, progress, "sampling every prompt", **call)
    labels = torch.tensor([c for c, _ in prompts]).repeat_interleave(n)
    images = decode_latents(pipe, latents)
    predicted = classes_of(classifier, images)
    per_class = {FASHION_MNIST_CLASSES[c]: share_of(predicted[labels == c] == c) for c in range(captions.NUM_CLASSES)}
    empty = decode_latents(pipe, latents_of(pipe, [captions.EMPTY], n_empty, seed + len(labels), progress,
                                            "the empty prompt", **call))
    empty_pred = classes_of(classifier, empty)
    if grid:
        _save_grid(grid, images, labels, n, empty)
    worst = min(per_class.items(), key=lambda kv: kv[1]["value"])
    return dict(
        guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, n_per_prompt=n, seed=seed, bar=BAR,
        per_class=per_class, overall=share_of(predicted == labels), min_class=dict(name=worst[0], **worst[1]),
        meets=all(v["value"] >= BAR for v in per_class.values()),
        empty_prompt=dict(garments=share_of(empty_pred != NOT_A_GARMENT),
                          classes={FASHION_MNIST_CLASSES[c]: int((empty_pred == c).sum())
                                   for c in range(captions.NUM_CLASSES)}))


def usual_call(folder: str) -> dict:
    """The guidance scale and steps a pipeline trained here is judged at: those its
    ``training.json`` records (SD3's 7.0 and 28), else Stable Diffusion's 7.5 and 25."""
    import os
    call = dict(guidance_scale=GUIDANCE, num_inference_steps=25)
    record = os.path.join(str(folder), "training.json")
    if os.path.isfile(record):
        with open(record) as f:
            made = json.load(f)
        call.update({k: made[k] for k in call if k in made})
    return call


def _save_grid(path, images, labels, n, empty, per_row: int = 9):
    from safemax.evaluation.report import save_grid
    rows = []
    for c in range(captions.NUM_CLASSES):
        first = images[labels == c][::n]                     # the first sample of each of the class's prompts
        step = max(1, len(first) // per_row)
        rows.append(first[::step][:per_row])
    rows.append(empty[:per_row])
    rows = [torch.cat([r, torch.ones(per_row - len(r), *r.shape[1:])]) for r in rows]   # short rows padded white
    save_grid(torch.cat(rows), len(rows), path)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m safemax.zoo.sd_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default="fashion-mnist-sd", help="the zoo's name or a pipeline folder")
    p.add_argument("--n", type=int, default=2, help="samples of each of the 270 class prompts (default 2)")
    p.add_argument("--n-empty", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=None,
                   help=f"default: the pipeline's usual (its training.json's; SD3's 7.0), else {GUIDANCE}")
    p.add_argument("--steps", type=int, default=None, help="default: the pipeline's usual (SD3's 28), else 25")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--grid", default=None, help="also save a picture of samples here (a row per class, then the empty prompt)")
    args = p.parse_args(argv)
    from safemax import zoo
    if args.pipeline in zoo.PIPELINES:
        pipe = zoo.load_pipeline(args.pipeline)
    else:
        pipe = zoo.open_pipeline(args.pipeline)
        pipe.set_progress_bar_config(disable=True)
    usual = usual_call(zoo.PIPELINES.get(args.pipeline, args.pipeline))
    guidance = usual["guidance_scale"] if args.guidance_scale is None else args.guidance_scale
    steps = usual["num_inference_steps"] if args.steps is None else args.steps
    result = sample_quality(pipe, args.n, args.n_empty, guidance, steps, args.seed, grid=args.grid)
    if args.out:
        from safemax.evaluation.report import write_json
        write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    from safemax.errors import one_line_errors
    sys.exit(one_line_errors(main, "python -m safemax.zoo.sd_quality"))


__all__ = ["BAR", "GUIDANCE", "classes_of", "sample_quality", "usual_call", "main"]
