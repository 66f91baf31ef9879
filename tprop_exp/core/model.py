"""The language model (SPEC §1): embedding, recurrent cell, linear decoder.

The recurrent cell is a registered cell (core/registry.py); the built-in ones
are torch.nn's RNN/GRU/LSTM modules, so a GPU runs cuDNN. Tensors are
time-major: tokens (T, n) -> logits (T, n, V).

The *state* is what the recurrence carries: a tensor (L, n, d) for RNN/GRU and
a pair (h, c) of such tensors for LSTM. BTPROP keeps free variables in that
space, flattened per sequence to a vector of size `state_size` by `flat_state`.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from . import registry
from .registry import Cell, register_cell

if TYPE_CHECKING:
    from omegaconf import DictConfig

register_cell(Cell("rnn", lambda d, L: nn.RNN(d, d, L)))   # tanh RNN
register_cell(Cell("gru", lambda d, L: nn.GRU(d, d, L)))
register_cell(Cell("lstm", lambda d, L: nn.LSTM(d, d, L), parts=2))
TORCH_CELLS = (nn.RNN, nn.GRU, nn.LSTM)  # states_every's fast path knows their weights
# train.precision: the dtype of the forward pass under autocast (weights stay fp32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class LanguageModel(nn.Module):
    def __init__(self, vocab_size: int, cell: str = "lstm", hidden_size: int = 100, num_layers: int = 1,
                 init_range: float = 0.1, init: str = "uniform") -> None:
        super().__init__()
        if cell not in registry.CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {sorted(registry.CELLS)}")
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.parts = registry.CELLS[cell].parts  # 2: the state is a pair (h, c)
        self.embed = nn.Embedding(vocab_size, hidden_size)  # embedding size = hidden size
        self.rnn = registry.CELLS[cell].make(hidden_size, num_layers)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.amp_dtype = None  # set by the trainer from train.precision
        self.zero_type = None  # train.zero_weight_first_type: the token type trained with weight 0
        # One layer of the cell, weightless: `states_every` runs layer l through it
        # with layer l's weights (a tuple keeps it out of the parameters).
        kind = type(self.rnn)
        self._one = (kind(hidden_size, hidden_size, 1, device="meta"),) if kind in TORCH_CELLS else None
        if init == "tprnn":  # SPEC §6: the authors' init
            self._init_tprnn(init_range)
        elif init == "uniform":
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)
        else:
            raise ValueError(f"unknown arch.init {init!r}; choose uniform or tprnn")

    def _init_tprnn(self, init_range: float) -> None:
        """Embedding and decoder weights U(±init_range), decoder bias 0, the
        recurrent weights and biases U(±1/√d) as cuDNN's (and torch's) default.
        Parameters in the same order as `uniform`, one draw each."""
        rnn = {id(p) for p in self.rnn.parameters()}
        bound = self.hidden_size ** -0.5
        for p in self.parameters():
            if p is self.decoder.bias:
                nn.init.zeros_(p)
            elif id(p) in rnn:
                nn.init.uniform_(p, -bound, bound)
            else:
                nn.init.uniform_(p, -init_range, init_range)

    @property
    def state_size(self) -> int:
        """Length of one sequence's flattened state: L·d, or 2·L·d for an LSTM."""
        return self.num_layers * self.hidden_size * self.parts

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass (a no-op for fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.decoder.weight.device.type, dtype=self.amp_dtype)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor | tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, ...]]:
        """tokens (T, n), state for n sequences -> logits (T, n, V), final state.

        Under mixed precision the logits come in the reduced dtype (token_nll
        takes them to fp32); the state goes back to the weights' dtype, so the
        free variables and the carried state stay in full precision.
        """
        with self.autocast():
            out, state = self.rnn(self.embed(tokens), state)
            logits = self.decoder(out)
        return logits, self._cast(state)

    def final_state(self, tokens: torch.Tensor, state: torch.Tensor | tuple[torch.Tensor, ...]
                    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The recurrence alone, no decoder: tokens (T, n), state -> final state."""
        with self.autocast():
            state = self.rnn(self.embed(tokens), state)[1]
        return self._cast(state)

    @torch.no_grad()
    def states_every(self, tokens: torch.Tensor, state: torch.Tensor | tuple[torch.Tensor, ...], K: int
                     ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, ...]]:
        """One stream of whole blocks: tokens (T, 1), T a multiple of K, state
        -> its flattened state after steps K, 2K, ..., T, shape (T/K,
        state_size), and the final state.

        Every layer runs over all T steps in one call of a one-layer module
        with that layer's weights, so every layer's h comes back at every
        step. An LSTM's c_t (which the module does not return per step) is
        recovered from the gates, f, i, g = σ, σ, tanh of
        W_ih x_t + b_ih + W_hh h_{t-1} + b_hh, as the linear recurrence
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t: composed over each block's K steps
        (all blocks at once), then across blocks by a parallel scan.
        """
        if self._one is None:
            return self._states_every_block(tokens, state, K)
        L, lstm = self.num_layers, isinstance(self.rnn, nn.LSTM)
        h0, c0 = state if lstm else (state, None)
        ends, final_h, final_c = [], [], []
        with self.autocast():
            inp = self.embed(tokens)
            for layer in range(L):
                w = {f"{k}_l0": getattr(self.rnn, f"{k}_l{layer}")
                     for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
                s0 = (h0[layer:layer + 1], c0[layer:layer + 1]) if lstm else h0[layer:layer + 1]
                out, last = functional_call(self._one[0], w, (inp, s0))
                final_h.append(last[0] if lstm else last)
                ends.append(out[K - 1::K, 0])
                if lstm:
                    h_prev = torch.cat([s0[0], out[:-1]])
                    gates = F.linear(inp, w["weight_ih_l0"], w["bias_ih_l0"]) \
                        + F.linear(h_prev, w["weight_hh_l0"], w["bias_hh_l0"])
                    i, f, g, _ = gates[:, 0].to(s0[1].dtype).chunk(4, 1)  # torch's gate order
                    a = torch.sigmoid(f).view(-1, K, f.shape[1])
                    b = (torch.sigmoid(i) * torch.tanh(g)).view(a.shape)
                    A, B = a[:, 0], b[:, 0]  # per block: c_end = A ⊙ c_start + B
                    for k in range(1, K):
                        A, B = a[:, k] * A, a[:, k] * B + b[:, k]
                    ends.append(linear_scan(A, B, s0[1][0, 0]))  # across blocks
                    final_c.append(last[1])
                inp = out
        # flat_state's order: every layer's h, then every layer's c
        flat = torch.cat(ends[0::2] + ends[1::2] if lstm else ends, dim=1)
        final = (torch.cat(final_h), torch.cat(final_c)) if lstm else torch.cat(final_h)
        return flat.to(self.decoder.weight.dtype), self._cast(final)

    def _states_every_block(self, tokens, state, K):
        """states_every for a cell of one's own: block by block (a loop over blocks)."""
        ends = []
        with self.autocast():
            inp = self.embed(tokens)
            for i in range(0, tokens.shape[0], K):
                state = self.rnn(inp[i:i + K], state)[1]
                ends.append(self.flat_state(self._cast(state)))
        return torch.cat(ends).to(self.decoder.weight.dtype), self._cast(state)

    def _cast(self, state):
        dtype = self.decoder.weight.dtype
        return tuple(s.to(dtype) for s in state) if isinstance(state, tuple) else state.to(dtype)

    def zero_state(self, n: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        p = self.decoder.weight
        z = torch.zeros(self.num_layers, n, self.hidden_size,
                        device=device or p.device, dtype=dtype or p.dtype)
        return tuple(z.clone() for _ in range(self.parts)) if self.parts > 1 else z

    def flat_state(self, state: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """State for n sequences -> (n, state_size); layer-major, h before c."""
        parts = state if isinstance(state, tuple) else (state,)
        return torch.cat([s.transpose(0, 1).reshape(s.shape[1], -1) for s in parts], dim=1)

    def unflat_state(self, flat: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """(n, state_size) -> the module's state for n sequences (inverse of flat_state)."""
        n, L, d = flat.shape[0], self.num_layers, self.hidden_size
        parts = [p.reshape(n, L, d).transpose(0, 1).contiguous()
                 for p in flat.split(L * d, dim=1)]
        return tuple(parts) if self.parts > 1 else parts[0]


def token_nll(logits: torch.Tensor, targets: torch.Tensor, zero_type: Optional[int] = None) -> torch.Tensor:
    """Per-token negative log-likelihood (T, n), computed in fp32 or better.
    `zero_type`: that target type gets weight 0 (its NLL is 0; a mean still
    counts it), the authors' train.zero_weight_first_type (SPEC §6)."""
    nll = F.cross_entropy(_fp32(logits).flatten(0, 1), targets.flatten(), reduction="none")
    nll = nll.view(targets.shape)
    return nll if zero_type is None else nll * (targets != zero_type)


def mean_nll(logits: torch.Tensor, targets: torch.Tensor, zero_type: Optional[int] = None) -> torch.Tensor:
    """Mean NLL over all tokens in one fused kernel (BPTT's loss, every update);
    with `zero_type`, as token_nll, still divided by every token."""
    if zero_type is not None:
        return token_nll(logits, targets, zero_type).mean()
    return F.cross_entropy(_fp32(logits).flatten(0, 1), targets.flatten())


def _fp32(logits):
    """Reduced-precision logits to fp32, so the loss is computed in fp32 or better."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


def linear_scan(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """c_t = a_t ⊙ c_{t-1} + b_t for t = 1..T, from c0: (T, d), (T, d), (d,) -> (T, d).

    Hillis–Steele scan: after the round with offset s, row t holds the
    composition of rows t-2s+1..t, as the pair (Π a, c from a zero start);
    log2(T) rounds of whole-array products instead of T steps.
    """
    a, b = a.clone(), b.clone()
    b[0] += a[0] * c0
    s = 1
    while s < a.shape[0]:
        b[s:] = a[s:] * b[:-s] + b[s:]  # the right side is evaluated before writing
        a[s:] = a[s:] * a[:-s]
        s *= 2
    return b


def detach(state: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Cut the graph at a window boundary: no gradient crosses it."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def build_model(arch_cfg: DictConfig, vocab_size: int) -> LanguageModel:
    """The model of a run's `arch` config (importing `arch._target_`, a cell of one's own, first)."""
    registry.cell(arch_cfg.cell, arch_cfg.get("_target_"))
    return LanguageModel(vocab_size, cell=arch_cfg.cell, hidden_size=arch_cfg.hidden_size,
                         num_layers=arch_cfg.num_layers, init_range=arch_cfg.init_range,
                         init=arch_cfg.get("init") or "uniform")
