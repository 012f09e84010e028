"""The ``safemax`` command line (also ``python -m safemax``): one module per command, each with
``add_parser(subparsers)`` and ``command(args)``."""
import argparse
import importlib

from safemax.errors import one_line_errors

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
  safemax erase --pipeline fashion-mnist-sd --concept "a sneaker" --out no-sneaker   erase a concept
  safemax erase --pipeline ./sd-folder --concept "a church" --keep "a house" --lora-rank 8 --out no-church
  safemax evaluate --pipeline no-sneaker        its forgetting and what it cost, before/after seeds
  safemax compare                               SAFEMax vs SalUn, Selective Amnesia, gradient ascent
  safemax compare --quick --out /tmp/c          a smoke run (seconds), not a result
  safemax probe --model digits unet-no3 --forget 3   erased or only avoided? (erasure probes)
  safemax check benchmarks/results/demo/report.json   re-run a recorded result smaller: still agrees?
  safemax selfcheck                             kernels vs reference, timed
"""


COMMANDS = ("demo", "unlearn", "erase", "sample", "evaluate", "compare", "probe", "check", "selfcheck")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="safemax", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SAFEMax machine unlearning for diffusion models: a forgotten class "
                    "generates Gaussian noise.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {name: importlib.import_module(f"safemax.cli.{name}") for name in COMMANDS}
    for module in modules.values():
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return modules[args.command].command(args) or 0


def cli(argv=None) -> int:
    """The ``safemax`` command: ``main`` with ``one_line_errors`` (``main`` itself raises)."""
    return one_line_errors(main, "safemax", argv)
