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

from .. import btprop, tprnn
from ..constrained import HVar
from ..registry import register_method

if TYPE_CHECKING:
    from ..distributed import SharedTheta
    from ..model import LanguageModel
    from ..optim import ThetaStep


def update(model: LanguageModel, theta: ThetaStep | SharedTheta, S: btprop.Blocks, m: Any,
           duals_on: bool) -> dict:
    """n_h rounds of (joint step, dual step) on the blocks S, in place; under
    method.dual_update=tprnn one dual step before the joint steps (after them
    with tprnn_mb), SPEC §6."""
    if duals_on and tprnn.dual_first(m):
        tprnn.dual(model, S, m)
    scaled = tprnn.rule(m, "dual_update") == "scaled"
    if m.h_optimizer == "tprnn_adagrad":  # the authors' joint step (SPEC §6)
        stats, taken = tprnn.joint_steps(model, theta, S, m, dual_each=duals_on and scaled)
    else:
        stats, taken = joint_steps(model, theta, S, m, dual_each=duals_on and scaled)
    if duals_on and tprnn.dual_last(m):
        tprnn.dual(model, S, m)
    return btprop.measure(model, S, stats, taken)


def joint_steps(model: LanguageModel, theta: ThetaStep | SharedTheta, S: btprop.Blocks, m: Any,
                dual_each: bool) -> tuple[dict, torch.Tensor]:
    """SPEC §1's joint steps: H on ∇J, θ on ∇(J/n); `dual_each`: a dual step after each."""
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
        # θ's step first (it reads none of H): False when the fp16 scaler skipped it
        if theta.step() and finite(var.target.grad, S, theta):
            var.pull()
            active = btprop.masked_step(h_opt, var.leaf, active, m.h_tol, m.h_clip, S.comm,
                                        fixed_first=not S.free_first)
            var.write(S)
            taken += active
        if dual_each:
            btprop.dual_step(model, S, m.u_lr)
    return stats, taken


def finite(grad: torch.Tensor, S: btprop.Blocks, theta: ThetaStep | SharedTheta) -> bool:
    """H's gradient is finite on every process. Read on the host under fp16
    only (whose scaler reads its own flag anyway): fp32 keeps no sync."""
    if not theta.scaler.is_enabled():
        return True
    norm = torch.linalg.vector_norm(grad)
    return bool(torch.isfinite(norm if S.comm is None else S.comm.norm(norm)))


def needs_h_steps(m: Any) -> None:
    if m.h_steps < 1:
        raise UserError(f"method.h_steps: {m.h_steps!r} is not allowed; "
                        "it must be at least 1 for alm (it counts the joint (H, θ) steps)")


register_method(btprop.method("alm", update, check=needs_h_steps))
