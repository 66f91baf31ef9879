"""The exact facts of SPEC §1 (T1, T2) and the BTPROP machinery, in float64."""

import pytest
import torch
import torch.nn.functional as F

from tprop_exp import bptt, btprop
from tprop_exp.btprop import Blocks
from tprop_exp.data import batchify, windows
from tprop_exp.models import detach, linear_scan

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


@pytest.mark.parametrize("cell", CELLS)
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
