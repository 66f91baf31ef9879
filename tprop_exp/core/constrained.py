"""Constrained h-optimisation (SPEC §7), the paper's proposal for why
h-steps hurt: H is unconstrained.

- `method.h_param=tanh`: the h-steps move Z, with H = tanh(Z) on every
  coordinate the cell bounds (`HVar`);
- `method.penalty=l2|kl|l2+kl`, `method.kl_weight` μ: J's constraint term is
  the quadratic penalty, μ·Σ_b KL(p(·|F_b) ‖ p(·|H_{b+1})) (`kl_term`), or both.

btprop.py calls these from its objective and h-steps; the defaults (free, l2,
μ = 0) leave today's computation as it was.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from tprop_exp import UserError

from .model import TORCH_CELLS

if TYPE_CHECKING:
    from .btprop import Blocks
    from .model import LanguageModel


H_PARAMS = ("free", "tanh")
PENALTIES = ("l2", "kl", "l2+kl")  # method.penalty
ATANH_EPS = 1e-6  # tanh: H is clamped into [-1 + eps, 1 - eps] before Z = atanh(H)


def bounded(model: LanguageModel) -> torch.Tensor:
    """The coordinates of the flat state that the cell bounds to (-1, 1): an
    RNN's and a GRU's whole state, an LSTM's h (flat_state puts every layer's
    h first), not its c."""
    if type(model.rnn) not in TORCH_CELLS:
        raise UserError(f"method.h_param=tanh: which state coordinates the cell {model.cell!r} "
                        "bounds is not known (rnn, gru and lstm are)")
    mask = torch.zeros(model.state_size, dtype=torch.bool, device=model.decoder.weight.device)
    mask[:model.num_layers * model.hidden_size] = True  # h of every layer (all of it for RNN, GRU)
    return mask


class HVar:
    """The leaf the h-steps move. `free`: H itself. `tanh`: Z, with H = tanh(Z)
    on the coordinates the cell bounds of every free row (H_1, when fixed, is
    not parametrised) and H = Z elsewhere; Z starts at atanh(clamp(H)), so from a
    forward initialisation, and S.H is rewritten after each step (`write`).

    The objective runs chunk by chunk, each chunk with its own backward, so
    it differentiates a detached copy of H (`blocks`, `target`), and `pull`
    takes that gradient to Z by the chain rule, ∂J/∂Z = ∂J/∂H ⊙ (1 − tanh²Z).
    The ghost row of distributed.py is a free row too, so Z's ghost row
    follows its owner exactly as H's does (boundary_grad, refresh act on Z)."""

    def __init__(self, model: LanguageModel, S: Blocks, h_param: str = "free") -> None:
        self.mask = None
        self.leaf = self.target = S.H
        if h_param == "free":
            return
        self.mask = bounded(model).expand_as(S.H).clone()
        if not S.free_first and (S.comm is None or S.comm.rank == 0):
            self.mask[0] = False  # H_1 is fixed, not a free variable (free under method.slots=all_free)
        with torch.no_grad():
            Z = torch.where(self.mask, torch.atanh(S.H.clamp(-1 + ATANH_EPS, 1 - ATANH_EPS)), S.H)
        self.leaf = Z.requires_grad_(True)

    @torch.no_grad()
    def H(self) -> torch.Tensor:
        return torch.where(self.mask, torch.tanh(self.leaf), self.leaf)

    def blocks(self, S: Blocks) -> Blocks:
        """S for the objective: S itself (free), or with H(Z) as a fresh leaf `target`."""
        if self.mask is None:
            return S
        self.target = self.H().requires_grad_(True)
        return dataclasses.replace(S, H=self.target)

    @torch.no_grad()
    def pull(self) -> None:
        """Z's gradient from H's (tanh); nothing to do when H is the leaf."""
        if self.mask is not None:
            self.leaf.grad = self.target.grad * torch.where(self.mask, 1 - torch.tanh(self.leaf) ** 2, 1.0)

    @torch.no_grad()
    def write(self, S: Blocks) -> None:
        if self.mask is not None:
            S.H.copy_(self.H())


def constraint(m: Any) -> dict:
    """Blocks' keywords for method.penalty and method.kl_weight (defaults: today's l2)."""
    return {"penalty": m.get("penalty", "l2"), "mu": float(m.get("kl_weight", 0.0))}


def kl_term(model: LanguageModel, Fb: torch.Tensor, H_next: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
    """Σ_b KL(p(·|F_b) ‖ p(·|H_{b+1})), SPEC §7: p(·|s) is the model's
    distribution for block b+1's first target after one step from state s on
    block b+1's first input. Every side carries gradient, as in the λ term:
    θ through both one-step predictions and F_b, H_b through F_b, H_{b+1}
    directly; neither distribution is treated as a fixed target. (At F_b =
    H_{b+1} it and its gradient vanish, so T1 still holds.)"""
    m = x_next.shape[0]
    logits, _ = model(x_next.view(1, m).repeat(1, 2), model.unflat_state(torch.cat([Fb, H_next])))
    logp = torch.log_softmax(logits[0].float() if logits.dtype in (torch.bfloat16, torch.float16)
                             else logits[0], dim=-1)
    # kl_div(input, target) = Σ p_target (log p_target − input): target p(·|F_b), input log p(·|H_{b+1})
    return F.kl_div(logp[m:], logp[:m], reduction="sum", log_target=True)
