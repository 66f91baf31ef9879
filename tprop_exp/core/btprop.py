"""Block target propagation, BTPROP (SPEC §1). TPROP is the case K = 1.

The training stream x_1..x_N is cut into nb = floor((N-1)/K) blocks of K
tokens. Block b starts from a state H_b and runs the ordinary recurrence for K
steps; F_b(H_b; θ) is its final state. H_1 is fixed (zeros, or the state
carried in from the previous mini-batch); H_2..H_n are free variables, one
flattened state (model.flat_state) per block. With scaled duals u_b (u = 0 for
the penalty method) the objective of a set S of n blocks is

    L(θ, H, u) = (1/n) J,
    J = Σ_b CE_b(θ, H_b) + Σ_{b<n} (λ/2) ||F_b(H_b; θ) + u_b − H_{b+1}||²,
    CE_b = (1/K) Σ_{t in b} NLL_t.

θ-steps descend L. h-steps descend J: each H_b sees only its own terms, so
its step does not shrink as S grows (and, with λ = 1/η, one SGD h-step of
size η gives the limit of SPEC T2).

Blocks are independent given H, so a chunk of blocks runs through the
recurrent module at once (block index = batch dimension); the recurrence depth
is only K. In `batch` mode every block of the training set is in S, H and u
persist across updates, and each step sums the chunks' gradients exactly.

One update (`update`), the steps of SPEC §1:
  1. initialise H (`forward`: H_{b+1} = F_b(H_b); `zero`: H = 0) and u = 0:
     in batch mode once, at the start of training; in mini-batch mode for
     every mini-batch;
  2. n_h h-steps on H, θ fixed (Adagrad or SGD, restarted every update as in
     the authors' code; early stop below a gradient-norm tolerance, by masking
     further steps: no host sync in the loop);
  3. n_θ θ-steps on θ, H fixed (the run's optimizer, global-norm clipping);
  4. dual step  u_b ← u_b + ρ (F_b − H_{b+1})  (ADMM, ALM; from u_start_epoch).
How a method orders steps 2–4 is the method's own module (core/methods/:
penalty.py, admm.py, alm.py); this module holds the objective and the steps.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from tprop_exp import UserError
from tprop_exp.data.corpora import windows

from .constrained import HVar, constraint, kl_term
from .model import token_nll
from .methods import BTPropConf
from .registry import Method

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .distributed import Comm, SharedTheta
    from .model import LanguageModel
    from .optim import ThetaStep

INITS = ("forward", "zero")  # method.init (and the authors' tprnn_zero, tprnn_mb: core/tprnn.py)
# method.h_optimizer: optimizers that stay put on a zero gradient (see masked_step)
H_OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
# The authors' rules (SPEC §6): core/tprnn.py; these names only make them valid choices.
INITS += ("tprnn_zero", "tprnn_mb")
H_OPTIMIZERS["tprnn_adagrad"] = functools.partial(torch.optim.Adagrad, eps=1e-5)  # tprnn.h_steps


@dataclass
class Blocks:
    """A set S of n consecutive blocks and its variables."""
    x: torch.Tensor  # (K, n) inputs: column b is block b
    y: torch.Tensor  # (K, n) targets, the inputs shifted by one token
    H: torch.Tensor  # (n, S) start states H_b, a leaf that h-steps move; H_1 = H[0] is fixed
    u: torch.Tensor  # (n-1, S) scaled duals u_b of the constraints F_b = H_{b+1}
    lam: float       # λ
    chunk: int       # blocks per forward/backward pass: memory only, never the result
    # Blocks spread over processes (distributed.py): H and u then have one more
    # row, the right neighbour's first H and the dual of the constraint across.
    comm: object = None
    # method.slots=all_free (SPEC §6): H has n+1 rows, u has n, and H_1 moves too.
    free_first: bool = False
    # SPEC §7's constraint term (method.penalty, method.kl_weight μ): with "kl"
    # in it, J has μ·Σ_b KL(p(·|F_b) ‖ p(·|H_{b+1})); without "l2", no λ term.
    # x_next: the first input of each block with a successor (the rows H[1:]);
    # None: x[0, 1:], the blocks of S (distributed.py passes the ghost's too).
    penalty: str = "l2"
    mu: float = 0.0
    x_next: Optional[torch.Tensor] = None

    @property
    def n(self) -> int:
        return self.x.shape[1]

    def chunks(self, n: Optional[int] = None) -> list[tuple[int, int]]:
        """Ranges (i, j) of at most `chunk` blocks covering the first n (all)."""
        n = self.n if n is None else n
        return [(i, min(i + self.chunk, n)) for i in range(0, n, self.chunk)]


def blocks(stream: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (K, nb): column b is block b of the stream."""
    x, y, _ = windows(stream.view(-1, 1), K)
    return x[..., 0].t(), y[..., 0].t()


