"""python -m tprop_exp.report: the same as `tprop_exp report` (tprop_exp/report/write.py)."""
import sys

from tprop_exp.report.write import main

sys.exit(main())
