"""python -m tprop_exp: the same as the `tprop_exp` command (tprop_exp/cli.py)."""
from tprop_exp.cli import cli

cli()
