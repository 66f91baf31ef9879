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

One update (`update`):
  1. initialise H (`forward`: H_{b+1} = F_b(H_b); `zero`: H = 0); u = 0
     (in batch mode only once, at the start of training);
  2. n_h h-steps on H, θ fixed (Adagrad or SGD, restarted every update as in
     the authors' code; early stop below a gradient-norm tolerance, by masking
     further steps: no host sync in the loop);
  3. dual step  u_b ← u_b + ρ (F_b − H_{b+1})  (ADMM, ALM; from u_start_epoch);
     it comes before the θ-steps, as in the authors' code, so that it acts
     within a mini-batch although u is re-initialised for every mini-batch;
  4. n_θ θ-steps on θ, H fixed (the run's torch.optim optimizer, global-norm
     clipping).
ALM replaces 2–4 with n_h joint gradient steps on (H, θ), then the dual step.
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import UserError
from .bptt import step as theta_step


INITS = ("forward", "zero")  # method.init
# method.h_optimizer: optimizers that stay put on a zero gradient (see masked_step)
H_OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def blocks(stream, K):
    """(inputs, targets) of shape (K, nb): column b is block b of the stream."""
    nb = (len(stream) - 1) // K
    x = stream[:nb * K].reshape(nb, K).t()
    y = stream[1:nb * K + 1].reshape(nb, K).t()
    return x, y


def objective(model, x, y, H, u, lam, chunk, backward=None):
    """J over the n blocks in columns of x, y, chunk by chunk.

    H: (n, S) start states; u: (n-1, S) duals. `backward(J_chunk)` is called
    for each chunk, so gradients accumulate over chunks exactly as over the
    whole set. Returns detached sums: CE, penalty, Σ||F_b − H_{b+1}||, and the
    final state F_n of the last block (the carry into the next mini-batch).
    """
    n = x.shape[1]
    ce_sum = pen_sum = res_sum = 0.0
    for i in range(0, n, chunk):
        j = min(i + chunk, n)
        logits, Fs = model(x[:, i:j], model.unflat_state(H[i:j]))
        Fb = model.flat_state(Fs)                                    # F_b(H_b; θ)
        ce = F.cross_entropy(logits.flatten(0, 1), y[:, i:j].flatten(), reduction="none")
        ce = ce.view(x.shape[0], -1).mean(0)                         # CE_b = (1/K) Σ_t NLL_t
        m = min(j, n - 1) - i                                        # blocks with a successor
        diff = Fb[:m] - H[i + 1:i + 1 + m]                           # F_b − H_{b+1}
        pen = 0.5 * lam * (diff + u[i:i + m]).pow(2).sum(1)          # (λ/2)||F_b + u_b − H_{b+1}||²
        J = ce.sum() + pen.sum()
        if backward is not None:
            backward(J)
        ce_sum = ce_sum + ce.sum().detach().double()  # float64: summed over a whole epoch
        pen_sum = pen_sum + pen.sum().detach().double()
        res_sum = res_sum + diff.detach().norm(dim=1).sum().double()
    return {"ce": ce_sum, "penalty": pen_sum, "residual": res_sum, "last": Fb[-1:].detach()}


@torch.no_grad()
def forward_init(model, x, h1):
    """H_1 = h1, H_{b+1} = F_b(H_b): one sequential pass with the current θ.

    The blocks of x are consecutive in the stream. For a one-layer RNN or GRU
    the state is the output, so one call over all n·K steps gives every H_b;
    otherwise (LSTM's c, lower layers) we step block by block.
    """
    n, K = x.shape[1], x.shape[0]
    if model.cell != "lstm" and model.num_layers == 1:
        out, _ = model.rnn(model.embed(x.t().reshape(-1, 1)), model.unflat_state(h1))
        return torch.cat([h1, out[K - 1:(n - 1) * K:K, 0]])   # H_{b+1} = h at the end of block b
    H = torch.empty(n, model.state_size, dtype=h1.dtype, device=h1.device)
    H[0] = h1[0]
    state = model.unflat_state(h1)
    for b in range(n - 1):
        state = model.final_state(x[:, b:b + 1], state)
        H[b + 1] = model.flat_state(state)[0]
    return H


