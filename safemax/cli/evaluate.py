"""``safemax evaluate``: forgetting and retained quality, measured by an embedded classifier."""
import json


def add_parser(sub):
    p = sub.add_parser(
        "evaluate", help="measure forgetting and retained quality (digits / Fashion-MNIST models)",
        description="Sample the model and score the samples with an embedded classifier (10 "
                    "classes + 'not a digit' / 'not a garment'): forget accuracy, P(forget), "
                    "entropy, retain accuracy, Fréchet distance to real images, Gaussianity. "
                    "Prints JSON.")
    p.add_argument("--model", default="default",
                   help="an embedded model ('digits' = 'default', 'fashion-mnist') or a local folder")
    p.add_argument("--dataset", default=None, choices=["digits", "fashion-mnist"],
                   help="whose classifier and real images measure it (default: the embedded "
                        "model's own; for a folder, the one of its image size)")
    p.add_argument("--forget", type=int, nargs="+", required=True)
    p.add_argument("--n-forget", type=int, default=100)
    p.add_argument("--n-per-class", type=int, default=30)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)


def command(args):
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
