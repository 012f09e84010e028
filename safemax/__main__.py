"""The ``safemax`` command line (also ``python -m safemax``)."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="safemax",
        description="SAFEMax machine unlearning for diffusion models: a forgotten class "
                    "generates Gaussian noise.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    return 2  # unreachable: argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
