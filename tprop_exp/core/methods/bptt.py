"""Truncated BPTT, the baseline (SPEC §1).

The training stream is laid out as B parallel streams (T, B) and cut into
K-step windows (data.windows). Each update unrolls one window from the
previous window's final state, detached, so no gradient crosses a window
boundary. Only whole windows are used: the last (T - 1) mod K positions of
each stream are dropped, as BTPROP drops its tail.

`minibatch` mode makes one update per window. `batch` mode (full-batch BPTT)
accumulates the exact gradient of the mean NLL over every window of the epoch
and makes one update per pass.

The trainer's interface (core/registry.py): `train_epoch(model, theta,
stream, cfg, state, epoch)` and `end_epoch(state, cfg)`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from tprop_exp import UserError
from tprop_exp.data.corpora import batchify, windows

from . import BTPropConf
from ..model import detach, mean_nll
from ..registry import Method, register_method

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from ..distributed import SharedTheta
    from ..model import LanguageModel
    from ..optim import ThetaStep


def train_epoch(model: LanguageModel, theta: ThetaStep | SharedTheta, stream: torch.Tensor, cfg: DictConfig,
                state: dict, epoch: int = 1, pos: Optional[dict] = None,
                on_update: Optional[Callable[[dict], Any]] = None) -> dict:
    """One pass over the training stream.

    Returns {"running_nll": mean NLL of the windows as θ moved, "tokens": n}.
    `pos` resumes a pass cut short ({"update", "state", "nll_sum"}), and
    `on_update(pos)` is called after each update so the caller can checkpoint.
    BPTT keeps nothing across epochs: `state` is unused.
    """
    K, B, mode = cfg.method.block_size, cfg.train.batch_size, cfg.method.mode
    device = model.decoder.weight.device
    x, y, _ = windows(batchify(stream, B).to(device), K)  # (nw, K, B)
    nw = x.shape[0]
    if nw == 0:
        raise UserError(f"the training split ({len(stream)} tokens) is too short for one window "
                        f"of {K} steps in {B} streams (train.batch_size, method.block_size)")
    start = pos["update"] if pos else 0
    h = pos["state"] if pos else model.zero_state(B)
    nll_sum = pos["nll_sum"] if pos else torch.zeros((), dtype=torch.float64, device=device)
    model.train()
    if mode == "batch":
        theta.zero_grad()
    for i in range(start, nw):  # progress: the trainer, through on_update
        logits, h = model(x[i], h)
        loss = mean_nll(logits, y[i], model.zero_type)
        nll_sum += loss.detach().double()
        h = detach(h)
        if mode == "minibatch":
            theta.zero_grad()
            theta.backward(loss)
            theta.step()
        else:  # full batch: gradient of the mean over all windows
            theta.backward(loss / nw)
        if on_update is not None:
            on_update({"update": i + 1, "state": h, "nll_sum": nll_sum})
    if mode == "batch":
        theta.step()
    return {"running_nll": nll_sum.item() / nw, "tokens": nw * K * B}


def end_epoch(state: dict, cfg: DictConfig) -> None:
    """Nothing to carry into the next epoch."""


# BPTT's config has the BTPROP keys too, so that one sweep may mix methods;
# it reads only these, and only these make its identity.
register_method(Method("bptt", train_epoch, end_epoch, schema=BTPropConf,
                       reads=("name", "mode", "block_size"), shares="streams"))
