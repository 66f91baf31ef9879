"""BTPROP with the augmented Lagrangian (SPEC §1): n_h rounds of one joint
gradient step on (H, θ), then a dual step.

H descends J and θ descends J / n in the same step, so the duals act on every
joint step after the first. The h-tolerance stops H's steps only; θ takes
every step (a zeroed gradient would still move Adam). The terms reported are
the first step's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tprop_exp import UserError

from .. import btprop
from ..constrained import HVar
from ..registry import register_method

if TYPE_CHECKING:
    from ..distributed import SharedTheta
    from ..model import LanguageModel
    from ..optim import ThetaStep


def update(model: LanguageModel, theta: ThetaStep | SharedTheta, S: btprop.Blocks, m: Any,
           duals_on: bool) -> dict:
    """n_h rounds of (joint step, dual step) on the blocks S, in place."""
    var = HVar(model, S, m.get("h_param", "free"))  # H moves as S.H or through tanh's Z
    h_opt = btprop.H_OPTIMIZERS[m.h_optimizer]([var.leaf], lr=m.h_lr)
    active = torch.ones((), device=S.H.device, dtype=S.H.dtype)
    taken = torch.zeros((), device=S.H.device)
    stats = None
    for _ in range(m.h_steps):
        var.leaf.grad = None
        theta.zero_grad()
        s = btprop.objective(model, var.blocks(S), backward=lambda J: theta.backward(J / S.n, extra=[var.target]))
        stats = s if stats is None else {**stats, "last": s["last"]}
        theta.unscale(var.target.grad).mul_(S.n)  # J, not J / n, for H
        var.pull()
        active = btprop.masked_step(h_opt, var.leaf, active, m.h_tol, m.h_clip, S.comm)
        var.write(S)
        theta.step()
        taken += active
        if duals_on:
            btprop.dual_step(model, S, m.u_lr)
    return btprop.measure(model, S, stats, taken)


def needs_h_steps(m: Any) -> None:
    if m.h_steps < 1:
        raise UserError(f"method.h_steps: {m.h_steps!r} is not allowed; "
                        "it must be at least 1 for alm (it counts the joint (H, θ) steps)")


register_method(btprop.method("alm", update, check=needs_h_steps))
