"""``safemax evaluate``: forgetting and retained quality, measured by an embedded classifier."""
import json


def add_parser(sub):
    p = sub.add_parser(
        "evaluate", help="measure forgetting and retained quality (class models; --pipeline: concepts)",
        description="Class models (--model, --forget): sample the model and score the samples with an "
                    "embedded classifier (10 classes + 'not a digit' / 'not a garment'): forget accuracy, "
                    "P(forget), entropy, retain accuracy, Fréchet distance to real images, Gaussianity. "
                    "Text-to-image pipelines (--pipeline, --concept): the concept's samples' noise statistics "
                    "and CLIP score, and on the zoo's captioned pipelines forget accuracy on the erasing "
                    "prompts and on paraphrases, the neighbour and other classes' accuracy and the Fréchet "
                    "distance, at guidance 7.5 and 1 (safemax.concepts.evaluate). Prints JSON.")
    p.add_argument("--model", default="default",
                   help="an embedded model ('digits' = 'default', 'fashion-mnist') or a local folder")
    p.add_argument("--dataset", default=None, choices=["digits", "fashion-mnist"],
                   help="whose classifier and real images measure it (default: the embedded "
                        "model's own; for a folder, the one of its image size)")
    p.add_argument("--forget", type=int, nargs="+", help="class id(s) forgotten (class models)")
    concept = p.add_argument_group("text-to-image pipelines")
    concept.add_argument("--pipeline", default=None,
                         help="a zoo pipeline, a diffusers pipeline folder, or a safemax erase output folder")
    concept.add_argument("--concept", action="append", default=None, metavar="WORDS",
                         help="a concept to measure (repeat); default: an erase output's own concepts")
    concept.add_argument("--keep", action="append", default=None, metavar="PROMPT",
                         help="kept prompts (default: an erase output's, else as safemax erase chooses)")
    concept.add_argument("--exact", action="store_true", help="each --concept text alone, no templates")
    concept.add_argument("--n-per-prompt", type=int, default=8, help="samples per prompt (default 8)")
    concept.add_argument("--guidance", type=float, nargs="+", default=[7.5, 1.0],
                         help="classifier-free guidance scales (default 7.5 1)")
    concept.add_argument("--out", default=None, help="also write the JSON to this file")
    concept.add_argument("--attack", nargs="+", default=[], choices=["soft", "prefix"],
                         help="adversarial prompts against each concept (safemax.concepts.attacks), with their "
                              "success rate at the first --guidance")
    from safemax.cli.common import add_pipeline_options
    add_pipeline_options(concept)
    p.add_argument("--n-forget", type=int, default=100)
    p.add_argument("--n-per-class", type=int, default=30)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)


def command(args):
    if args.pipeline is not None:
        return _concepts(args)
    if args.concept:
        raise ValueError("--concept measures a text-to-image pipeline: give it with --pipeline")
    if not args.forget:
        raise ValueError("give --forget CLASS... (a class model) or --pipeline PATH --concept WORDS (a pipeline)")
    import torch

    from safemax.cli.loading import dataset_for, load_unet_and_scheduler
    from safemax.evaluation.metrics import evaluate
    from safemax.zoo import load_classifier, model_info

    unet, scheduler = load_unet_and_scheduler(args.model)
    name = args.dataset or dataset_for(args.model, unet)
    info = model_info(name)
    if unet.config.sample_size != info.image_size:
        raise ValueError(f"the {name} classifier measures {info.image_size}×"
                         f"{info.image_size} images; {args.model} makes {unet.config.sample_size}×"
                         f"{unet.config.sample_size}")
    bad = [c for c in args.forget if not 0 <= c <= 9]
    if bad:
        raise ValueError(f"--forget {bad}: the {name} classes are 0..9")
    real, labels = info.reference_images()
    result = evaluate(unet, scheduler, load_classifier(name), args.forget,
                      [c for c in range(10) if c not in args.forget],
                      real[~torch.isin(labels, torch.tensor(args.forget))],
                      n_forget=args.n_forget, n_per_class=args.n_per_class,
                      num_inference_steps=args.steps, seed=args.seed, progress=True)
    print(json.dumps(result, indent=2))


def _concepts(args):
    from safemax.concepts.erase import drawn_concept_latents
    from safemax.concepts.evaluate import evaluate_concepts
    from safemax.concepts.loading import is_captioned, load_erased
    from safemax.concepts.prompts import resolve
    from safemax.evaluation.report import write_json
    if args.forget:
        raise ValueError("--forget takes class ids of a class model; for a pipeline name concepts with --concept")
    if args.n_per_prompt < 1 or args.steps < 1:
        raise ValueError("--n-per-prompt and --steps must be at least 1")
    pipe, manifest = load_erased(args.pipeline)
    base = manifest["base_model"] if manifest else args.pipeline
    captioned = is_captioned(base)
    texts = args.concept or ([c["name"] for c in manifest["concepts"]] if manifest else None)
    if not texts:
        raise ValueError("--concept WORDS is needed: the pipeline is not a safemax erase output naming its own")
    exact = args.exact or bool(manifest and manifest.get("exact") and not args.concept)
    keep = args.keep if args.keep is not None else (manifest["keep"] if manifest else None)
    concepts, keep = resolve(texts, keep, pipe.tokenizer, captioned, exact)
    from safemax.cli.common import pipeline_options
    options = dict((manifest or {}).get("options") or {}, **pipeline_options(args))
    result = evaluate_concepts(pipe, concepts, keep, base, captioned, n=args.n_per_prompt, seed=args.seed,
                               guidance=tuple(args.guidance), num_inference_steps=args.steps, options=options,
                               attacks=tuple(args.attack), concept_latents=drawn_concept_latents(args.pipeline, concepts))
    result = dict(pipeline=args.pipeline, base_model=base, concepts=[c.record() for c in concepts], keep=keep,
                  **result)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))

