"""Small float64 models and method configs shared by the tests."""
import pytest
import torch
from omegaconf import OmegaConf

from tprop_exp.core.model import LanguageModel
from tprop_exp.core.optim import ThetaStep

V = 7


def cpu_runs_bf16_lstm() -> bool:
    """Whether this CPU runs an LSTM under bf16 autocast: oneDNN's kernel needs
    bf16 support in the CPU (AVX-512); without it the run is refused, not trained."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(2, 2)(torch.zeros(1, 1, 2))
        return True
    except RuntimeError:
        return False


needs_cpu_bf16_lstm = pytest.mark.skipif(not cpu_runs_bf16_lstm(),
                                         reason="this CPU has no bf16 LSTM kernel (oneDNN)")


def tiny_model(cell="lstm", layers=1, hidden=5, seed=0):
    torch.manual_seed(seed)
    return LanguageModel(V, cell=cell, hidden_size=hidden, num_layers=layers, init_range=0.5).double()


def stream(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n,), generator=g)


def method(**kw):
    base = dict(name="penalty", mode="batch", block_size=3, init="forward", h_steps=0,
                h_optimizer="sgd", h_lr=0.1, h_tol=0.0, h_clip=0.0, theta_steps=1, lam=1.0,
                lam_mult=1.0, u_lr=1.0, u_start_epoch=1, chunk_blocks=1000)
    base.update(kw)
    return OmegaConf.create(base)


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def run_cfg(batch_size=1, clip=0.0, **method_kw):
    """The slice of a run config that the training cores read: method.* and train.*."""
    return OmegaConf.create({"method": dict(method(**method_kw)),
                             "train": {"batch_size": batch_size, "clip": clip}})


def sgd(model, lr, clip=0.0, opt=torch.optim.SGD):
    """θ's optimizer as the cores take it (no scaler: fp32)."""
    return ThetaStep(opt(model.parameters(), lr=lr), clip)
