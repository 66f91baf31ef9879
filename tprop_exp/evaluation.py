"""Frozen-θ evaluation (SPEC §1): nothing is optimised.

The split is laid out as E parallel streams (batchify), the ordinary recurrence
runs over each stream carrying its state across the whole split, and
perplexity = exp(mean NLL over every predicted token).
"""
import math

import torch
import torch.nn.functional as F

from .data import batchify


@torch.no_grad()
def evaluate(model, tokens, n_streams, window=256):
    """Mean NLL and perplexity of `model` on a 1-D token stream.

    `window` only bounds memory: the state is carried between windows, so the
    result does not depend on it.
    """
    was_training = model.training
    model.eval()
    device = model.decoder.weight.device
    data = batchify(tokens, n_streams).to(device)  # (T, E)
    state = model.zero_state(data.shape[1])
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, data.shape[0] - 1, window):
        x = data[i:i + window]
        y = data[i + 1:i + 1 + window]
        x = x[:y.shape[0]]
        logits, state = model(x, state)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").double()
    model.train(was_training)
    count = (data.shape[0] - 1) * data.shape[1]
    nll = total.item() / count
    return nll, perplexity(nll)


def perplexity(nll):
    """exp(nll), inf instead of an overflow for a diverged model."""
    return math.exp(nll) if nll < 700 else math.inf
