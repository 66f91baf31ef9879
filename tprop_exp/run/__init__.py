"""run: one run from a config to its records (SPEC §3). The config schema and
its checks, the trainer (epochs, checkpoints, signals, early stopping), the
records (result.json, metrics.jsonl, checkpoints, provenance), the metric
loggers, and evaluation of a finished run.

Imports: core, data, Hydra and OmegaConf. Never report.
"""
