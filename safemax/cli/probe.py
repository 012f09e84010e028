"""``safemax probe``: is a forgotten class erased, or only avoided?"""
import os


def add_parser(sub):
    p = sub.add_parser(
        "probe", help="is a forgotten class erased, or only avoided? (erasure probes)",
        description="Run the erasure probes (safemax.evaluation.probes) on one or more class-conditional "
                    "models: denoising from noised real images of the class, classifier-guided "
                    "sampling towards it, many seeds. Reports how often the class comes back, one "
                    "column per model; writes probes.json, probes.md and guided.png to --out.")
    p.add_argument("--model", nargs="+", required=True,
                   help="models to probe: embedded names ('digits', 'fashion-mnist': the originals) "
                        "or local folders (e.g. the unlearned model and its original, side by side)")
    p.add_argument("--forget", type=int, required=True, help="the forgotten class id")
    p.add_argument("--dataset", default=None, choices=["digits", "fashion-mnist"],
                   help="whose classifier and real images (default: inferred from the first model)")
    p.add_argument("--images", type=int, default=100, help="real images of the class to start from (default 100)")
    p.add_argument("--t", type=int, nargs="+", default=[250, 500, 750], help="trajectory starts (default 250 500 750)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0],
                   help="classifier-guidance scales (default 0 1 3 10)")
    p.add_argument("--n-guided", type=int, default=100, help="guided samples per scale (default 100)")
    p.add_argument("--n-seeds", type=int, default=1000, help="seeds of the class (default 1000)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--control", action="store_true",
                   help="add the exactly halted model (the first --model with the class replaced by "
                        "SAFEMax's exact fixed point: forgetting done perfectly) as the last column: a "
                        "rate it shares is the probe's floor, not the class coming back")
    p.add_argument("--out", default="safemax-probe", help="output folder (default safemax-probe)")


def command(args):
    import torch

    from safemax.cli.loading import dataset_for, load_unet_and_scheduler
    from safemax.evaluation.probes import (
        ExactlyHalted,
        guided,
        seeds,
        table,
        trajectory,
    )
    from safemax.evaluation.report import save_grid, write_json
    from safemax.zoo import load_classifier, model_info

    models = [load_unet_and_scheduler(spec) for spec in args.model]
    specs = list(args.model)
    if args.control:
        unet, scheduler = models[0]
        models.append((ExactlyHalted(unet, scheduler, [args.forget]), scheduler))
        specs.append("exactly halted (control)")
    name = args.dataset or dataset_for(args.model[0], models[0][0])
    info = model_info(name)
    if not 0 <= args.forget <= 9:
        raise ValueError(f"--forget {args.forget}: the {name} classes are 0..9")
    classifier = load_classifier(name)
    data, labels = info.dataset("train").tensors
    pick = torch.randperm(int((labels == args.forget).sum()), generator=torch.Generator().manual_seed(args.seed))
    images = data[labels == args.forget][pick[:args.images]]
    os.makedirs(args.out, exist_ok=True)
    results, pictures = {}, []
    for spec, (unet, scheduler) in zip(specs, models):
        print(f"probing {spec} (class {info.class_name(args.forget)} of {name})")
        rows = trajectory(unet, scheduler, classifier, args.forget, images, args.t,
                          num_inference_steps=args.steps, seed=args.seed, progress=True)
        g_rows, g_images = guided(unet, scheduler, classifier, args.forget, args.n_guided, args.scales,
                                  args.steps, args.seed, progress=True, return_samples=True)
        rows += g_rows + seeds(unet, scheduler, classifier, args.forget, args.n_seeds, args.steps,
                               args.seed, progress=True)
        results[spec] = rows
        pictures += [g_images[s][:10] for s in args.scales]
    write_json(os.path.join(args.out, "probes.json"),
               dict(dataset=name, forget=args.forget, models=specs, results=results))
    text = table(results)
    with open(os.path.join(args.out, "probes.md"), "w") as f:
        f.write(f"# Erasure probes: class {info.class_name(args.forget)} of {name}\n\n"
                "Share of results the classifier labels as the forgotten class; one column per "
                "model.\n\n" + text + "\n\n![guided samples](guided.png)\n\nguided.png: one row per "
                "model and guidance scale (" + ", ".join(f"{s:g}" for s in args.scales) + "), in the "
                "column order above.\n")
    save_grid(torch.cat(pictures), rows=len(pictures), path=os.path.join(args.out, "guided.png"))
    print(text)
    print(f"results in {args.out}/ (probes.json, probes.md, guided.png)")
