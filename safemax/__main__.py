"""``python -m safemax`` is the ``safemax`` command (``safemax.cli``)."""
import sys

from safemax.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
