"""``safemax erase``: erase concepts from a diffusers text-to-image pipeline (``safemax.concepts``)."""
from safemax.cli.common import add_method_arguments, add_pipeline_options, cuda, method_options, pipeline_options


def add_parser(sub):
    from safemax.concepts.erase import DEFAULTS
    from safemax.models.pipelines import FAMILIES
    p = sub.add_parser(
        "erase", help="erase concepts from a text-to-image pipeline (SD, SDXL, SD3, Flux, PixArt, Sana)",
        description="Erase concepts from a diffusers text-to-image pipeline ("
                    + ", ".join(FAMILIES.values()) + ", or the zoo's fashion-mnist-sd) with SAFEMax: "
                    "prompted with an erased concept, the pipeline draws noise. Writes to --out what the "
                    "pipeline loads back (a LoRA file with --lora-rank, else the edited denoiser), safemax.json, a "
                    "model card README.md, grid.png (before/after) and report.json (safemax evaluate's "
                    "figures, before and after). Checkpoints as it goes; Ctrl-C saves; --resume goes on.")
    p.add_argument("--pipeline", required=True,
                   help="a zoo pipeline ('fashion-mnist-sd') or a local diffusers pipeline folder (model_index.json)")
    p.add_argument("--concept", action="append", required=True, metavar="WORDS",
                   help="what to erase, e.g. 'a sneaker' (repeat for several); erased with its words in the "
                        "templates 'a photo of a {}', 'a picture of a {}', 'an image of a {}', '{}' (see --exact)")
    p.add_argument("--keep", action="append", default=None, metavar="PROMPT",
                   help="a prompt to keep as it is (repeat; '' is the empty prompt); default: the empty prompt, "
                        "and on fashion-mnist-sd every other class's erasing prompts")
    p.add_argument("--exact", action="store_true", help="erase with each --concept text alone, no templates")
    p.add_argument("--method", default="safemax", choices=["safemax", "salun", "ga", "esd-x", "esd-u", "uce"],
                   help="safemax (default), a baseline in the same loop: salun, ga (gradient ascent), esd-x / esd-u "
                        "(ESD's negative guidance on the cross-attention / the rest; lr 1e-5), or uce (Unified "
                        "Concept Editing: a closed-form edit of the cross-attention, SD and SDXL)")
    p.add_argument("--lora-rank", type=int, default=None, help="train a LoRA adapter of this rank (pipe.load_lora_weights)")
    p.add_argument("--steps", type=int, default=None, help=f"fit steps (default {DEFAULTS['steps']})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"forget rows and retain rows per step, each (default {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's, 1e-4)")
    p.add_argument("--n-per-prompt", type=int, default=None,
                   help=f"samples the pipeline draws of each prompt as data (default {DEFAULTS['n_per_prompt']})")
    p.add_argument("--num-inference-steps", type=int, default=None,
                   help=f"sampling steps, for the data and the evaluation (default {DEFAULTS['num_inference_steps']})")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance the data are drawn with (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0)
    add_pipeline_options(p)
    p.add_argument("--save-pipeline", action="store_true",
                   help="also write the whole pipeline (LoRA merged) to OUT/pipeline, for tools that load pipelines")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                   help="skip the before/after evaluation (report.json)")
    p.add_argument("--eval-n", type=int, default=8, help="samples per prompt in the evaluation (default 8)")
    p.add_argument("--attack", nargs="+", default=[], choices=["soft", "prefix"],
                   help="also attack the erased model with adversarial prompts (safemax.concepts.attacks): soft "
                        "embeddings, a discrete prefix; their success rate is in report.json")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 25)")
    p.add_argument("--resume", action="store_true", help="go on from OUT/checkpoint")
    p.add_argument("--device", default="cuda" if cuda() else "cpu")
    p.add_argument("--out", required=True, help="the output folder")
    add_method_arguments(p)
    uce = p.add_argument_group("UCE's settings (--method uce; the official code's defaults)")
    uce.add_argument("--guide", default=None, help="the prompt the concept is mapped to (default '': the empty prompt)")
    uce.add_argument("--erase-scale", type=float, default=None, help="weight of the erased concepts (default 1)")
    uce.add_argument("--preserve-scale", type=float, default=None, help="weight of the kept prompts (default 1)")
    uce.add_argument("--lamb", type=float, default=None, help="λ, the pull towards the original weights (default 0.5)")
    uce.add_argument("--tokens", choices=["word", "after"], default=None,
                     help="which token states are edited: the concept word's (default, as published) or it and every state after it: end, padding")


def command(args):
    from safemax.concepts import erase
    if args.lora_rank is not None and args.lora_rank < 1:
        raise ValueError(f"--lora-rank must be at least 1, got {args.lora_rank}")
    for name in ("steps", "batch_size", "n_per_prompt", "num_inference_steps", "eval_n"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    out = erase(args.pipeline, args.concept, keep=args.keep, out=args.out, method=args.method,
                lora_rank=args.lora_rank, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                n_per_prompt=args.n_per_prompt, num_inference_steps=args.num_inference_steps,
                guidance_scale=args.guidance_scale, exact=args.exact, device=args.device, resume=args.resume,
                save_pipeline=args.save_pipeline,
                evaluate=dict(n=args.eval_n, attacks=tuple(args.attack)) if args.evaluate else False,
                checkpoint_every=args.checkpoint_every, options=pipeline_options(args), **method_options(args),
                **{k: getattr(args, k) for k in ("guide", "erase_scale", "preserve_scale", "lamb", "tokens")
                   if getattr(args, k) is not None})
    print(f"erased: {out} (safemax.json says what was done; README.md is its model card; grid.png shows it)")
