"""Updating θ: the run's torch.optim optimizer, global-norm clipping and, for
fp16, a gradient scaler (SPEC §1 "What is reported": precision).

BPTT and BTPROP both call `ThetaStep.backward(loss)` then `.step()`, so the
precision and clipping rules are written once.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .model import LanguageModel

OPTIMIZERS = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}
# The authors' θ rule (SPEC §6): Adagrad with ε = 1e-5 outside the root (torch's
# form), its state kept for the whole run; with train.clip 0.5 and lr_decay 1.
OPTIMIZERS["tprnn_adagrad"] = functools.partial(torch.optim.Adagrad, eps=1e-5)


class ThetaStep:
    """θ's optimizer, with clipping (0 = off) and a gradient scaler for fp16."""

    def __init__(self, opt: torch.optim.Optimizer, clip: float = 0.0, fp16: bool = False) -> None:
        self.opt, self.clip = opt, clip
        self.params = [p for g in opt.param_groups for p in g["params"]]
        device = self.params[0].device.type
        self.scaler = torch.amp.GradScaler(device, enabled=fp16)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, extra: Sequence[torch.Tensor] = ()) -> None:
        """Gradients of `loss` for θ and for the `extra` tensors (ALM's H).

        Under fp16 the loss is scaled; `unscale` takes an extra tensor's
        gradient back to the true scale (θ's is unscaled in `step`).
        """
        loss = self.scaler.scale(loss)
        if extra:
            loss.backward(inputs=[*extra, *self.params])
        else:  # the callers' other leaves are detached: plain backward, no graph pruning
            loss.backward()

    def unscale(self, grad: torch.Tensor) -> torch.Tensor:
        if self.scaler.is_enabled():
            grad.div_(self.scaler.get_scale())
        return grad

    def step(self) -> bool:
        """Global-norm clipping, then the optimizer's step. No host sync in fp32.

        Returns False when the fp16 scaler found an inf/NaN gradient and skipped
        the step (it then lowers its scale), so that a caller can skip the steps
        that the same backward pass fed (ALM's H).
        """
        if self.clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        if not self.scaler.is_enabled():
            self.scaler.step(self.opt)
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(self.opt)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # lowered only after an overflow

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])


def build(model: LanguageModel, cfg: DictConfig) -> ThetaStep:
    """The ThetaStep of a run: train.optimizer at train.lr, train.clip, train.precision."""
    # One fused kernel for the whole step, on a CPU as on CUDA (on this project's CPU
    # bench sizes 3-5x faster than foreach). CUDA has no fused Adagrad: foreach there.
    fast = {"foreach": True} if model.decoder.weight.is_cuda and cfg.train.optimizer in ("adagrad", "tprnn_adagrad") \
        else {"fused": True}
    opt = OPTIMIZERS[cfg.train.optimizer](model.parameters(), lr=cfg.train.lr, **fast)
    return ThetaStep(opt, cfg.train.clip, fp16=cfg.train.get("precision") == "fp16")


def plateau(opt: torch.optim.Optimizer, decay: float) -> torch.optim.lr_scheduler.ReduceLROnPlateau | NoDecay:
    """train.lr_decay: lr ← lr·decay after each epoch whose validation NLL is
    not below the best so far. Any improvement counts (threshold 0), as in
    the authors' script and pytorch/examples, not torch's default 0.01%."""
    if decay >= 1:
        return NoDecay()  # lr_decay 1: no decay, as the authors' BTPROP
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=decay, patience=0, threshold=0.0)


class NoDecay:
    """A scheduler that never changes the learning rate (train.lr_decay=1)."""

    def step(self, metric: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
