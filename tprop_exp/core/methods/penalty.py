"""BTPROP with the quadratic penalty method (SPEC §1): steps 1–3, no duals.

    h-steps on H (θ fixed), then θ-steps on θ (H fixed).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tprop_exp import UserError

from .. import btprop
from ..registry import register_method

if TYPE_CHECKING:
    from ..distributed import SharedTheta
    from ..model import LanguageModel
    from ..optim import ThetaStep


def update(model: LanguageModel, theta: ThetaStep | SharedTheta, S: btprop.Blocks, m: Any,
           duals_on: bool) -> dict:
    """h → θ on the blocks S, in place (S.H, θ); the penalty method has no duals."""
    taken = btprop.h_steps(model, S, m)
    stats = btprop.theta_steps(model, theta, S, m)
    return btprop.measure(model, S, stats, taken)


def needs_theta_steps(m: Any) -> None:
    if m.theta_steps < 1:
        raise UserError(f"method.theta_steps: {m.theta_steps!r} is not allowed; "
                        f"it must be at least 1 for {m.name}, or θ never trains")


register_method(btprop.method("penalty", update, check=needs_theta_steps))
