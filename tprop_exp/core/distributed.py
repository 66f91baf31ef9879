"""Training over several processes with torch.distributed (SPEC §1, the
parallelism the paper is after).

Launch: `torchrun --nproc_per_node=P -m tprop_exp ...`, or a SLURM job with
one task per GPU (conf/hydra/launcher/slurm.yaml). Backend nccl on GPUs, gloo
on CPUs. Every process runs the same command; the work is shared out so that
one epoch computes what a single process computes, to float rounding:

- BPTT: the B streams are cut into contiguous shares, one per process. Each
  backpropagates its share of the mean loss (scaled by its share of the
  streams) and the θ-gradients are summed over processes before every step.
- Batch-mode BTPROP: the nb blocks are cut into contiguous ranges, one per
  process, which owns their H and u. The only coupling between ranges is the
  penalty term of the constraint across a boundary, F_{a-1} + u_{a-1} = H_a:
  the left process computes it, with a copy of its right neighbour's first
  state H_a as one more row of its H (the "ghost" row). So per h-step a
  process sends one state to the left (H_a, after the step) and one to the
  right (the ghost's gradient, before it); θ-gradients are summed, and
  normalised by the global number of blocks (L = J / nb).
- Mini-batch BTPROP is data-parallel: the stream is cut into P stretches of
  equal length, each process walks its own stretch in mini-batches of B/P
  consecutive blocks, and θ descends the mean over all P·(B/P) blocks. With
  P > 1 this is a different run than one process (P carries instead of one).

Records and checkpoints are written by rank 0. A checkpoint holds every
process's own part (BTPROP's H and u, a pass's position) as a list by rank,
gathered to rank 0 when saving and scattered when resuming; a run resumes
with the number of processes it was started with.
"""
from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from tprop_exp import UserError

from . import btprop, registry

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .model import LanguageModel
    from .optim import ThetaStep

# (rank, world size, local rank): torchrun's names, then SLURM's, then submitit's local executor's.
ENV_NAMES = (("RANK", "WORLD_SIZE", "LOCAL_RANK"),
             ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
             ("SUBMITIT_LOCAL_GLOBALID", "SUBMITIT_LOCAL_NTASKS", "SUBMITIT_LOCAL_LOCALID"))


