"""The ``safemax`` command line (also ``python -m safemax``)."""
import argparse
import json
import os
import sys

EXAMPLES = """examples:
  safemax demo                                  forget digit 3 of the embedded model, show it
  safemax demo --forget 7 --steps 50 --out d7   another digit, fewer steps
  safemax demo --dataset fashion-mnist --forget 0 --out tshirt   forget T-shirts (needs the data)
  safemax unlearn --forget 3 --out unet-no3     unlearn the embedded model, save diffusers format
  safemax unlearn --model ./my-ddpm --data ./images --forget 2 --out ./my-ddpm-no2
  safemax unlearn --forget 3 --lora-rank 4 --out unet-no3-lora   train a LoRA adapter only
  safemax unlearn --forget 3 --train class-embedding --steps 40 --out unet-no3-rows   digit 3's row only
  accelerate launch -m safemax unlearn --forget 3 --out unet-no3   data-parallel (DDP)
  safemax sample --model unet-no3 --label 3 --out threes.png
  safemax evaluate --model unet-no3 --forget 3
  safemax sample --model fashion-mnist --label 0 1 9 --out garments.png
  safemax compare                               SAFEMax vs SalUn, Selective Amnesia, gradient ascent
  safemax compare --quick --out /tmp/c          a smoke run (seconds), not a result
  safemax probe --model digits unet-no3 --forget 3   erased or only avoided? (erasure probes)
  safemax selfcheck                             kernels vs reference, timed
"""


