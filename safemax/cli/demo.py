"""``safemax demo``: forget a class of an embedded model and show before and after."""
from safemax.cli.common import add_dataset


def add_parser(sub):
    from safemax.harness.defaults import DEFAULT_LR
    from safemax.methods import SafeMaxSettings
    p = sub.add_parser(
        "demo", help="forget a class of an embedded model and show before/after",
        description="Load an embedded model (the digits' DDPM; Fashion-MNIST's with --dataset "
                    "fashion-mnist; the digits' rectified flow with --dataset flow-digits), measure it, "
                    "unlearn one class with SAFEMax, measure again, and "
                    "write before/after sample grids (before.png, after.png), the accuracy curve "
                    "(curve.png), report.md, report.json and the unlearned UNet (unet/) to --out. "
                    "About 2-3 minutes (digits) on 2 CPU cores.")
    add_dataset(p)
    p.add_argument("--forget", type=int, default=3, help="class id to forget (default 3)")
    p.add_argument("--steps", type=int, default=None,
                   help="unlearning steps (default: 100 on the digits, 200 on fashion-mnist, 300 on flow-digits)")
    p.add_argument("--out", default="safemax-demo", help="output folder (default safemax-demo)")
    p.add_argument("--batch-size", type=int, default=64, help="forget and retain rows per step (each)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate (default: {DEFAULT_LR:g} on the digits, 1e-4 on fashion-mnist and flow-digits)")
    # SAFEMax's settings as its dataclass declares them; left out: the model's (harness.defaults)
    SafeMaxSettings.add_arguments(p, only=["early_fraction", "gaussian_fraction", "flow_halt"],
                                  default_text=dict(gaussian_fraction="the model's: 0.5 on fashion-mnist and flow-digits, 0 on the digits",
                                                    flow_halt="the model's: still on flow-digits"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="tiny measurement (few samples, few sampling steps): a smoke run, not a result")


def command(args):
    from safemax.harness.defaults import DEFAULT_EARLY_FRACTION
    from safemax.harness.demo import run
    quick = dict(eval_every=0, n_forget=8, n_per_class=2, num_inference_steps=5) if args.quick else {}
    early = DEFAULT_EARLY_FRACTION if args.early_fraction is None else args.early_fraction
    run(forget=args.forget, steps=args.steps, out=args.out, batch_size=args.batch_size, early_fraction=early,
        lr=args.lr, seed=args.seed, dataset=args.dataset, gaussian_fraction=args.gaussian_fraction,
        flow_halt=args.flow_halt, **quick)
