"""``safemax selfcheck``: the compiled kernels against the reference, timed."""


def add_parser(sub):
    check = sub.add_parser(
        "selfcheck", help="check the compiled kernels against the reference and time them",
        description="Run the fused op and the pure-PyTorch reference on one random batch per "
                    "device (CPU, and CUDA when built and present), compare values and "
                    "gradients, and time forward+backward. Exits 1 on a mismatch.")
    check.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    check.add_argument("--reps", type=int, default=20, help="timed repetitions (default 20)")


def command(args):
    from safemax.op.selfcheck import run
    return 0 if run(batch=args.batch, reps=args.reps) else 1