def chunk_terms(model: LanguageModel, x: torch.Tensor, y: torch.Tensor, H: torch.Tensor,
                H_next: torch.Tensor, u: torch.Tensor, lam: float, mu: float = 0.0,
                x_next: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk's terms: x, y (K, c); H (c, S); H_next, u (m, S), m ≤ c the
    blocks with a successor; x_next (m,) their successors' first inputs, given
    when J has the KL term. Fixed shapes: `compile` may compile it."""
    logits, Fs = model(x, model.unflat_state(H))
    Fb = model.flat_state(Fs)                                       # F_b(H_b; θ)
    ce = token_nll(logits, y, model.zero_type).mean(0).sum()        # Σ_b CE_b, CE_b = (1/K) Σ_t NLL_t
    diff = Fb[:H_next.shape[0]] - H_next                            # F_b − H_{b+1}
    pen = 0.5 * lam * (diff + u).pow(2).sum()                       # Σ_b (λ/2)||F_b + u_b − H_{b+1}||²
    if x_next is not None:
        pen = pen + mu * kl_term(model, Fb[:H_next.shape[0]], H_next, x_next)
    return ce, pen, diff.norm(dim=1).sum(), Fb[-1:]


TERMS = {"fn": chunk_terms}  # train.compile swaps in a compiled chunk_terms


def compile_terms(on: bool, backend: str = "inductor") -> None:
    """train.compile: compile chunk_terms (the bulk of every step) or not."""
    TERMS["fn"] = torch.compile(chunk_terms, backend=backend, dynamic=False) if on else chunk_terms


def objective(model: LanguageModel, S: Blocks,
              backward: Optional[Callable[[torch.Tensor], Any]] = None) -> dict:
    """J over the blocks of S, chunk by chunk.

    `backward(J_chunk)` is called for each chunk, so gradients accumulate over
    chunks exactly as over the whole set. Returns detached sums (CE, penalty,
    Σ||F_b − H_{b+1}||) as device tensors, float64, and F_n, the last block's
    final state (the carry into the next mini-batch).
    """
    terms = []
    lam = S.lam if "l2" in S.penalty else 0.0                       # method.penalty=kl: no λ term
    x_next = None
    if "kl" in S.penalty:
        x_next = S.x[0, 1:] if S.x_next is None else S.x_next
    for i, j in S.chunks():
        m = min(j, S.H.shape[0] - 1) - i                            # blocks with a successor
        kl = {} if x_next is None else {"mu": S.mu, "x_next": x_next[i:i + m]}
        ce, pen, res, last = TERMS["fn"](model, S.x[:, i:j], S.y[:, i:j], S.H[i:j],
                                         S.H[i + 1:i + 1 + m], S.u[i:i + m], lam, **kl)
        if backward is not None:
            backward(ce + pen)                                      # J of the chunk
        terms.append(torch.stack([ce, pen, res]).detach())
    sums = torch.stack(terms).double().sum(0)                       # one reduction per pass
    return {"ce": sums[0], "penalty": sums[1], "residual": sums[2], "last": last.detach()}


@torch.no_grad()
def forward_init(model: LanguageModel, x: torch.Tensor, h1: torch.Tensor,
                 stretch: int = 4096) -> torch.Tensor:
    """H_1 = h1, H_{b+1} = F_b(H_b): one sequential pass with the current θ.

    The blocks of x are consecutive in the stream, so the pass is the plain
    recurrence over the stream, read at block ends (model.states_every: no
    step per block, every cell and depth). It runs in stretches of `stretch`
    blocks, carrying the state, which bounds memory only.
    """
    K, n = x.shape
    H = torch.empty(n, model.state_size, dtype=h1.dtype, device=h1.device)
    H[0] = h1[0]
    state = model.unflat_state(h1)
    for i in range(0, n - 1, stretch):
        j = min(i + stretch, n - 1)  # the last block's end state is no H
        ends, state = model.states_every(x[:, i:j].t().reshape(-1, 1), state, K)
        H[i + 1:j + 1] = ends
    return H


def init_states(model: LanguageModel, x: torch.Tensor, h1: torch.Tensor, how: str) -> torch.Tensor:
    """Step 1: H for the blocks of x (a fresh leaf tensor), H_1 = h1."""
    if how == "forward":
        H = forward_init(model, x, h1)
    elif how == "zero":
        H = torch.zeros(x.shape[1], model.state_size, dtype=h1.dtype, device=h1.device)
        H[0] = h1[0]
    else:
        raise ValueError(f"unknown method.init {how!r}")
    return H.requires_grad_(True)


def masked_step(opt: torch.optim.Optimizer, H: torch.Tensor, active: torch.Tensor, tol: float,
                clip: float = 0.0, comm: Optional[Comm] = None, fixed_first: bool = True) -> torch.Tensor:
    """One h-step while the gradient is above `tol`; `active` records whether.

    The tolerance is on the root-mean-square of the blocks' gradient norms,
    ||∇_H J|| / sqrt(n), so that it means the same for any number of blocks.
    Once below it, `active` stays 0 and later gradients are zeroed, which
    leaves Adagrad and plain SGD exactly where they stopped, without reading
    the norm on the host. `clip` bounds the global norm of ∇_H J. With `comm`
    the blocks are spread over processes, and the norm is that of all of H.
    """
    n = H.shape[0]
    if comm is not None:
        comm.boundary_grad(H)  # the ghost row's gradient goes to its owner
        n = comm.nb
    if fixed_first and (comm is None or comm.rank == 0):
        H.grad[0] = 0  # H_1 is fixed
    norm = torch.linalg.vector_norm(H.grad)
    if comm is not None:
        norm = comm.norm(norm)
    active = active * (norm / n ** 0.5 > tol)
    if clip > 0:  # as clip_grad_norm_, with the norm of all of H
        H.grad.mul_((clip / (norm + 1e-6)).clamp(max=1))
    H.grad.mul_(active)
    opt.step()
    if comm is not None:
        comm.refresh(H)  # the ghost row follows its owner's step
    return active


def h_steps(model: LanguageModel, S: Blocks, m: Any) -> torch.Tensor:
    """Step 2: n_h steps on H (θ fixed) descending J. Returns steps taken (tensor)."""
    if m.h_optimizer == "tprnn_adagrad":  # the authors' rule (SPEC §6)
        from . import tprnn
        return tprnn.h_steps(model, S, m)
    var = HVar(model, S, m.get("h_param", "free") if m.h_steps else "free")  # S.H or tanh's Z
    opt = H_OPTIMIZERS[m.h_optimizer]([var.leaf], lr=m.h_lr)
    active = torch.ones((), device=S.H.device, dtype=S.H.dtype)
    taken = torch.zeros((), device=S.H.device)
    for _ in range(m.h_steps):
        var.leaf.grad = None
        objective(model, var.blocks(S), backward=lambda J: J.backward(inputs=[var.target]))
        var.pull()
        active = masked_step(opt, var.leaf, active, m.h_tol, m.h_clip, S.comm, fixed_first=not S.free_first)
        var.write(S)
        taken += active
    return taken


def theta_steps(model: LanguageModel, theta: ThetaStep | SharedTheta, S: Blocks, m: Any) -> Optional[dict]:
    """Step 3: n_θ steps on θ (H fixed) descending L = J / n.

    The terms reported are those of the first step (θ as it came to this
    update, like BPTT's loss); the carry is the last step's F_n.
    """
    stats, fixed = None, dataclasses.replace(S, H=S.H.detach(), comm=None)  # H fixed: no ∂/∂H
    for _ in range(m.theta_steps):
        theta.zero_grad()
        s = objective(model, fixed, backward=lambda J: theta.backward(J / S.n))
        theta.step()
        stats = s if stats is None else {**stats, "last": s["last"]}
    return stats


@torch.no_grad()
def dual_step(model: LanguageModel, S: Blocks, rho: float) -> None:
    """Step 4: u_b ← u_b + ρ (F_b − H_{b+1}), scaled-form dual ascent."""
    for i, j in S.chunks(S.H.shape[0] - 1):
        Fs = model.final_state(S.x[:, i:j], model.unflat_state(S.H[i:j]))
        S.u[i:j] += rho * (model.flat_state(Fs) - S.H[i + 1:j + 1])


def measure(model: LanguageModel, S: Blocks, stats: Optional[dict], taken: torch.Tensor) -> dict:
    """The update's terms (the first θ-step's, or with none, J as it stands) and h-steps taken."""
    if stats is None:  # no θ-steps: measure the objective as it stands
        with torch.no_grad():
            stats = objective(model, dataclasses.replace(S, H=S.H.detach(), comm=None))
    stats["h_steps"] = taken
    return stats


def update(model: LanguageModel, theta: ThetaStep | SharedTheta, S: Blocks, m: Any, duals_on: bool) -> dict:
    """Steps 2–4 of the method named m.name (its module's `update`) on the blocks S."""
    from . import registry  # the methods import this module
    return registry.method(m.name, m.get("_target_") if hasattr(m, "get") else None).update(
        model, theta, S, m, duals_on)


def train_epoch(model: LanguageModel, theta: ThetaStep | SharedTheta, stream: torch.Tensor, cfg: DictConfig,
                state: dict, epoch: int = 1, pos: Optional[dict] = None,
                on_update: Optional[Callable[[dict], Any]] = None,
                update: Callable[..., dict] = update) -> dict:
    """One pass over the training stream, `update(model, theta, S, m, duals_on)`
    (the method's order of steps 2–4; by default that of cfg.method.name) on
    each set S of blocks.

    `state` is what BTPROP keeps across epochs: λ, and in batch mode H and u
    (filled on the first call). Returns per-block means of the CE and penalty
    terms, the mean residual and dual norms per constraint, mean h-steps per
    update and the number of tokens.
    """
    m, B = cfg.method, cfg.train.batch_size
    device = model.decoder.weight.device
    x, y = blocks(stream.to(device), m.block_size)
    from . import tprnn  # the authors' rules (SPEC §6); at their defaults, SPEC §1 as before
    if tprnn.rule(m, "drop_last_block"):
        x, y = x[:, :-1], y[:, :-1]
    free = tprnn.all_free(m)
    nb = x.shape[1]
    if nb < 2:
        raise UserError(f"the training split ({len(stream)} tokens) is shorter than two blocks "
                        f"of {m.block_size} (method.block_size)")
    lam = state.setdefault("lam", float(m.lam))
    duals_on = epoch >= m.u_start_epoch  # the penalty method has none to turn on
    h0 = model.flat_state(model.zero_state(1))
    model.train()
    if m.mode == "batch":
        if state.get("H") is None or tprnn.restarts(m):  # the authors' "batch": restart every epoch
            state["H"] = tprnn.init_slots(model, x, h0, m).detach()
            state["u"] = torch.zeros(state["H"].shape[0] - 1, model.state_size, dtype=h0.dtype, device=device)
        S = Blocks(x, y, state["H"].requires_grad_(True), state["u"], lam, m.chunk_blocks,
                   free_first=free, **constraint(m))
        sums = update(model, theta, S, m, duals_on)
        state["H"] = S.H.detach()
        n_updates, n_constraints = 1, state["u"].shape[0]
        dual_norm = state["u"].norm(dim=1).mean()
    else:
        starts = range(0, nb, B)
        i0 = pos["update"] if pos else 0
        carry = pos["carry"] if pos else h0
        sums = pos["sums"] if pos else None
        for k in range(i0, len(starts)):  # progress: the trainer, through on_update
            xb, yb = x[:, starts[k]:starts[k] + B], y[:, starts[k]:starts[k] + B]
            H = tprnn.init_slots(model, xb, carry, m)
            u = torch.zeros(H.shape[0] - 1, model.state_size, dtype=h0.dtype, device=device)
            S = Blocks(xb, yb, H, u, lam, m.chunk_blocks, free_first=free, **constraint(m))
            s = update(model, theta, S, m, duals_on)
            s["dual"] = u.norm(dim=1).sum()
            carry = s.pop("last")
            sums = s if sums is None else {key: sums[key] + s[key] for key in sums}
            if on_update is not None:
                on_update({"update": k + 1, "carry": carry, "sums": sums})
        n_updates, n_constraints = len(starts), nb - len(starts) * (not free)
        dual_norm = sums["dual"] / max(n_constraints, 1)
    return {
        "ce": float(sums["ce"]) / nb,
        "penalty": float(sums["penalty"]) / nb,
        "residual": float(sums["residual"]) / max(n_constraints, 1),
        "dual_norm": float(dual_norm),
        "h_steps": float(sums["h_steps"]) / n_updates,
        "tokens": nb * m.block_size,
    }


def end_epoch(state: dict, cfg: DictConfig) -> None:
    """λ ← λ·λ_mult; persisted scaled duals u = y/λ are rescaled so that the
    multiplier y = λ·u is kept."""
    lam = state["lam"] * cfg.method.lam_mult
    if state.get("u") is not None and lam > 0:
        state["u"] *= state["lam"] / lam
    state["lam"] = lam


def method(name: str, update: Callable, check: Optional[Callable] = None, schema: type = BTPropConf) -> Method:
    """A BTPROP method from its update (its order of steps 2–4), for register_method."""
    return Method(name, functools.partial(train_epoch, update=update), end_epoch, schema,
                  check=check, shares="blocks", update=update)