def _add_demo(sub):
    from .demo import DEFAULT_EARLY_FRACTION, DEFAULT_LR
    p = sub.add_parser(
        "demo", help="forget a class of an embedded model and show before/after",
        description="Load an embedded DDPM (the digits, or Fashion-MNIST with --dataset "
                    "fashion-mnist), measure it, unlearn one class with SAFEMax, measure again, and "
                    "write before/after sample grids (before.png, after.png), the accuracy curve "
                    "(curve.png), report.md, report.json and the unlearned UNet (unet/) to --out. "
                    "About 2-3 minutes (digits) on 2 CPU cores.")
    _add_dataset(p)
    p.add_argument("--forget", type=int, default=3, help="class id to forget (default 3)")
    p.add_argument("--steps", type=int, default=None,
                   help="unlearning steps (default: 100 on the digits, 200 on fashion-mnist)")
    p.add_argument("--out", default="safemax-demo", help="output folder (default safemax-demo)")
    p.add_argument("--batch-size", type=int, default=64, help="forget and retain rows per step (each)")
    p.add_argument("--early-fraction", type=float, default=DEFAULT_EARLY_FRACTION,
                   help=f"share of the noisiest steps trained to forget (default {DEFAULT_EARLY_FRACTION})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate (default: {DEFAULT_LR:g} on the digits, 1e-4 on fashion-mnist)")
    p.add_argument("--gaussian-fraction", type=float, default=None,
                   help="share of the forget rows built from x0 ~ N(0, I), the states a halted chain "
                        "visits: exact halting (default: the model's: 0.5 on fashion-mnist, 0 on the digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="tiny measurement (few samples, few sampling steps): a smoke run, not a result")


def _add_dataset(p):
    from .zoo import MODELS
    p.add_argument("--dataset", "--model", dest="dataset", choices=list(MODELS), default="digits",
                   help="which embedded model and data set (default digits; fashion-mnist reads "
                        "Fashion-MNIST's files, see safemax.fashion_mnist)")


def _add_unlearn(sub):
    from .demo import DEFAULT_EARLY_FRACTION, DEFAULT_LR
    p = sub.add_parser(
        "unlearn", help="unlearn classes of a diffusers UNet and save it",
        description="SAFEMax on a class-conditional diffusers UNet: the forgotten classes will "
                    "generate Gaussian noise. Saves the result in diffusers format (plus "
                    "safemax.json) to --out. Checkpoints every --checkpoint-every steps; Ctrl-C "
                    "saves one; --resume continues.")
    p.add_argument("--model", default="default",
                   help="an embedded model ('digits' = 'default', 'fashion-mnist') or a local "
                        "diffusers UNet/pipeline folder")
    p.add_argument("--data", default=None,
                   help="'digits' (scikit-learn's), 'fashion-mnist' or an image folder laid out as "
                        "DIR/<class id>/*.png (default: the embedded model's own data; digits for a folder)")
    p.add_argument("--forget", type=int, nargs="+", required=True, help="class id(s) to forget")
    p.add_argument("--data-free", action="store_true",
                   help="do not use forget-class images: generate them with the original model")
    p.add_argument("--steps", type=int, default=None,
                   help="steps (at most, with --stop-when; default: the demo's for an embedded model — 100 "
                        "on the digits, 200 on fashion-mnist —, else 100)")
    p.add_argument("--stop-when", default=None, metavar="RULE",
                   help="stop early once forgetting is done, by a label-free rule read from the "
                        "training itself: 'nats' or 'nats:RATIO:WINDOW' (SAFEMax only; see "
                        "safemax.stopping)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--early-fraction", type=float, default=None,
                   help=f"SAFEMax: train forgetting on the noisiest fraction of steps (default {DEFAULT_EARLY_FRACTION})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate (default: for SAFEMax the demo's for an embedded model — {DEFAULT_LR:g} "
                        "on the digits, 1e-4 on fashion-mnist —, else 5e-4; 1e-4 for the baselines)")
    p.add_argument("--method", default="safemax", choices=["safemax", "safemax-robust", "salun", "sa", "ga"],
                   help="safemax (default), safemax-robust (experimental: simulates the inversion attacker "
                        "in each step; holds against it as a retrained model does, at 4-6 points of retain "
                        "accuracy: docs/results/robust.md) or a baseline: salun, sa (Selective Amnesia), ga (gradient "
                        "ascent); the SAFEMax options do not apply to baselines")
    p.add_argument("--max-snr", type=float, default=None,
                   help="window by noise level instead: train forgetting where SNR = ᾱ/(1−ᾱ) <= this")
    p.add_argument("--forget-weight", type=float, default=None, help="SAFEMax: weight of the forget rows (default 1)")
    p.add_argument("--gaussian-fraction", type=float, default=None,
                   help="SAFEMax: share of the forget rows built from x0 ~ N(0, I), the states a halted "
                        "chain visits, for exact halting (default: the embedded model's demo setting, else 0); "
                        "1 with --data-free needs neither forget images nor sampling")
    p.add_argument("--kept-contrast", type=float, default=None, metavar="LAMBDA",
                   help="SAFEMax: against the retain dip — the kept classes' accuracy falls in the first "
                        "steps and their recovery sets the time to forget — hold them near the original "
                        "with a contrast anchored at weight LAMBDA > 1 (4: on the ten digits 0.6x the steps "
                        "to the held bar at 1.35x the step's cost, on Fashion-MNIST's sneaker 0.2x; docs: "
                        "results/retain-dip). Default off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for the unlearned UNet")
    p.add_argument("--checkpoint-dir", help="folder for checkpoints (default: OUT/checkpoint)")
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default=None,
                   help="autocast the forward passes through Accelerate (fp16: GPU only)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory, more time")
    p.add_argument("--lora-rank", type=int, default=None, metavar="R",
                   help="train a LoRA adapter of rank R on the attention projections instead of "
                        "the whole model (needs peft); --out then holds the merged model plus "
                        "the adapter alone (adapter_model.safetensors)")
    p.add_argument("--train", choices=["all", "class-embedding"], default="all",
                   help="class-embedding: train only the forgotten classes' class-embedding rows "
                        "(default lr 0.3): the kept classes stay bit-for-bit the original, but the "
                        "forgetting is shallower (docs: results/class-embedding)")


