"""The training methods, one module each. Every module here registers its
method on import (core/registry.py); a method of yours is a module like these
anywhere on PYTHONPATH, named by `method._target_` in its YAML file.

This file holds the keys the built-in methods share, torch-free, so that the
config schema (run/schema.py) and `--help` load no torch.
"""
from dataclasses import dataclass

from ..registry import MethodConf, added


@dataclass
class BTPropConf(MethodConf):
    """The method.* keys of BTPROP (SPEC §3). BPTT has them too, and ignores
    them, so that one sweep may mix methods (its identity leaves them out)."""
    init: str = "forward"
    h_steps: int = 10
    h_optimizer: str = "adagrad"
    h_lr: float = 1.0
    h_tol: float = 1e-5
    h_clip: float = 0.0
    theta_steps: int = 1
    lam: float = 1.0
    lam_mult: float = 1.0
    u_lr: float = 0.1
    u_start_epoch: int = 3
    chunk_blocks: int = 512
    # The authors' rules (SPEC §6, variant=tprnn), each its own key; the
    # defaults are SPEC §1's, so a run without them computes what it did.
    slots: str = added("fixed_first")        # fixed_first | all_free (n+1 free slots)
    dual_update: str = added("scaled")       # scaled | tprnn (ascent on J/n, order per §6)
    drop_last_block: bool = added(False)     # the epoch's last block never trains
    # SPEC §7, constrained h-optimisation: the variable the h-steps move, and
    # the constraint term (l2: the quadratic penalty; kl: μ·KL between the
    # next-token distributions from F_b and from H_{b+1}; l2+kl: both).
    h_param: str = added("free")
    penalty: str = added("l2")
    kl_weight: float = added(0.0)
