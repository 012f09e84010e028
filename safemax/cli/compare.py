"""``safemax compare``: SAFEMax against the baselines on one embedded model, timed."""
from safemax.cli.common import add_dataset, cuda


def add_parser(sub):
    from safemax.evaluation.attacks import DEFAULT_ATTACKS, PRESETS
    from safemax.harness.compare import ALL_METHODS
    p = sub.add_parser(
        "compare", help="SAFEMax vs SalUn, Selective Amnesia and gradient ascent, timed",
        description="From an embedded model (--model digits or fashion-mnist), forget one class with each method (same "
                    "batch, Adam, step budget), measure every --eval-every steps, find the time "
                    "to forget (FA <= 1%% with retain accuracy within 2 points; preparation "
                    "included), run a relearning attack on each result, and write results.json, "
                    "results.md, curves.png and samples.png to --out. The defaults take about "
                    "40 minutes on 2 CPU cores; finished methods are kept, --resume skips them and continues "
                    "the one under way from its last measurement.")
    add_dataset(p)
    p.add_argument("--forget", type=int, default=3, help="class id to forget (default 3)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"methods to run, of {', '.join(ALL_METHODS)} (the default) and safemax-robust (with --pipeline: "
                        "of safemax, esd-x, esd-u, uce, salun, ga, all by default, erase settings after a colon: "
                        "safemax:lr=3e-4,steps=200); options after "
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
    p.add_argument("--confirm", default="0", metavar="N|auto",
                   help="confirm each held step with a heavy measurement of N samples per kept class "
                        "('auto': the fewest that resolve the 2-point bar on this model; default 0: none)")
    p.add_argument("--device", default="cuda" if cuda() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="tiny measurements and preparation: a smoke run of the whole pipeline, not a result")
    concept = p.add_argument_group(
        "concepts of a text-to-image pipeline (--pipeline): each --concept erased by each method with each seed, "
        "evaluated before and after, summarised per method (safemax.harness.concept_compare)")
    concept.add_argument("--pipeline", default=None, help="the zoo's fashion-mnist-sd or a pipeline folder")
    concept.add_argument("--concept", action="append", default=None, metavar="WORDS",
                         help="a concept (repeat; default: sneaker, t-shirt, bag)")
    concept.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    concept.add_argument("--attack", nargs="+", default=[], choices=["soft", "prefix"],
                         help="the prompt attacks on every erased model")
    concept.add_argument("--eval-n", type=int, default=8, help="evaluation samples per prompt (default 8)")


def command(args):
    if args.pipeline is not None:
        return _concepts(args)
    if args.concept:
        raise ValueError("--concept compares on a text-to-image pipeline: give it with --pipeline")
    from safemax.harness.compare import ALL_METHODS, run
    run(forget=args.forget, methods=args.methods or list(ALL_METHODS), steps=args.steps, eval_every=args.eval_every,
        batch_size=args.batch_size, lr=args.lr, attack=not args.no_attack,
        attacks=args.attacks, attack_steps=args.attack_steps, attack_images=args.attack_images, seed=args.seed,
        out=args.out, resume=args.resume, quick=args.quick, model=args.dataset, device=args.device,
        race=args.race, confirm_per_class=_confirm(args.confirm))


def _confirm(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--confirm {text!r}: a whole number of samples per kept class, or auto") from None


def _concepts(args):
    from safemax.harness.concept_compare import CONCEPTS, METHOD_SETTINGS, compare_concepts
    methods = args.methods or list(METHOD_SETTINGS)
    out = args.out if args.out != "safemax-compare" else "safemax-compare-concepts"
    print(compare_concepts(args.pipeline, out, methods, args.concept or list(CONCEPTS), args.seeds, args.attack,
                           args.eval_n, smoke=args.quick))
