"""The authors' rules (SPEC §6, `variant=tprnn`), one function per rule.

The paper's numbers came from the authors' Lua code, which trains BTPROP
differently from SPEC §1. Each rule is a key of its own, so that an ablation
can switch one at a time; at the keys' defaults nothing here runs and SPEC §1
is computed as before.

  method.slots=all_free       n+1 slots S_1..S_{n+1}; block j starts from S_j,
                              constraint F_j(S_j) + u_j = S_{j+1} for j = 1..n;
                              every slot, S_1 included, moves in h-steps
  method.init=tprnn_zero      every slot 0 at every mini-batch, nothing carried
  method.init=tprnn_mb        S_1 = the carry, S_{j+1} = F_j(0) (each block from
                              the zero state, not chained), S_{n+1} = 0
  method.dual_update=tprnn    u_j ← u_j + ρ·λ·(F_j + u_j − S_{j+1})/n (ascent on
                              J/n), before the h-steps (after them with tprnn_mb)
  method.h_optimizer=tprnn_adagrad   Adagrad, ε = 1e-5 outside the root, state
                              restarted every update, on ∇(J/n); stops after the
                              first step whose Euclidean ‖g‖ is below h_tol
  method.drop_last_block      the epoch's last block never trains
The θ-optimiser (train.optimizer=tprnn_adagrad) is core/optim.py; the token
weights (train.zero_weight_first_type) are core/model.py's token_nll and
core/perplexity.py; the init (arch.init=tprnn) is core/model.py.

The loops here read gradient norms on the host (the authors' loop did too):
these rules are for reproduction, not speed.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch

from . import btprop
from .constrained import HVar

if TYPE_CHECKING:
    from .model import LanguageModel
    from .optim import ThetaStep

EPS = 1e-5  # the authors' Adagrad: S ← S − η·g / (√(Σg²) + 1e-5)
Adagrad = functools.partial(torch.optim.Adagrad, eps=EPS)  # torch adds ε outside the root
INITS = ("tprnn_zero", "tprnn_mb")
SLOTS = ("fixed_first", "all_free")
DUAL_UPDATES = ("scaled", "tprnn")
# the rules' keys at their SPEC §1 values (a method config made before they existed lacks them)
DEFAULTS = {"slots": "fixed_first", "dual_update": "scaled", "drop_last_block": False}


def rule(m: Any, key: str) -> Any:
    """method.<key>, or its SPEC §1 default when the config has no such key."""
    value = m.get(key) if hasattr(m, "get") else getattr(m, key, None)
    return DEFAULTS[key] if value is None else value


def all_free(m: Any) -> bool:
    return rule(m, "slots") == "all_free"


def restarts(m: Any) -> bool:
    """The authors' "batch" run is one mini-batch of every block: H and u restart every epoch."""
    return m.init in INITS


@torch.no_grad()
def init_slots(model: LanguageModel, x: torch.Tensor, carry: torch.Tensor, m: Any) -> torch.Tensor:
    """Step 1 under method.init and method.slots: n rows (H_1 fixed) or n+1
    (all free), as a fresh leaf. SPEC §1's inits with fixed_first are
    btprop.init_states unchanged."""
    n, free = x.shape[1], all_free(m)
    if m.init in ("forward", "zero"):
        H = btprop.init_states(model, x, carry, m.init).detach()
        if free:  # the last block's target: F_n(H_n) (forward) or 0 (zero)
            last = torch.zeros_like(H[:1])
            if m.init == "forward":
                last = model.flat_state(model.final_state(x[:, -1:], model.unflat_state(H[-1:])))
            H = torch.cat([H, last])
        return H.requires_grad_(True)
    H = torch.zeros(n + free, model.state_size, dtype=carry.dtype, device=carry.device)
    if m.init == "tprnn_mb":
        H[0] = carry[0]
        if n > 1:  # S_{j+1} = F_j(0), j = 1..n-1: each block from the zero state
            F0 = model.final_state(x[:, :n - 1], model.zero_state(n - 1, dtype=carry.dtype))
            H[1:n] = model.flat_state(F0)
    elif m.init != "tprnn_zero":
        raise ValueError(f"unknown method.init {m.init!r}")
    return H.requires_grad_(True)


