"""Frozen-θ evaluation (SPEC §1): nothing is optimised.

The split is laid out as E parallel streams (data.batchify), the ordinary
recurrence runs over each stream in windows (data.windows), carrying its
state across the whole split, and perplexity = exp(mean NLL over every
predicted token). The NLL is summed in float64 whatever the precision.
The same evaluation over (a prefix of) the training split gives every
method's `train_ppl`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from tprop_exp import UserError
from tprop_exp.data.corpora import batchify, windows

from .model import token_nll

if TYPE_CHECKING:
    from .model import LanguageModel


def evaluate(model: LanguageModel, tokens: torch.Tensor, n_streams: int,
             window: int = 256) -> tuple[float, float]:
    """Mean NLL and perplexity of `model` on a 1-D token stream.

    `window` only bounds memory: the state is carried between windows, so the
    result does not depend on it.
    """
    return evaluate_weighted(model, tokens, n_streams, None, window)[:2]


@torch.no_grad()
def evaluate_weighted(model: LanguageModel, tokens: torch.Tensor, n_streams: int, zero_type: Optional[int],
                      window: int = 256) -> tuple[float, float, Optional[float], Optional[float]]:
    """`evaluate`'s NLL and perplexity (every token counts), and in the same
    pass the authors' numbers (SPEC §6): target type `zero_type` weighted 0,
    the mean still divided by every token (None, None without zero_type)."""
    was_training = model.training
    model.eval()
    device = model.decoder.weight.device
    data = batchify(tokens, n_streams).to(device)  # (T, E)
    x, y, tail = windows(data, window)
    state = model.zero_state(data.shape[1])
    total = torch.zeros((), dtype=torch.float64, device=device)
    zeroed = torch.zeros((), dtype=torch.float64, device=device)  # NLL of the zero-weight type
    for xi, yi in [*zip(x, y), tail]:
        if len(xi):
            logits, state = model(xi, state)
            nll = token_nll(logits, yi)
            total += nll.sum(dtype=torch.float64)
            if zero_type is not None:
                zeroed += (nll * (yi == zero_type)).sum(dtype=torch.float64)
    model.train(was_training)
    count = (data.shape[0] - 1) * data.shape[1]
    if count == 0:
        raise UserError(f"a split of {len(tokens)} tokens leaves nothing to predict in "
                        f"{n_streams} streams (train.eval_batch_size)")
    nll = total.item() / count
    if zero_type is None:
        return nll, perplexity(nll), None, None
    weighted = (total - zeroed).item() / count
    return nll, perplexity(nll), weighted, perplexity(weighted)


def perplexity(nll: float) -> float:
    """exp(nll), inf instead of an overflow for a diverged model."""
    return math.exp(nll) if nll < 700 else math.inf