def environment(env: Optional[Mapping[str, str]] = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as the launcher set them; (0, 1, 0) alone."""
    env = os.environ if env is None else env
    for rank, world, local in ENV_NAMES:
        if rank in env and world in env:
            r, w, lr = int(env[rank]), int(env[world]), int(env.get(local, 0))
            if not 0 <= r < w:
                raise UserError(f"{rank}={r} is not below {world}={w}")
            return r, w, lr
    return 0, 1, 0


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous range [a, b) of n items that `rank` owns (sizes differ by at most 1)."""
    q, r = divmod(n, world)
    a = rank * q + min(rank, r)
    return a, a + q + (rank < r)


def check(cfg: DictConfig, n_tokens: int, world: int) -> None:
    """What a shared-out run needs, checked on every process before any communication."""
    if world == 1:
        return
    m, B = cfg.method, cfg.train.batch_size
    from .tprnn import DEFAULTS  # the authors' rules (SPEC §6) run in one process only
    rules = {k: m.get(k) for k in DEFAULTS if m.get(k) not in (None, DEFAULTS[k])}
    if m.init.startswith("tprnn"):
        rules["init"] = m.init
    if m.h_optimizer == "tprnn_adagrad":
        rules["h_optimizer"] = m.h_optimizer
    if m.name != "bptt" and rules:
        key, value = next(iter(rules.items()))
        raise UserError(f"method.{key}={value} (the authors' rules, SPEC §6) runs in one process only, "
                        f"not over {world}")
    if m.name == "bptt" and B < world:
        raise UserError(f"train.batch_size={B} must be at least the number of processes ({world}) for BPTT")
    if m.name != "bptt" and m.mode == "minibatch" and B % world:
        raise UserError(f"train.batch_size={B} must be a multiple of the number of processes "
                        f"({world}) for mini-batch BTPROP")
    if m.name != "bptt" and m.mode == "batch" and (n_tokens - 1) // m.block_size < world:
        raise UserError(f"{(n_tokens - 1) // m.block_size} blocks of {m.block_size} "
                        f"(method.block_size) cannot be shared by {world} processes")


class Comm:
    """One process's place among the others, and the bytes it has sent."""

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device
        self.nb = None            # batch BTPROP: blocks over all processes
        self.p2p_bytes = 0        # boundary states sent by this process
        self.allreduce_bytes = 0  # θ-gradients, ring model: 2(P-1)/P · size per process

    # -- collectives
    def sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, copy=True)
        dist.all_reduce(t)
        return t

    def norm(self, norm: torch.Tensor) -> torch.Tensor:
        """The 2-norm over every process, given this process's."""
        return self.sum(norm.square()).sqrt()

    def allreduce_grads(self, params: Iterable[torch.Tensor]) -> None:
        grads = [p.grad for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        self.allreduce_bytes += flat.numel() * flat.element_size() * 2 * (self.world - 1) / self.world
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def decide(self, flag: bool) -> bool:
        """Rank 0's yes/no, for all (a clock read on one process only)."""
        t = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())

    # -- batch BTPROP's boundary: the ghost row H[-1] copies the right neighbour's H[0]
    def _exchange(self, send, to, recv, frm):
        ops = []
        if send is not None:
            ops.append(dist.P2POp(dist.isend, send.contiguous(), to))
            self.p2p_bytes += send.numel() * send.element_size()
        if recv is not None:
            ops.append(dist.P2POp(dist.irecv, recv, frm))
        for req in dist.batch_isend_irecv(ops) if ops else []:
            req.wait()

    def refresh(self, H: torch.Tensor) -> None:
        """Send H[0] to the left; the ghost row receives the right neighbour's H[0]."""
        left, right = self.rank > 0, self.rank < self.world - 1
        buf = torch.empty_like(H[0]) if right else None
        self._exchange(H.detach()[0] if left else None, self.rank - 1, buf, self.rank + 1)
        if right:
            with torch.no_grad():
                H[-1] = buf

    def boundary_grad(self, H: torch.Tensor) -> None:
        """The ghost row's gradient is the right neighbour's: send it, zero it, add the left's."""
        left, right = self.rank > 0, self.rank < self.world - 1
        buf = torch.empty_like(H.grad[0]) if left else None
        self._exchange(H.grad[-1] if right else None, self.rank + 1, buf, self.rank - 1)
        if right:
            H.grad[-1] = 0
        if left:
            H.grad[0] += buf

    def gather(self, obj: Any) -> Optional[list]:
        """Every process's `obj` (moved to the CPU), as a list on rank 0; None elsewhere."""
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(to_device(obj, "cpu"), out, dst=0)
        return out

    def scatter(self, objs: Optional[list]) -> Any:
        """Rank 0's list, one element to each process."""
        out = [None]
        dist.scatter_object_list(out, objs if self.rank == 0 else None, src=0)
        return out[0]

    def barrier(self) -> None:
        dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init(device: torch.device) -> tuple[Optional[Comm], torch.device]:
    """The process group of a launched job (None when this process runs alone)."""
    rank, world, local = environment()
    if world == 1:
        return None, device
    if "MASTER_ADDR" not in os.environ:  # a SLURM or submitit task: submitit knows the hosts
        from submitit.helpers import TorchDistributedEnvironment
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # a sweep (-m) under torchrun: its runs share one group
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=timedelta(minutes=30))
        atexit.register(close)
    return Comm(rank, world, device), device


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class SharedTheta:
    """θ's optimizer when the loss is shared out: each process backpropagates
    its part times `scale`, so that the parts sum to the single-process loss,
    and `step` sums the gradients over processes first."""

    def __init__(self, theta: ThetaStep, comm: Comm) -> None:
        self.theta, self.comm, self.scale = theta, comm, 1.0

    def __getattr__(self, name):  # opt, params, scaler, state_dict, ...
        return getattr(self.theta, name)

    def zero_grad(self) -> None:
        self.theta.zero_grad()

    def backward(self, loss: torch.Tensor, extra: Sequence[torch.Tensor] = ()) -> None:
        self.theta.backward(loss * self.scale, extra)

    def unscale(self, grad: torch.Tensor) -> torch.Tensor:
        return self.theta.unscale(grad).div_(self.scale)

    def step(self) -> bool:
        self.comm.allreduce_grads(self.theta.params)
        return self.theta.step()  # the same gradients everywhere: the same skip decision


