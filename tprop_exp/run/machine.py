"""What this machine can run (SPEC §3: refused before anything is written,
not a traceback and a `failed` record): the device and the precision asked
for, and a model that fits in memory; and the run's seeds and determinism.

torch is imported only when there is something to probe.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from tprop_exp import UserError


def check(root: DictConfig) -> None:
    """The device and precision asked for exist here (SPEC §3: refused before
    anything is written, not a traceback and a `failed` record)."""
    t = root.train
    name = str(t.device)
    if name == "cpu" and t.precision == "fp32":
        return  # nothing to probe: torch is not even imported
    import torch
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"train.device: {name!r} is not available here: no CUDA device "
                            f"(torch {torch.__version__}); use auto or cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"train.device: {name!r} is not available here: {torch.cuda.device_count()} "
                            f"CUDA device(s), cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not (torch.backends.mps.is_built() and torch.backends.mps.is_available()):
        raise UserError("train.device: 'mps' is not available here (no Apple GPU, or torch built without "
                        "it); use auto, cpu or cuda")
    if t.precision != "fp32":
        _precision_runs(root, torch)


def _precision_runs(root: DictConfig, torch: Any) -> None:
    """Autocast at train.precision on this device: try the cell's kernels on a
    tiny input (e.g. CPUs have no fp16 LSTM kernel) and refuse with the reason."""
    from tprop_exp.core.model import PRECISIONS, build_model
    t, a = root.train, root.arch
    device = torch.device("cuda" if t.device == "auto" and torch.cuda.is_available()
                          else "cpu" if t.device == "auto" else str(t.device))
    arch = OmegaConf.merge(a, {"hidden_size": 2})
    try:
        model = build_model(arch, 3).to(device=device, dtype=getattr(torch, t.dtype))
        model.amp_dtype = PRECISIONS[t.precision]  # as the trainer sets it
        x = torch.zeros(2, 1, dtype=torch.long, device=device)
        model(x, model.zero_state(1, device))[0].float().sum().backward()
        model.states_every(x, model.zero_state(1, device), 1)  # BTPROP's path
    except (RuntimeError, TypeError, NotImplementedError, AssertionError) as e:
        other = "fp32 (or bf16)" if t.precision == "fp16" else "fp32"
        cause = str(e).splitlines()[0].split(". Run workload")[0] if str(e) else type(e).__name__
        raise UserError(f"train.precision: {t.precision!r} does not run on {device.type} with "
                        f"arch.cell={a.cell} ({cause}); use {other}, or another device") from None


GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks per layer (a cell of one's own: as an LSTM)
OPT_STATE = {"sgd": 0, "adagrad": 1, "adam": 2}  # optimizer tensors per parameter


def memory_need(cfg: DictConfig, vocab: int, n_train: int) -> tuple[int, int]:
    """(parameter, activation) bytes a run needs at least, from its config:
    θ with its gradient and optimizer state, and one update's logits and gates
    (BTPROP's batch mode also keeps H, its gradient and the duals for every block)."""
    t, a, m = cfg.train, cfg.arch, cfg.method
    h, L, g = a.hidden_size, a.num_layers, GATES.get(a.cell, 4)
    size = 8 if t.dtype == "float64" else 4
    params = 2 * vocab * h + vocab + L * g * h * (2 * h + 2)
    fixed = params * size * (2 + OPT_STATE.get(t.optimizer, 2))
    K, B = m.block_size, t.batch_size
    acts = 2 * K * B * (vocab + L * g * h) * size
    if m.get("mode") == "batch" and m.name != "bptt":
        acts += 4 * (n_train // max(K, 1)) * L * h * 2 * size
    return fixed, acts


def available_memory(device: Any) -> int:
    """Bytes free for a run: the GPU's free memory, or the host's available
    memory (MemAvailable, within a cgroup's limit)."""
    if device.type == "cuda":
        import torch
        return torch.cuda.mem_get_info(device)[0]
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        text = Path("/proc/meminfo").read_text()
        free = int(re.search(r"MemAvailable:\s+(\d+) kB", text)[1]) * 1024
    except (OSError, TypeError):
        pass
    try:  # a container's limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def memory(cfg: DictConfig, vocab: int, n_train: int, device: Any) -> None:
    """Refuse a model that cannot fit, before building it (one line, with the numbers)."""
    fixed, acts = memory_need(cfg, vocab, n_train)
    free = available_memory(device)
    if fixed + acts <= free:
        return
    key, value = (("arch.hidden_size", cfg.arch.hidden_size) if fixed >= acts
                  else ("train.batch_size", cfg.train.batch_size))
    raise UserError(f"{key}: {value} needs at least {fixed + acts:,} bytes of memory on {device.type} "
                    f"({_gib(fixed)} for the parameters, gradients and optimizer state, {_gib(acts)} for one "
                    f"update's activations; vocabulary {vocab:,}) but {free:,} bytes ({_gib(free)}) are "
                    "available; use a smaller arch.hidden_size, train.batch_size or method.block_size")


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GiB"


def seed_everything(seed: int) -> None:
    """The RNGs a run may draw from: torch's (CPU and every GPU), Python's, NumPy's."""
    import random

    import numpy as np
    import torch
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """train.deterministic: torch's deterministic algorithms (an error for an
    operation that has none), cuDNN without autotuning, and cuBLAS's fixed
    workspace; restored afterwards, since a sweep's runs may share a process."""
    if not on:
        yield
        return
    import torch
    old = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
           torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[1], old[2]
        if old[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
