"""``safemax sample``: class-conditional samples into a PNG grid."""
from safemax.cli.common import cuda


def add_parser(sub):
    p = sub.add_parser("sample", help="draw class-conditional samples into a PNG grid",
                       description="DDIM samples of one or more classes; one row per class.")
    p.add_argument("--model", default="default",
                   help="an embedded model ('digits' = 'default', 'fashion-mnist') or a local folder")
    p.add_argument("--label", type=int, nargs="+", required=True, help="class id(s), one row each")
    p.add_argument("--n", type=int, default=10, help="samples per class (default 10)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png")


def command(args):
    from safemax.cli.loading import load_unet_and_scheduler
    from safemax.data import balanced_labels
    from safemax.evaluation.report import save_grid
    from safemax.models.sampling import sample

    unet, scheduler = load_unet_and_scheduler(args.model, "cuda" if cuda() else "cpu")
    labels = balanced_labels(args.label, args.n * len(args.label))
    images = sample(unet, scheduler, labels, num_inference_steps=args.steps, seed=args.seed, progress=True)
    save_grid(images, rows=len(args.label), path=args.out)
    print(f"{len(images)} samples written to {args.out}")
