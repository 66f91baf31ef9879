"""BTPROP with ADMM (SPEC §1): h-steps, θ-steps and a dual step.

The order of the θ-steps and the dual step depends on the mode, so that the
duals always act:
  batch mode (u persists across updates):      h → θ → dual, the textbook order;
  mini-batch mode (u restarts every mini-batch): h → dual → θ, as in the
      authors' code, so that the θ-steps see the duals.
With method.dual_update=tprnn the order is the authors' whatever the mode
(SPEC §6): dual → h → θ, or h → dual → θ with method.init=tprnn_mb.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import btprop, tprnn
from ..registry import register_method
from .penalty import needs_theta_steps

if TYPE_CHECKING:
    from ..distributed import SharedTheta
    from ..model import LanguageModel
    from ..optim import ThetaStep


def update(model: LanguageModel, theta: ThetaStep | SharedTheta, S: btprop.Blocks, m: Any,
           duals_on: bool) -> dict:
    """Steps 2–4 on the blocks S, in place (S.H, S.u, θ)."""
    if duals_on and tprnn.dual_first(m):  # the authors' order (SPEC §6): dual → h → θ
        tprnn.dual(model, S, m)
    taken = btprop.h_steps(model, S, m)
    if duals_on and (tprnn.dual_last(m) if tprnn.rule(m, "dual_update") == "tprnn" else m.mode == "minibatch"):
        tprnn.dual(model, S, m)
    stats = btprop.theta_steps(model, theta, S, m)
    if duals_on and tprnn.rule(m, "dual_update") == "scaled" and m.mode == "batch":
        btprop.dual_step(model, S, m.u_lr)
    return btprop.measure(model, S, stats, taken)


register_method(btprop.method("admm", update, check=needs_theta_steps))
