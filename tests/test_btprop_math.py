"""The exact facts of SPEC §1 (T1, T2) and the BTPROP machinery, in float64."""

import pytest
import torch
import torch.nn.functional as F

from tprop_exp.core.methods import bptt
from tprop_exp.core import btprop
from tprop_exp.core.btprop import Blocks
from tprop_exp.data.corpora import batchify, windows
from tprop_exp.core.model import detach, linear_scan

from helpers import grads, method, params, run_cfg, sgd, stream, tiny_model

CELLS = ["rnn", "gru", "lstm"]


def truncated_bptt_grad(model, s, K):
    """Mean NLL over the whole-window tokens of one stream, gradient cut every K."""
    x, y, _ = windows(batchify(s, 1), K)
    model.zero_grad()
    state = model.zero_state(1)
    for i in range(x.shape[0]):
        logits, state = model(x[i], state)
        (F.cross_entropy(logits.flatten(0, 1), y[i].flatten()) / x.shape[0]).backward()
        state = detach(state)
    return grads(model)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_t1_gradient_equals_truncated_bptt(cell, layers):
    model, s, K = tiny_model(cell, layers), stream(40), 4
    x, y = btprop.blocks(s, K)
    h0 = model.flat_state(model.zero_state(1))
    H = btprop.init_states(model, x, h0, "forward")
    u = torch.zeros(x.shape[1] - 1, model.state_size, dtype=torch.float64)
    model.zero_grad()
    n = x.shape[1]
    out = btprop.objective(model, Blocks(x, y, H.detach(), u, 1.0, 3), backward=lambda J: (J / n).backward())
    assert out["penalty"].item() < 1e-25  # forward initialisation satisfies every constraint
    g_btprop = grads(model)
    g_bptt = truncated_bptt_grad(model, s, K)
    torch.testing.assert_close(g_btprop, g_bptt, rtol=0, atol=1e-13)


@pytest.mark.parametrize("cell", CELLS)
def test_t1_one_full_batch_update_equals_bptt(cell):
    s, K, lr = stream(61), 5, 0.7
    a, b = tiny_model(cell), tiny_model(cell)
    cfg = run_cfg(block_size=K, h_steps=0, init="forward", theta_steps=1, chunk_blocks=4)
    btprop.train_epoch(a, sgd(a, lr), s, cfg, {})
    bptt.train_epoch(b, sgd(b, lr), s, run_cfg(name="bptt", block_size=K), {})
    torch.testing.assert_close(params(a), params(b), rtol=0, atol=1e-13)
    assert not torch.equal(params(a), params(tiny_model(cell)))  # it did move


@pytest.mark.parametrize("cell", CELLS)
def test_t1_minibatch_trajectory_equals_bptt(cell):
    """One block per mini-batch, n_h = 0: every update is BPTT's, for a whole epoch."""
    s, K, lr = stream(50), 4, 0.5
    a, b = tiny_model(cell), tiny_model(cell)
    cfg = run_cfg(clip=0.3, mode="minibatch", block_size=K, h_steps=0, theta_steps=1, chunk_blocks=4)
    btprop.train_epoch(a, sgd(a, lr, 0.3), s, cfg, {})
    bptt.train_epoch(b, sgd(b, lr, 0.3), s, run_cfg(clip=0.3, name="bptt", mode="minibatch", block_size=K), {})
    torch.testing.assert_close(params(a), params(b), rtol=0, atol=1e-12)


def full_bptt_grad(model, s, n_tokens):
    model.zero_grad()
    logits, _ = model(s[:n_tokens].view(-1, 1), model.zero_state(1))
    F.cross_entropy(logits.flatten(0, 1), s[1:n_tokens + 1]).backward()
    return grads(model)


@pytest.mark.parametrize("cell", CELLS)
def test_t2_one_h_step_tends_to_full_bptt(cell):
    """Two blocks, λ = 1/η, one SGD h-step of size η: error O(η) against full BPTT."""
    model, K = tiny_model(cell), 4
    s = stream(2 * K + 1)
    x, y = btprop.blocks(s, K)
    target = full_bptt_grad(model, s, 2 * K)
    errors = []
    for eta in (1e-2, 1e-3, 1e-4):
        h0 = model.flat_state(model.zero_state(1))
        H = btprop.init_states(model, x, h0, "forward")
        u = torch.zeros(1, model.state_size, dtype=torch.float64)
        S = Blocks(x, y, H, u, 1 / eta, 2)
        btprop.h_steps(model, S, method(h_steps=1, h_optimizer="sgd", h_lr=eta))
        model.zero_grad()
        btprop.objective(model, Blocks(x, y, H.detach(), u, 1 / eta, 2), backward=lambda J: (J / 2).backward())
        errors.append((grads(model) - target).norm().item())
    trunc = truncated_bptt_grad(model, s, K)
    assert (trunc - target).norm().item() > 100 * errors[-1]  # the limit is not truncated BPTT
    assert 5 < errors[0] / errors[1] < 20 and 5 < errors[1] / errors[2] < 20
    assert errors[2] < 1e-3 * target.norm().item()


