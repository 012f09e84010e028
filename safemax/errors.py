"""What a command tells in one line instead of a traceback — the base of the package: every
layer may raise ``SettingBusy``, and every command line (``safemax``, ``python -m
safemax.zoo.train``) runs through ``one_line_errors``."""
import os
import sys


class SettingBusy(RuntimeError):
    """Another process is running this setting of a comparison (``harness.store.RunLock``): the one
    ``RuntimeError`` told in one line (torch's keep their traceback)."""


def one_line_errors(command, prog: str, argv=None) -> int:
    """Run ``command(argv)`` for a command line: a mistake in what it was given — a bad option
    value, class id, spec, or a missing file or data set (``ValueError``, ``FileNotFoundError``:
    their messages say what to do), or a comparison's setting another process is running
    (``SettingBusy``) — is told in one line, exit status 2, instead of a traceback;
    Ctrl-C ends with status 130 after what a fit saved. ``SAFEMAX_TRACEBACK=1`` shows the traceback."""
    try:
        return command(argv) or 0
    except (ValueError, FileNotFoundError, SettingBusy) as e:
        if os.environ.get("SAFEMAX_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}\n(SAFEMAX_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("SAFEMAX_TRACEBACK"):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
