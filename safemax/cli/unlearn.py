"""``safemax unlearn``: unlearn classes of a diffusers UNet and save it."""
import os

from safemax.cli.common import add_method_arguments, cuda, method_options


def add_parser(sub):
    from safemax.harness.defaults import DEFAULT_LR
    from safemax.training.settings import UnlearnerSettings
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
                        "safemax.training.stopping)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--method", default="safemax", choices=["safemax", "safemax-robust", "salun", "sa", "ga"],
                   help="safemax (default), safemax-robust (experimental: simulates the inversion attacker "
                        "in each step; holds against it as a retrained model does, at 4-6 points of retain "
                        "accuracy: docs/results/robust.md) or a baseline: salun, sa (Selective Amnesia), ga (gradient "
                        "ascent); each method takes its own settings below (another's is refused)")
    UnlearnerSettings.add_arguments(p.add_argument_group("the Unlearner's settings"), default_text=dict(
        lr=f"for SAFEMax the demo's for an embedded model — {DEFAULT_LR:g} on the digits, 1e-4 on fashion-mnist "
           "—, else 5e-4; 1e-4 for the baselines; 0.3 for class-embedding rows"))
    add_method_arguments(p)
    p.add_argument("--out", required=True, help="folder for the unlearned UNet")
    p.add_argument("--checkpoint-dir", help="folder for checkpoints (default: OUT/checkpoint)")
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--device", default="cuda" if cuda() else "cpu")

def command(args):
    from safemax.cli.loading import embedded_name, load_unet_and_scheduler
    from safemax.data import ImageFolder, digits_dataset, fashion_mnist, split_by_class
    from safemax.training.settings import UnlearnerSettings
    from safemax.training.unlearner import Unlearner
    from safemax.zoo import model_info

    unet, scheduler = load_unet_and_scheduler(args.model, args.device)
    embedded = embedded_name(args.model)
    data_name = args.data or (model_info(embedded).data if embedded else "digits")
    if data_name == "digits":
        data = digits_dataset(size=unet.config.sample_size)
    elif data_name == "fashion-mnist":
        data = fashion_mnist("train", size=unet.config.sample_size)
    else:
        data = ImageFolder(args.data, unet.config.sample_size, unet.config.in_channels)
    forget_data, retain_data = split_by_class(data, args.forget)
    from safemax.harness.defaults import DEFAULTS, method_settings
    # an embedded model's demo settings (the learning rate and steps are a per-model choice)
    model = embedded_name(args.model)
    steps = DEFAULTS.get(model or "digits", DEFAULTS["digits"])["steps"] if args.steps is None else args.steps
    given = method_options(args)
    lr, given = method_settings(model, args.method, given, args.lr)
    own = UnlearnerSettings.given(args)   # the Unlearner's settings the command line gives
    if own.get("train", "all") == "all":   # (rows alone: the Unlearner's own default lr for them)
        own["lr"] = lr
    u = Unlearner(unet, scheduler, forget=args.forget, method=args.method, **own, **given)
    ckpt = args.checkpoint_dir or os.path.join(args.out, "checkpoint")
    u.fit(retain_data, None if args.data_free else forget_data, steps=steps,
          batch_size=args.batch_size, checkpoint_dir=ckpt, checkpoint_every=args.checkpoint_every,
          resume=args.resume, stop_when=args.stop_when)
    u.save_pretrained(args.out)
    if u.is_main_process:
        print(f"unlearned UNet saved to {args.out} (diffusers format; safemax.json says what was done)")
