"""Hydra sweeper of tprop_exp (`hydra/sweeper=tprop`, the default in its config)."""
