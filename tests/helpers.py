"""Small float64 models and method configs shared by the tests."""
import torch
from omegaconf import OmegaConf

from tprop_exp.core.model import LanguageModel
from tprop_exp.core.optim import ThetaStep

V = 7


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