def h_steps(model: LanguageModel, S: btprop.Blocks, m: Any) -> torch.Tensor:
    """method.h_optimizer=tprnn_adagrad: at most n_h Adagrad steps on ∇(J/n),
    stopping after the first step whose ‖∇(J/n)‖ is below h_tol."""
    var = HVar(model, S, m.get("h_param", "free"))  # S.H, or Z under method.h_param=tanh (SPEC §7)
    opt = Adagrad([var.leaf], lr=m.h_lr)
    taken = 0
    for _ in range(m.h_steps):
        var.leaf.grad = None
        btprop.objective(model, var.blocks(S), backward=lambda J: (J / S.n).backward(inputs=[var.target]))
        var.pull()
        if not S.free_first:
            var.leaf.grad[0] = 0  # H_1 is fixed
        norm = float(torch.linalg.vector_norm(var.leaf.grad))
        if m.h_clip > 0:
            torch.nn.utils.clip_grad_norm_([var.leaf], m.h_clip)
        opt.step()
        var.write(S)
        taken += 1
        if norm < m.h_tol:
            break
    return torch.tensor(float(taken), device=S.H.device)


def joint_steps(model: LanguageModel, theta: ThetaStep, S: btprop.Blocks, m: Any,
                dual_each: bool) -> tuple[dict, torch.Tensor]:
    """ALM's joint steps under tprnn_adagrad: S and θ both on ∇(J/n), S by the
    Adagrad rule (restarted), θ by the run's optimizer; stop after the first
    step with √(‖g_S‖² + ‖g_θ‖²) below h_tol. `dual_each`: the textbook dual
    step after every joint step (method.dual_update=scaled)."""
    var = HVar(model, S, m.get("h_param", "free"))  # S.H, or Z under method.h_param=tanh (SPEC §7)
    opt = Adagrad([var.leaf], lr=m.h_lr)
    stats, taken = None, 0
    for _ in range(m.h_steps):
        var.leaf.grad = None
        theta.zero_grad()
        s = btprop.objective(model, var.blocks(S), backward=lambda J: theta.backward(J / S.n, extra=[var.target]))
        stats = s if stats is None else {**stats, "last": s["last"]}
        theta.unscale(var.target.grad)
        var.pull()
        if not S.free_first:
            var.leaf.grad[0] = 0
        g = [p.grad for p in theta.params if p.grad is not None]
        g_theta = theta.unscale(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in g])))
        norm = float(torch.sqrt(torch.linalg.vector_norm(var.leaf.grad) ** 2 + g_theta ** 2))
        opt.step()
        var.write(S)
        theta.step()
        taken += 1
        if dual_each:
            dual(model, S, m)
        if norm < m.h_tol:
            break
    return stats, torch.tensor(float(taken), device=S.H.device)


@torch.no_grad()
def dual_step(model: LanguageModel, S: btprop.Blocks, rho: float) -> None:
    """method.dual_update=tprnn: u_j ← u_j + ρ·λ·(F_j + u_j − S_{j+1})/n."""
    for i, j in S.chunks(S.H.shape[0] - 1):
        F = model.flat_state(model.final_state(S.x[:, i:j], model.unflat_state(S.H[i:j])))
        S.u[i:j] += rho * S.lam * (F + S.u[i:j] - S.H[i + 1:j + 1]) / S.n


def dual(model: LanguageModel, S: btprop.Blocks, m: Any) -> None:
    """The dual step of method.dual_update."""
    if rule(m, "dual_update") == "tprnn":
        dual_step(model, S, m.u_lr)
    else:
        btprop.dual_step(model, S, m.u_lr)


def dual_first(m: Any) -> bool:
    """The authors' default flags: the dual step comes before the h-steps (it
    sees the initial slots); with -mb_init (tprnn_mb) it comes after them."""
    return rule(m, "dual_update") == "tprnn" and m.init != "tprnn_mb"


def dual_last(m: Any) -> bool:
    """tprnn dual with -mb_init: once, after the h-steps (ADMM) or joint steps (ALM)."""
    return rule(m, "dual_update") == "tprnn" and m.init == "tprnn_mb"
