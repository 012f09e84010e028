"""Concept erasure on the Stable Diffusion pipeline trained here — the concept table and the
head-to-head (``safemax.harness.concept_compare``; the same as ``safemax compare --pipeline``).

    python benchmarks/concept_erasure.py --out benchmarks/results/concepts-sd                # SAFEMax, 3 concepts x 3 seeds
    python benchmarks/concept_erasure.py --methods safemax esd-x esd-u uce salun --attack soft prefix \\
        --out benchmarks/results/concepts-sd                                                 # the head-to-head
    python benchmarks/concept_erasure.py --tune --seeds 0 --methods safemax safemax:lr=3e-4 safemax:steps=200 \\
        --out benchmarks/results/concepts-sd-tune                                            # choose SAFEMax's settings
    python benchmarks/concept_erasure.py --at-once 1 2 5 --methods safemax esd-x uce --out benchmarks/results/concepts-sd
                                                                                             # several concepts in one run
    python benchmarks/concept_erasure.py --summarise --out benchmarks/results/concepts-sd    # the tables only
    python benchmarks/concept_erasure.py --smoke --pipeline DIR --out /tmp/c                 # seconds, not a result
"""
import argparse

from safemax.harness.concept_compare import CONCEPTS, METHOD_SETTINGS, TUNE, compare_at_once, compare_concepts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default="fashion-mnist-sd")
    p.add_argument("--concepts", nargs="+", default=list(CONCEPTS))
    p.add_argument("--methods", nargs="+", default=["safemax"], metavar="METHOD",
                   help=f"of {', '.join(METHOD_SETTINGS)}; settings after a colon: safemax:lr=3e-4,steps=200")
    p.add_argument("--attack", nargs="+", default=[], choices=["soft", "prefix"], help="the prompt attacks to run too")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tune", action="store_true", help=f"run the tuning concept ({TUNE!r}) instead of the reported ones")
    p.add_argument("--eval-n", type=int, default=8, help="evaluation samples per prompt (default 8)")
    p.add_argument("--sampling-steps", type=int, default=None,
                   help="evaluation sampling steps (default: the pipeline's usual, 25 on SD, 28 on SD3)")
    p.add_argument("--at-once", type=int, nargs="+", default=None, metavar="N",
                   help="instead: erase the first N of sneaker, t-shirt, bag, trousers, coat in one run, for each N")
    p.add_argument("--summarise", action="store_true", help="only the summary of the finished runs")
    p.add_argument("--smoke", action="store_true", help="a tiny run (seconds with a tiny pipeline), not a result")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.at_once:
        print(compare_at_once(args.pipeline, args.out, args.methods, args.at_once, seed=args.seeds[0],
                              eval_n=args.eval_n, sampling_steps=args.sampling_steps, smoke=args.smoke))
        return 0
    print(compare_concepts(args.pipeline, args.out, args.methods, [TUNE] if args.tune else args.concepts, args.seeds,
                           args.attack, args.eval_n, args.sampling_steps, args.smoke, args.summarise))
    return 0


if __name__ == "__main__":
    import sys

    from safemax.errors import one_line_errors
    sys.exit(one_line_errors(main, "concept_erasure.py"))
