"""python -m tprop_exp.plan: the same as `tprop_exp plan` (tprop_exp/report/plan.py)."""
from tprop_exp.report.plan import main

if __name__ == "__main__":
    main()