def init_states(model, x, h1, how):
    """Step 1: H for the blocks of x (a fresh leaf tensor), H_1 = h1."""
    if how == "forward":
        H = forward_init(model, x, h1)
    elif how == "zero":
        H = torch.zeros(x.shape[1], model.state_size, dtype=h1.dtype, device=h1.device)
        H[0] = h1[0]
    else:
        raise ValueError(f"unknown method.init {how!r}")
    return H.requires_grad_(True)


def h_optimizer(H, m):
    return H_OPTIMIZERS[m.h_optimizer]([H], lr=m.h_lr)


def masked_step(opt, H, active, tol, clip=0.0):
    """One h-step while the gradient is above `tol`; `active` records whether.

    The tolerance is on the root-mean-square of the blocks' gradient norms,
    ||∇_H J|| / sqrt(n), so that it means the same for any number of blocks.
    Once below it, `active` stays 0 and later gradients are zeroed, which
    leaves Adagrad and plain SGD exactly where they stopped, without reading
    the norm on the host. `clip` bounds the global norm of ∇_H J.
    """
    norm = torch.linalg.vector_norm(H.grad) / H.shape[0] ** 0.5
    active = active * (norm > tol)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_([H], clip)
    H.grad.mul_(active)
    opt.step()
    return active


def h_steps(model, x, y, H, u, m, lam, chunk):
    """Step 2: n_h steps on H (θ fixed) descending J. Returns steps taken (tensor)."""
    opt = h_optimizer(H, m)
    active = torch.ones((), device=H.device, dtype=H.dtype)
    taken = torch.zeros((), device=H.device)
    for _ in range(m.h_steps):
        H.grad = None
        objective(model, x, y, H, u, lam, chunk, backward=lambda J: J.backward(inputs=[H]))
        H.grad[0] = 0  # H_1 is fixed
        active = masked_step(opt, H, active, m.h_tol, m.h_clip)
        taken += active
    return taken


@torch.no_grad()
def dual_step(model, x, H, u, rho, chunk):
    """Step 3: u_b ← u_b + ρ (F_b − H_{b+1}), scaled-form dual ascent."""
    n = x.shape[1]
    for i in range(0, n - 1, chunk):
        j = min(i + chunk, n - 1)
        Fs = model.final_state(x[:, i:j], model.unflat_state(H[i:j]))
        u[i:j] += rho * (model.flat_state(Fs) - H[i + 1:j + 1])


def theta_steps(model, opt, x, y, H, u, m, lam, chunk, clip):
    """Step 4: n_θ steps on θ (H fixed) descending L = J / n.

    The terms reported are those of the first step (θ as it came to this
    mini-batch, like BPTT's loss); the carry is the last step's F_n.
    """
    params = list(model.parameters())
    n = x.shape[1]
    stats = None
    for _ in range(m.theta_steps):
        opt.zero_grad(set_to_none=True)
        s = objective(model, x, y, H.detach(), u, lam, chunk,
                      backward=lambda J: (J / n).backward(inputs=params))
        theta_step(opt, params, clip)
        stats = s if stats is None else {**stats, "last": s["last"]}
    return stats


def alm_steps(model, opt, x, y, H, u, m, lam, chunk, clip):
    """ALM: n_h joint gradient steps on (H, θ): H descends J, θ descends J / n.

    The h-tolerance stops H's steps only; θ takes every step (a zeroed
    gradient would still move Adam). Terms reported are the first step's.
    """
    params = list(model.parameters())
    n = x.shape[1]
    h_opt = h_optimizer(H, m)
    active = torch.ones((), device=H.device, dtype=H.dtype)
    taken = torch.zeros((), device=H.device)
    stats = None
    for _ in range(m.h_steps):
        H.grad = None
        opt.zero_grad(set_to_none=True)
        s = objective(model, x, y, H, u, lam, chunk,
                      backward=lambda J: (J / n).backward(inputs=[H] + params))
        stats = s if stats is None else {**stats, "last": s["last"]}
        H.grad.mul_(n)  # J, not J / n, for H
        H.grad[0] = 0
        active = masked_step(h_opt, H, active, m.h_tol, m.h_clip)
        theta_step(opt, params, clip)
        taken += active
    return stats, taken