class Core:
    """The trainer's core interface (train_epoch, end_epoch) over processes,
    for a method that says how it shares out (registry.Method.shares)."""

    def __init__(self, comm: Comm, method: registry.Method | str) -> None:
        if isinstance(method, str):  # a registered method's name
            method = registry.method(method)
        if method.shares not in ("streams", "blocks"):
            raise UserError(f"method {method.name} runs in one process only (its registration "
                            "sets no `shares`)")
        self.comm, self.method = comm, method

    def end_epoch(self, state: dict, cfg: DictConfig) -> None:
        self.method.end_epoch(state, cfg)

    def train_epoch(self, model: LanguageModel, theta: SharedTheta, stream: torch.Tensor, cfg: DictConfig,
                    state: dict, epoch: int = 1, pos: Optional[dict] = None,
                    on_update: Optional[Callable[[dict], Any]] = None) -> dict:
        c, method = self.comm, self.method
        if method.shares == "streams":
            B = cfg.train.batch_size
            T = len(stream) // B
            a, b = share(B, c.rank, c.world)  # these streams: columns a..b-1 of batchify(stream, B)
            theta.scale = (b - a) / B
            stats = method.train_epoch(model, theta, stream[a * T:b * T], local(cfg, b - a), state,
                                     epoch=epoch, pos=pos, on_update=on_update)
            stats["running_nll"] = c.sum(torch.tensor(stats["running_nll"] * theta.scale, dtype=torch.float64)).item()
        elif cfg.method.mode == "minibatch":
            L = len(stream) // c.world
            theta.scale = 1 / c.world
            stats = method.train_epoch(model, theta, stream[c.rank * L:(c.rank + 1) * L],
                                       local(cfg, cfg.train.batch_size // c.world), state,
                                       epoch=epoch, pos=pos, on_update=on_update)
            tokens = stats.pop("tokens")
            mean = c.sum(torch.tensor(list(stats.values()), dtype=torch.float64)) / c.world
            stats = {**dict(zip(stats, mean.tolist())), "tokens": tokens}
        else:
            return batch_btprop_epoch(c, model, theta, stream, cfg, state, epoch, method.update)
        stats["tokens"] = int(c.sum(torch.tensor(stats["tokens"])).item())
        return stats


def local(cfg: DictConfig, batch_size: int) -> DictConfig:
    """The config with this process's batch size."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg.train.batch_size = batch_size
    return cfg


def batch_btprop_epoch(c: Comm, model: LanguageModel, theta: SharedTheta, stream: torch.Tensor,
                       cfg: DictConfig, state: dict, epoch: int, update: Callable[..., dict]) -> dict:
    """btprop.train_epoch's batch mode on this process's range of blocks."""
    m = cfg.method
    device = model.decoder.weight.device
    x, y = btprop.blocks(stream.to(device), m.block_size)
    nb = x.shape[1]
    if nb < 2:
        raise UserError(f"the training split ({len(stream)} tokens) is shorter than two blocks "
                        f"of {m.block_size} (method.block_size)")
    a, b = share(nb, c.rank, c.world)
    x_next = x[0, a + 1:b + 1]  # the first inputs of this range's successors, the ghost's too
    x, y, c.nb = x[:, a:b], y[:, a:b], nb
    right = c.rank < c.world - 1
    lam = state.setdefault("lam", float(m.lam))
    duals_on = epoch >= m.u_start_epoch  # the penalty method has none to turn on
    model.train()
    if state.get("H") is None:
        state["H"] = init_states(c, model, x, m.init)
        state["u"] = torch.zeros(b - a - (not right), model.state_size, dtype=state["H"].dtype, device=device)
    S = btprop.Blocks(x, y, state["H"].requires_grad_(True), state["u"], lam, m.chunk_blocks, comm=c,
                      **btprop.constraint(m), x_next=x_next)
    theta.scale = (b - a) / nb
    sums = update(model, theta, S, m, duals_on)
    state["H"] = S.H.detach()
    total = c.sum(torch.stack([sums["ce"], sums["penalty"], sums["residual"],
                               state["u"].norm(dim=1).sum().double()]))
    return {
        "ce": total[0].item() / nb,
        "penalty": total[1].item() / nb,
        "residual": total[2].item() / (nb - 1),
        "dual_norm": total[3].item() / (nb - 1),
        "h_steps": float(sums["h_steps"]),  # the same on every process (global norm)
        "tokens": nb * m.block_size,
    }


@torch.no_grad()
def init_states(c: Comm, model: LanguageModel, x: torch.Tensor, how: str) -> torch.Tensor:
    """Step 1 on this range, plus the ghost row: `forward` is one pass that
    goes from process to process (each starts from its left neighbour's last F)."""
    h0 = model.flat_state(model.zero_state(1))
    left, right = c.rank > 0, c.rank < c.world - 1
    h1 = h0
    if how == "forward" and left:
        h1 = torch.empty_like(h0)
        dist.recv(h1, c.rank - 1)
    H = btprop.init_states(model, x, h1, how).detach()
    if how == "forward" and right:
        F = model.flat_state(model.final_state(x[:, -1:], model.unflat_state(H[-1:])))
        dist.send(F.contiguous(), c.rank + 1)
    if how == "zero" and left:
        H[0] = 0
    if right:
        H = torch.cat([H, torch.zeros_like(H[:1])])
    c.refresh(H)
    return H



def to_device(obj: Any, device: torch.device | str) -> Any:
    """Tensors in nested dicts, lists and tuples moved to `device`."""
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
