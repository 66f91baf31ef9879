"""Truncated BPTT, the baseline (SPEC §1).

The training stream is laid out as B parallel streams (T, B). Each update
unrolls K steps from the previous window's final state, detached, so no
gradient crosses a window boundary. Only whole windows are used: the last
(T - 1) mod K positions of each stream are dropped, as BTPROP drops its tail.

`minibatch` mode makes one update per window. `batch` mode (full-batch BPTT)
accumulates the exact gradient of the mean NLL over every window of the epoch
and makes one update per pass.
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import UserError
from .data import batchify
from .models import detach


def windows(stream, batch_size, K):
    """(inputs, targets) of shape (nw, K, B): the K-step windows of B streams."""
    data = batchify(stream, batch_size)
    nw = (data.shape[0] - 1) // K
    if nw == 0:
        raise UserError(f"the training split ({len(stream)} tokens) is too short for one window "
                        f"of {K} steps in {batch_size} streams (train.batch_size, method.block_size)")
    x = data[:nw * K].reshape(nw, K, -1)
    y = data[1:nw * K + 1].reshape(nw, K, -1)
    return x, y


def train_epoch(model, opt, stream, *, batch_size, K, clip, mode, pos=None, on_update=None):
    """One pass over the training stream; returns {"nll": mean train NLL, "tokens": n}.

    `pos` resumes a pass cut short ({"update", "state", "nll_sum"}), and
    `on_update(pos)` is called after each update so the caller can checkpoint.
    """
    device = model.decoder.weight.device
    x, y = windows(stream, batch_size, K)
    x, y = x.to(device), y.to(device)
    nw = x.shape[0]
    start = pos["update"] if pos else 0
    state = pos["state"] if pos else model.zero_state(x.shape[2])
    nll_sum = pos["nll_sum"] if pos else torch.zeros((), dtype=torch.float64, device=device)
    params = [p for p in model.parameters()]
    model.train()
    if mode == "batch":
        opt.zero_grad(set_to_none=True)
    for i in tqdm(range(start, nw), desc="bptt", leave=False, disable=None, mininterval=2):
        logits, state = model(x[i], state)
        loss = F.cross_entropy(logits.flatten(0, 1), y[i].flatten())
        nll_sum += loss.detach().double()
        state = detach(state)
        if mode == "minibatch":
            opt.zero_grad(set_to_none=True)
            loss.backward()
            step(opt, params, clip)
        else:  # full batch: gradient of the mean over all windows
            (loss / nw).backward()
        if on_update is not None:
            on_update({"update": i + 1, "state": state, "nll_sum": nll_sum})
    if mode == "batch":
        step(opt, params, clip)
    return {"nll": nll_sum.item() / nw, "tokens": nw * K * x.shape[2]}


def step(opt, params, clip):
    """Global-norm clipping (0 = off), then the optimizer's step. No host sync."""
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