def _add_sample(sub):
    p = sub.add_parser("sample", help="draw class-conditional samples into a PNG grid",
                       description="DDIM samples of one or more classes; one row per class.")
    p.add_argument("--model", default="default",
                   help="an embedded model ('digits' = 'default', 'fashion-mnist') or a local folder")
    p.add_argument("--label", type=int, nargs="+", required=True, help="class id(s), one row each")
    p.add_argument("--n", type=int, default=10, help="samples per class (default 10)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png")


def _add_evaluate(sub):
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


def _add_compare(sub):
    from .attacks import DEFAULT_ATTACKS, PRESETS
    from .compare import ALL_METHODS
    p = sub.add_parser(
        "compare", help="SAFEMax vs SalUn, Selective Amnesia and gradient ascent, timed",
        description="From an embedded model (--model digits or fashion-mnist), forget one class with each method (same "
                    "batch, Adam, step budget), measure every --eval-every steps, find the time "
                    "to forget (FA <= 1%% with retain accuracy within 2 points; preparation "
                    "included), run a relearning attack on each result, and write results.json, "
                    "results.md, curves.png and samples.png to --out. The defaults take about "
                    "40 minutes on 2 CPU cores; finished methods are kept, --resume skips them and continues "
                    "the one under way from its last measurement.")
    _add_dataset(p)
    p.add_argument("--forget", type=int, default=3, help="class id to forget (default 3)")
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), metavar="METHOD",
                   help=f"methods to run, of {', '.join(ALL_METHODS)} (the default) and safemax-robust; options after "
                        "a colon, e.g. salun:retain_weight=1,mask_fraction=0.3 or "
                        "safemax:early_fraction=0.8; lr= sets that method's learning rate (tuned settings: "
                        "salun:lr=5e-4,retain_weight=1); safemax runs with the model's demo settings (fashion-mnist: "
                        "gaussian_fraction=0.5) unless given")
    p.add_argument("--steps", type=int, default=500, help="step budget of every method (default 500)")
    p.add_argument("--eval-every", type=int, default=25,
                   help="measure every N steps (5x denser over the first 2N; default 25)")
    p.add_argument("--batch-size", type=int, default=64, help="forget and retain rows per step (each)")
    p.add_argument("--lr", type=float, default=None,
                   help="one Adam learning rate for all (default: SAFEMax the demo's for the model — "
                        "5e-4 on the digits, 1e-4 on fashion-mnist —, the baselines 1e-4)")
    p.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS), metavar="ATTACK",
                   help=f"relearning attacks run on every result, of the presets {', '.join(PRESETS)} "
                        f"(default: {' '.join(DEFAULT_ATTACKS)}); options after a colon, e.g. strong:steps=100 "
                        "or lora:rank=4, or a new one: mine:lr=1e-3,steps=300,images=40,train=all|lora|class-embedding")
    p.add_argument("--attack-steps", type=int, default=50,
                   help="steps of the attacks that fix none (default 50; long: 200, inversion: 100)")
    p.add_argument("--attack-images", type=int, default=10,
                   help="forget images of the attacks that fix none (default 10; long: 50)")
    p.add_argument("--no-attack", action="store_true", help="skip the relearning attacks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="safemax-compare", help="output folder (default safemax-compare)")
    p.add_argument("--resume", action="store_true", help="reuse methods already finished in --out; continue an interrupted one from its "
                   "last measurement")
    p.add_argument("--race", action="store_true",
                   help="for a sweep of settings ranked by the fewest steps to the held bar: stop a "
                        "method at its first measurement that fails the bar at or after the step from "
                        "which an earlier finished method holds it (it can no longer hold it sooner); "
                        "every step counts alike (benchmarks/tune_baselines.py also weighs settings "
                        "whose steps cost more)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="tiny measurements and preparation: a smoke run of the whole pipeline, not a result")


def _add_probe(sub):
    p = sub.add_parser(
        "probe", help="is a forgotten class erased, or only avoided? (erasure probes)",
        description="Run the erasure probes (safemax.probes) on one or more class-conditional "
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


def _probe(args):
    import os

    import torch

    from .loading import dataset_for, load_unet_and_scheduler
    from .probes import ExactlyHalted, guided, seeds, table, trajectory
    from .report import save_grid, write_json
    from .zoo import load_classifier, model_info

    models = [load_unet_and_scheduler(spec) for spec in args.model]
    specs = list(args.model)
    if args.control:
        unet, scheduler = models[0]
        models.append((ExactlyHalted(unet, scheduler, [args.forget]), scheduler))
        specs.append("exactly halted (control)")
    name = args.dataset or dataset_for(args.model[0], models[0][0])
    info = model_info(name)
    if not 0 <= args.forget <= 9:
        raise SystemExit(f"safemax probe: --forget {args.forget}: the {name} classes are 0..9")
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


def _cuda():
    import torch
    return torch.cuda.is_available()


def _unlearn(args):
    import os

    from .data import ImageFolder, digits_dataset, fashion_mnist, split_by_class
    from .loading import embedded_name, load_unet_and_scheduler
    from .unlearner import Unlearner

    unet, scheduler = load_unet_and_scheduler(args.model, args.device)
    data_name = args.data or embedded_name(args.model) or "digits"
    if data_name == "digits":
        data = digits_dataset(size=unet.config.sample_size)
    elif data_name == "fashion-mnist":
        data = fashion_mnist("train", size=unet.config.sample_size)
    else:
        data = ImageFolder(args.data, unet.config.sample_size, unet.config.in_channels)
    forget_data, retain_data = split_by_class(data, args.forget)
    from .demo import DEFAULTS, method_settings
    # an embedded model's demo settings (the learning rate and steps are a per-model choice)
    model = embedded_name(args.model)
    steps = DEFAULTS.get(model or "digits", DEFAULTS["digits"])["steps"] if args.steps is None else args.steps
    given = {} if args.gaussian_fraction is None else dict(gaussian_fraction=args.gaussian_fraction)
    lr, given = method_settings(model, args.method, given, args.lr)
    gaussian = given.get("gaussian_fraction")
    if args.train != "all":   # rows alone: the Unlearner's own default lr for them
        lr = args.lr
    # SAFEMax's settings, where given: a baseline refuses them (they are not its settings)
    settings = {k: v for k, v in (("early_fraction", args.early_fraction), ("max_snr", args.max_snr),
                                  ("forget_weight", args.forget_weight), ("gaussian_fraction", gaussian),
                                  ("kept_contrast", args.kept_contrast))
                if v is not None}
    u = Unlearner(unet, scheduler, forget=args.forget, lr=lr, seed=args.seed, method=args.method,
                  mixed_precision=args.mixed_precision,
                  gradient_checkpointing=args.gradient_checkpointing, lora_rank=args.lora_rank,
                  train=args.train, **settings)
    ckpt = args.checkpoint_dir or os.path.join(args.out, "checkpoint")
    u.fit(retain_data, None if args.data_free else forget_data, steps=steps,
          batch_size=args.batch_size, checkpoint_dir=ckpt, checkpoint_every=args.checkpoint_every,
          resume=args.resume, stop_when=args.stop_when)
    u.save_pretrained(args.out)
    if u.is_main_process:
        print(f"unlearned UNet saved to {args.out} (diffusers format; safemax.json says what was done)")


def _sample(args):
    from .data import balanced_labels
    from .loading import load_unet_and_scheduler
    from .report import save_grid
    from .sampling import sample

    unet, scheduler = load_unet_and_scheduler(args.model, "cuda" if _cuda() else "cpu")
    labels = balanced_labels(args.label, args.n * len(args.label))
    images = sample(unet, scheduler, labels, num_inference_steps=args.steps, seed=args.seed, progress=True)
    save_grid(images, rows=len(args.label), path=args.out)
    print(f"{len(images)} samples written to {args.out}")


def _evaluate(args):
    import torch

    from .loading import dataset_for, load_unet_and_scheduler
    from .metrics import evaluate
    from .zoo import load_classifier, model_info

    unet, scheduler = load_unet_and_scheduler(args.model)
    name = args.dataset or dataset_for(args.model, unet)
    info = model_info(name)
    if unet.config.sample_size != info.image_size:
        raise SystemExit(f"safemax evaluate: the {name} classifier measures {info.image_size}×"
                         f"{info.image_size} images; {args.model} makes {unet.config.sample_size}×"
                         f"{unet.config.sample_size}")
    bad = [c for c in args.forget if not 0 <= c <= 9]
    if bad:
        raise SystemExit(f"safemax evaluate: --forget {bad}: the {name} classes are 0..9")
    real, labels = info.reference_images()
    result = evaluate(unet, scheduler, load_classifier(name), args.forget,
                      [c for c in range(10) if c not in args.forget],
                      real[~torch.isin(labels, torch.tensor(args.forget))],
                      n_forget=args.n_forget, n_per_class=args.n_per_class,
                      num_inference_steps=args.steps, seed=args.seed, progress=True)
    print(json.dumps(result, indent=2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="safemax", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SAFEMax machine unlearning for diffusion models: a forgotten class "
                    "generates Gaussian noise.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_unlearn(sub)
    _add_sample(sub)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_probe(sub)
    check = sub.add_parser(
        "selfcheck", help="check the compiled kernels against the reference and time them",
        description="Run the fused op and the pure-PyTorch reference on one random batch per "
                    "device (CPU, and CUDA when built and present), compare values and "
                    "gradients, and time forward+backward. Exits 1 on a mismatch.")
    check.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    check.add_argument("--reps", type=int, default=20, help="timed repetitions (default 20)")
    args = parser.parse_args(argv)

    if args.command == "selfcheck":
        from .selfcheck import run
        return 0 if run(batch=args.batch, reps=args.reps) else 1
    if args.command == "demo":
        from .demo import run
        quick = dict(eval_every=0, n_forget=8, n_per_class=2, num_inference_steps=5) if args.quick else {}
        run(forget=args.forget, steps=args.steps, out=args.out, batch_size=args.batch_size,
            early_fraction=args.early_fraction, lr=args.lr, seed=args.seed, dataset=args.dataset,
            gaussian_fraction=args.gaussian_fraction, **quick)
        return 0
    if args.command == "compare":
        from .compare import run
        run(forget=args.forget, methods=args.methods, steps=args.steps, eval_every=args.eval_every,
            batch_size=args.batch_size, lr=args.lr, attack=not args.no_attack,
            attacks=args.attacks, attack_steps=args.attack_steps, attack_images=args.attack_images, seed=args.seed,
            out=args.out, resume=args.resume, quick=args.quick, model=args.dataset, device=args.device,
            race=args.race)
        return 0
    {"unlearn": _unlearn, "sample": _sample, "evaluate": _evaluate, "probe": _probe}[args.command](args)
    return 0


def one_line_errors(command, prog: str, argv=None) -> int:
    """Run ``command(argv)`` for a command line: a mistake in what it was given — a bad option
    value, class id, spec, or a missing file or data set (``ValueError``, ``FileNotFoundError``:
    their messages say what to do), or a comparison's setting another process is running
    (``compare.SettingBusy``) — is told in one line, exit status 2, instead of a traceback;
    Ctrl-C ends with status 130 after what a fit saved. ``SAFEMAX_TRACEBACK=1`` shows the traceback."""
    from .compare import SettingBusy   # the one RuntimeError that is told in one line: torch's keep their traceback
    try:
        return command(argv) or 0
    except (ValueError, FileNotFoundError, SettingBusy) as e:
        if os.environ.get("SAFEMAX_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}\n(SAFEMAX_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("SAFEMAX_TRACEBACK"):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def cli(argv=None) -> int:
    """The ``safemax`` command: ``main`` with ``one_line_errors`` (``main`` itself raises)."""
    return one_line_errors(main, "safemax", argv)


if __name__ == "__main__":
    sys.exit(cli())
