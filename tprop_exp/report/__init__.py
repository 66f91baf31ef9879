"""report: from run records to the paper's tables, figures and claim verdicts
(SPEC §4), and `plan`, a sweep's cost before it runs. Statistics over seeds,
table layouts, claims, matplotlib figures.

Imports: run (records, schema, the trainer's device choice), core (plan times
the training core), data, pandas and matplotlib. Nothing imports report
except the command line (tprop_exp/cli.py).
"""
