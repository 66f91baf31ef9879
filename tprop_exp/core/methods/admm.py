"""BTPROP with ADMM (SPEC §1): h-steps, θ-steps and a dual step.

The order of the θ-steps and the dual step depends on the mode, so that the
duals always act:
  batch mode (u persists across updates):      h → θ → dual, the textbook order;
  mini-batch mode (u restarts every mini-batch): h → dual → θ, as in the
      authors' code, so that the θ-steps see the duals.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import btprop
from ..registry import register_method
from .penalty import needs_theta_steps

if TYPE_CHECKING:
    from ..distributed import SharedTheta
    from ..model import LanguageModel
    from ..optim import ThetaStep


def update(model: LanguageModel, theta: ThetaStep | SharedTheta, S: btprop.Blocks, m: Any,
           duals_on: bool) -> dict:
    """Steps 2–4 on the blocks S, in place (S.H, S.u, θ)."""
    taken = btprop.h_steps(model, S, m)
    if duals_on and m.mode == "minibatch":
        btprop.dual_step(model, S, m.u_lr)
    stats = btprop.theta_steps(model, theta, S, m)
    if duals_on and m.mode == "batch":
        btprop.dual_step(model, S, m.u_lr)
    return btprop.measure(model, S, stats, taken)


register_method(btprop.method("admm", update, check=needs_theta_steps))
