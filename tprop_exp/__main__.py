"""python -m tprop_exp: the same as the `tprop_exp` command (tprop_exp/cli.py)."""
import os
import signal
import sys


def _starting(signum, frame):
    """SIGTERM/SIGINT while the command loads (nothing is written yet): one line."""
    print(f"tprop_exp: stopped by {signal.Signals(signum).name} while starting; nothing was written",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)  # mid-import a SystemExit can be swallowed; nothing is open to close


for _s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_s, _starting)  # cli() sets its own once it runs

from tprop_exp.cli import cli  # noqa: E402  (after the handler: importing takes a second)

cli()