@pytest.mark.parametrize("cell", CELLS)
def test_h_step_decreases_objective(cell):
    model, K = tiny_model(cell, layers=2), 3
    x, y = btprop.blocks(stream(31), K)
    h0 = model.flat_state(model.zero_state(1))
    H = btprop.init_states(model, x, h0, "zero")
    u = torch.zeros(x.shape[1] - 1, model.state_size, dtype=torch.float64)

    S = Blocks(x, y, H, u, 1.0, 4)

    def J():
        with torch.no_grad():
            o = btprop.objective(model, Blocks(x, y, H.detach(), u, 1.0, 4))
        return (o["ce"] + o["penalty"]).item()

    before = J()
    taken = btprop.h_steps(model, S, method(h_steps=1, h_lr=0.05))
    assert J() < before and taken.item() == 1
    H0 = H.detach().clone()
    btprop.h_steps(model, S, method(h_steps=3, h_lr=0.05, h_tol=1e9))
    assert torch.equal(H.detach(), H0)  # tolerance met at once: no step taken
    torch.testing.assert_close(H.detach()[0], h0[0])  # H_1 never moves


# LSTM in the fast suite (two state parts); RNN and GRU with the slow checks
@pytest.mark.parametrize("cell", [c if c == "lstm" else pytest.param(c, marks=pytest.mark.slow) for c in CELLS])
def test_dual_update_converges_to_multiplier(cell):
    """θ fixed, two blocks: ADMM drives F_1 − H_2 to 0 and u to ∂CE_2/∂H_2 / λ at H_2 = F_1."""
    model, K, lam = tiny_model(cell), 3, 4.0
    s = stream(2 * K + 1)
    x, y = btprop.blocks(s, K)
    h0 = model.flat_state(model.zero_state(1))
    H = btprop.init_states(model, x, h0, "zero")
    u = torch.zeros(1, model.state_size, dtype=torch.float64)
    m = method(name="admm", h_steps=100, h_lr=0.05, theta_steps=0, u_lr=1.0)
    theta, S = sgd(model, 0.0), Blocks(x, y, H, u, lam, 2)
    for _ in range(60):
        btprop.update(model, theta, S, m, duals_on=True)
    F1 = btprop.forward_init(model, x, h0)[1:].requires_grad_(True)
    logits, _ = model(x[:, 1:], model.unflat_state(F1))
    g2, = torch.autograd.grad(F.cross_entropy(logits.flatten(0, 1), y[:, 1]), F1)
    torch.testing.assert_close(H.detach()[1:], F1.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(u, g2 / lam, rtol=0, atol=1e-6)
    assert g2.norm() > 1e-2  # the multiplier is not trivially zero


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("name", ["penalty", "admm", "alm"])
def test_chunked_batch_mode_equals_unchunked(cell, name):
    s = stream(80)
    out = []
    for chunk in (4, 1000):
        cfg = run_cfg(clip=0.5, name=name, block_size=3, h_steps=2, theta_steps=2,
                      h_optimizer="adagrad", h_lr=0.1, lam=0.5, chunk_blocks=chunk)
        model = tiny_model(cell, layers=2)
        theta = sgd(model, 0.01, 0.5, opt=torch.optim.Adam)
        state = {}
        for _ in range(2):
            stats = btprop.train_epoch(model, theta, s, cfg, state)
        out.append((params(model), state["H"], state["u"], stats))
    (p1, H1, u1, s1), (p2, H2, u2, s2) = out
    torch.testing.assert_close(p1, p2, rtol=0, atol=1e-12)
    torch.testing.assert_close(H1, H2, rtol=0, atol=1e-12)
    torch.testing.assert_close(u1, u2, rtol=0, atol=1e-12)
    assert (u1.abs().sum() > 0) == (name != "penalty")  # the penalty method has no duals
    assert s1["penalty"] == pytest.approx(s2["penalty"], rel=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_states_round_trip_through_free_variables(cell):
    model = tiny_model(cell, layers=2, hidden=4)
    assert model.state_size == 2 * 4 * (2 if cell == "lstm" else 1)
    logits, state = model(stream(6).view(3, 2), model.zero_state(2))
    flat = model.flat_state(state)
    assert flat.shape == (2, model.state_size)
    back = model.unflat_state(flat)
    for a, b in zip(state if cell == "lstm" else (state,), back if cell == "lstm" else (back,)):
        assert torch.equal(a, b)
    # each sequence's flat vector holds its own layers' states, not its neighbour's
    h = state[0] if cell == "lstm" else state
    assert torch.equal(flat[1, :4], h[0, 1]) and torch.equal(flat[1, 4:8], h[1, 1])


def test_minibatch_carry_is_last_state_of_previous_minibatch():
    """Forward-initialised blocks continue the stream: the residual is zero before any h-step."""
    model, K = tiny_model("gru"), 3
    cfg = run_cfg(batch_size=4, mode="minibatch", block_size=K, h_steps=0, theta_steps=0, chunk_blocks=2)
    stats = btprop.train_epoch(model, sgd(model, 0.1), stream(64), cfg, {})
    assert stats["residual"] < 1e-12 and stats["penalty"] < 1e-24


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("stretch", [2, 4096])
def test_forward_init_equals_block_by_block(cell, layers, stretch):
    """The whole-stream pass (per layer, LSTM's c by a scan) gives the states of
    stepping block by block, for every cell and depth, in stretches or not."""
    model, K = tiny_model(cell, layers), 3
    x, _ = btprop.blocks(stream(40), K)
    h1 = torch.randn(1, model.state_size, dtype=torch.float64)
    fast = btprop.forward_init(model, x, h1, stretch=stretch)
    state, slow = model.unflat_state(h1), [h1[0]]
    for b in range(x.shape[1] - 1):
        state = model.final_state(x[:, b:b + 1], state)
        slow.append(model.flat_state(state)[0])
    torch.testing.assert_close(fast, torch.stack(slow), rtol=0, atol=1e-10)


def test_linear_scan_equals_the_recurrence():
    g = torch.Generator().manual_seed(0)
    a, b, c0 = (torch.rand(37, 3, generator=g, dtype=torch.float64),
                torch.randn(37, 3, generator=g, dtype=torch.float64),
                torch.randn(3, generator=g, dtype=torch.float64))
    c, want = c0, []
    for t in range(37):  # c_t = a_t c_{t-1} + b_t, step by step
        c = a[t] * c + b[t]
        want.append(c)
    torch.testing.assert_close(linear_scan(a, b, c0), torch.stack(want), rtol=0, atol=1e-13)


def hand_minibatch_trajectory(model, s, K, B, lr):
    """Truncated BPTT(K) over ONE stream, one SGD update per B·K consecutive
    tokens: the loss is the mean NLL of those tokens, the state is detached
    every K tokens and carried (computed with θ before the update) into the
    next update. Returns the per-block losses, θ before each update."""
    nb = (len(s) - 1) // K
    state, ces = model.zero_state(1), []
    for start in range(0, nb, B):
        n = min(B, nb - start)
        model.zero_grad()
        loss = 0.0
        for b in range(start, start + n):
            logits, state = model(s[b * K:(b + 1) * K].view(-1, 1), state)
            ce = F.cross_entropy(logits[:, 0], s[b * K + 1:(b + 1) * K + 1])
            loss, state = loss + ce / n, detach(state)
            ces.append(ce.item())
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return ces


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_t1_minibatch_of_many_blocks_is_truncated_bptt_of_one_stream(cell, layers):
    """T1 with B > 1 blocks per mini-batch (n_h = 0, n_θ = 1, forward init, SGD).

    It is NOT BPTT with B parallel streams: mini-batch BTPROP's B blocks are
    consecutive in one stream, while BPTT's B streams are B distant stretches
    of it (data.batchify), so the two see different tokens in each update.
    What holds exactly: with forward initialisation every penalty term is
    zero and H_b is the state the recurrence reaches, so the θ-gradient of
    L = (1/B) Σ_b CE_b is the truncated-BPTT(K) gradient of the mean NLL of
    those B·K consecutive tokens, started from the last state of the previous
    mini-batch. The whole epoch therefore follows the hand loop above.
    """
    s, K, Bm, lr = stream(53), 3, 4, 0.5  # 17 blocks: mini-batches of 4, 4, 4, 4, 1
    a, ref, c = tiny_model(cell, layers), tiny_model(cell, layers), tiny_model(cell, layers)
    cfg = run_cfg(batch_size=Bm, mode="minibatch", block_size=K, h_steps=0, theta_steps=1,
                  init="forward", chunk_blocks=3)
    stats = btprop.train_epoch(a, sgd(a, lr), s, cfg, {})
    ces = hand_minibatch_trajectory(ref, s, K, Bm, lr)
    torch.testing.assert_close(params(a), params(ref), rtol=0, atol=1e-12)
    assert stats["ce"] == pytest.approx(sum(ces) / len(ces), abs=1e-12)  # θ before each update
    assert stats["penalty"] < 1e-24
    # BPTT over B parallel streams of the same tokens goes elsewhere
    bptt.train_epoch(c, sgd(c, lr), s, run_cfg(batch_size=Bm, name="bptt", mode="minibatch",
                                               block_size=K), {})
    assert (params(c) - params(ref)).abs().max() > 1e-4


def flat(grads_, model):
    return torch.cat([torch.zeros_like(p).flatten() if g is None else g.flatten()
                      for g, p in zip(grads_, model.parameters())])


def t3_limit(model, x, y):
    """The η → 0 limit of the θ-gradient of L = J/n after one SGD h-step of size
    η with λ = 1/η (forward init, H_1 fixed), from autograd on the blocks.

    At forward initialisation every residual is zero, so the h-step moves
    H_b by −η g_b with g_b = ∂CE_b/∂H_b (g_1 = 0: H_1 is fixed). Then
    F_b(H_b − η g_b) − (H_{b+1} − η g_{b+1}) = η (g_{b+1} − J_b g_b) + O(η²), and
    λ times it is g_{b+1} − J_b g_b + O(η). Hence

        ∇_θ L → g_trunc + (1/n) Σ_{b<n} (∂F_b/∂θ)ᵀ (g_{b+1} − J_b g_b),

    g_trunc the truncated-BPTT(K) gradient of the mean NLL. SPEC's formula
    without the 1/n is the same thing with g_b the gradient of block b's term
    of L, CE_b / n. J_b g_b is a Jacobian-vector product (J_b = ∂F_b/∂H_b,
    built whole here: the state is tiny); (∂F_b/∂θ)ᵀ v is a vector-Jacobian
    product. With n = 2 this is full BPTT (T2).
    """
    ps, n = list(model.parameters()), x.shape[1]
    H = btprop.forward_init(model, x, model.flat_state(model.zero_state(1)))

    def F_b(b, h):
        return model.flat_state(model.final_state(x[:, b:b + 1], model.unflat_state(h.view(1, -1))))[0]

    g, g_trunc = [], 0
    for b in range(n):
        Hb = H[b].clone().requires_grad_(True)
        logits, _ = model(x[:, b:b + 1], model.unflat_state(Hb.view(1, -1)))
        gH, *gt = torch.autograd.grad(F.cross_entropy(logits[:, 0], y[:, b]), [Hb, *ps])
        g.append(gH if b > 0 else torch.zeros_like(gH))
        g_trunc = g_trunc + flat(gt, model) / n
    corr = 0
    for b in range(n - 1):
        Jb = torch.autograd.functional.jacobian(lambda h: F_b(b, h), H[b])
        v = g[b + 1] - Jb @ g[b]
        corr = corr + flat(torch.autograd.grad(F_b(b, H[b]), ps, grad_outputs=v, allow_unused=True), model)
    return g_trunc + corr / n


@pytest.mark.parametrize("cell", CELLS)
def test_t3_one_h_step_tends_to_one_block_of_look_ahead(cell):
    """Four blocks, λ = 1/η, one SGD h-step of size η: the θ-gradient tends to
    t3_limit with error O(η), and that limit is neither truncated nor full BPTT."""
    model, K, n = tiny_model(cell), 3, 4
    s = stream(n * K + 1)
    x, y = btprop.blocks(s, K)
    limit = t3_limit(model, x, y)
    errors = []
    for eta in (1e-2, 1e-3, 1e-4):
        h0 = model.flat_state(model.zero_state(1))
        H = btprop.init_states(model, x, h0, "forward")
        u = torch.zeros(n - 1, model.state_size, dtype=torch.float64)
        btprop.h_steps(model, Blocks(x, y, H, u, 1 / eta, 2), method(h_steps=1, h_optimizer="sgd", h_lr=eta))
        model.zero_grad()
        btprop.objective(model, Blocks(x, y, H.detach(), u, 1 / eta, 2), backward=lambda J: (J / n).backward())
        errors.append((grads(model) - limit).norm().item())
    assert 5 < errors[0] / errors[1] < 20 and 5 < errors[1] / errors[2] < 20
    trunc, full = truncated_bptt_grad(model, s, K), full_bptt_grad(model, s, n * K)
    assert (limit - trunc).norm().item() > 100 * errors[-1]
    assert (limit - full).norm().item() > 100 * errors[-1]
    # with two blocks the same reference is full BPTT (T2)
    x2, y2 = btprop.blocks(s[:2 * K + 1], K)
    torch.testing.assert_close(t3_limit(model, x2, y2), full_bptt_grad(model, s, 2 * K), rtol=0, atol=1e-14)
