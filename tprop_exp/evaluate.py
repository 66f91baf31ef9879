"""python -m tprop_exp.evaluate: the same as `tprop_exp evaluate` (tprop_exp/run/evaluate.py)."""
import sys

from tprop_exp.run.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