def update(model, opt, x, y, H, u, m, lam, *, duals_on, chunk, clip):
    """Steps 2–4 (or ALM) on the blocks x, y with states H and duals u, in place.

    Returns device tensors (no host sync): CE and penalty sums, residual
    norm sum, h-steps taken, and the last block's final state.
    """
    if m.name == "alm":
        stats, taken = alm_steps(model, opt, x, y, H, u, m, lam, chunk, clip)
        if duals_on:
            dual_step(model, x, H.detach(), u, m.u_lr, chunk)
    else:
        taken = h_steps(model, x, y, H, u, m, lam, chunk)
        if duals_on:
            dual_step(model, x, H.detach(), u, m.u_lr, chunk)
        stats = theta_steps(model, opt, x, y, H, u, m, lam, chunk, clip)
    if stats is None:  # no θ-steps: measure the objective as it stands
        with torch.no_grad():
            stats = objective(model, x, y, H.detach(), u, lam, chunk)
    stats["h_steps"] = taken
    return stats


def train_epoch(model, opt, stream, m, *, batch_size, clip, lam, duals_on, chunk,
                state=None, pos=None, on_update=None):
    """One pass over the training stream.

    `state` holds what batch mode keeps across epochs ({"H", "u"}; filled on
    the first call). Returns per-block means of ce and penalty, the mean
    residual and dual norms per constraint, mean h-steps per update, nll (the
    ce term, as the epoch's training loss) and the number of tokens.
    """
    device = model.decoder.weight.device
    x, y = blocks(stream, m.block_size)
    x, y = x.to(device), y.to(device)
    nb = x.shape[1]
    if nb < 2:
        raise UserError(f"the training split ({len(stream)} tokens) is shorter than two blocks "
                        f"of {m.block_size}")
    dtype = model.decoder.weight.dtype
    h0 = model.flat_state(model.zero_state(1))
    model.train()
    if m.mode == "batch":
        if state.get("H") is None:
            state["H"] = init_states(model, x, h0, m.init).detach()
            state["u"] = torch.zeros(nb - 1, model.state_size, dtype=dtype, device=device)
        H = state["H"].requires_grad_(True)
        s = update(model, opt, x, y, H, state["u"], m, lam, duals_on=duals_on, chunk=chunk, clip=clip)
        state["H"] = H.detach()
        sums, n_updates, n_constraints = s, 1, nb - 1
        dual_norm = state["u"].norm(dim=1).mean()
    else:
        starts = range(0, nb, batch_size)
        i0 = pos["update"] if pos else 0
        carry = pos["carry"] if pos else h0
        sums = pos["sums"] if pos else None
        for k in tqdm(range(i0, len(starts)), desc="btprop", leave=False, disable=None, mininterval=2):
            xb, yb = x[:, starts[k]:starts[k] + batch_size], y[:, starts[k]:starts[k] + batch_size]
            H = init_states(model, xb, carry, m.init)
            u = torch.zeros(xb.shape[1] - 1, model.state_size, dtype=dtype, device=device)
            s = update(model, opt, xb, yb, H, u, m, lam, duals_on=duals_on, chunk=chunk, clip=clip)
            s["dual"] = u.norm(dim=1).sum()
            carry = s.pop("last")
            sums = s if sums is None else {key: sums[key] + s[key] for key in sums}
            if on_update is not None:
                on_update({"update": k + 1, "carry": carry, "sums": sums})
        n_updates, n_constraints = len(starts), nb - len(starts)
        dual_norm = sums["dual"] / max(n_constraints, 1)
    out = {
        "ce": float(sums["ce"]) / nb,
        "penalty": float(sums["penalty"]) / nb,
        "residual": float(sums["residual"]) / max(n_constraints, 1),
        "dual_norm": float(dual_norm),
        "h_steps": float(sums["h_steps"]) / n_updates,
        "tokens": nb * m.block_size,
    }
    out["nll"] = out["ce"]
    return out
