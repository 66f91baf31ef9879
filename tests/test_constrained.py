"""Constrained h-optimisation (SPEC §7) in float64, against computations
written from the spec's words: method.h_param=tanh (H = tanh(Z) on the
coordinates the cell bounds; Z from atanh of the clamped start) and the KL
term μ·KL(p(·|F_b) ‖ p(·|H_{b+1})) of method.penalty."""
import math

import pytest
import torch
import torch.nn.functional as F

from tprop_exp.core import btprop
from tprop_exp.core.btprop import Blocks
from tprop_exp.core.methods import bptt

from helpers import grads, method, params, run_cfg, sgd, stream, tiny_model
from test_btprop_math import truncated_bptt_grad

CELLS = ["rnn", "gru", "lstm"]
EPS = 1e-6  # the clamp the spec's tanh start uses (core/constrained.py ATANH_EPS)


def setup(cell, n=31, K=3, seed=3):
    model, s = tiny_model(cell), stream(n)
    x, y = btprop.blocks(s, K)
    h0 = model.flat_state(model.zero_state(1))
    H = btprop.init_states(model, x, h0, "forward").detach()
    g = torch.Generator().manual_seed(seed)
    return model, x, y, H, g


def hand_J(model, x, y, H, u, lam, mu):
    """J block by block: Σ CE_b + (λ/2)Σ||F_b + u_b − H_{b+1}||² + μ Σ KL_b, with
    KL_b = Σ_v p_F(v) (log p_F(v) − log p_H(v)) over block b+1's first target."""
    J = 0
    n = x.shape[1]
    for b in range(n):
        logits, Fs = model(x[:, b:b + 1], model.unflat_state(H[b:b + 1]))
        J = J + F.cross_entropy(logits[:, 0], y[:, b])
        if b + 1 < n:
            Fb = model.flat_state(Fs)[0]
            J = J + lam / 2 * (Fb + u[b] - H[b + 1]).pow(2).sum()
            if mu is not None:
                tok = x[:1, b + 1:b + 2]
                pF = torch.softmax(model(tok, model.unflat_state(Fb.view(1, -1)))[0][0, 0], -1)
                pH = torch.softmax(model(tok, model.unflat_state(H[b + 1:b + 2]))[0][0, 0], -1)
                J = J + mu * (pF * (pF.log() - pH.log())).sum()
    return J


def bounded_coords(model):
    d = model.num_layers * model.hidden_size
    return [i < d for i in range(model.state_size)]  # RNN, GRU: all; LSTM: h, not c


@pytest.mark.parametrize("cell", CELLS)
def test_tanh_h_step_moves_z_through_the_clamped_atanh_start(cell):
    model, x, y, H, g = setup(cell)
    H[0, 0] = 1.0      # H_1 as a carried state: fixed, so not clamped, not parametrised
    H[2, 0] = 1.0      # saturated: atanh would be infinite without the clamp
    H[3, 1] = -1.0
    H[4, -1] = 1.7     # LSTM: a c coordinate, not bounded (RNN, GRU: clamped to 1 − eps)
    u = torch.randn(x.shape[1] - 1, model.state_size, generator=g, dtype=torch.float64) * 0.1
    lam, eta = 0.7, 0.3
    # the reference: Z0 = atanh(clamp(H)) on bounded coordinates of the free rows 2..n
    mask = torch.tensor(bounded_coords(model)).expand_as(H).clone()
    mask[0] = False
    Z0 = H.clone()
    for (r, c) in mask.nonzero().tolist():
        v = min(max(H[r, c].item(), -1 + EPS), 1 - EPS)
        Z0[r, c] = 0.5 * math.log((1 + v) / (1 - v))
    Hz = torch.where(mask, torch.tanh(Z0), Z0).requires_grad_(True)
    hand_J(model, x, y, Hz, u, lam, None).backward()
    gZ = torch.where(mask, Hz.grad * (1 - torch.tanh(Z0) ** 2), Hz.grad)  # chain rule by hand
    gZ[0] = 0  # H_1 is fixed
    Z1 = Z0 - eta * gZ
    want = torch.where(mask, torch.tanh(Z1), Z1)
    want[0] = H[0]

    S = Blocks(x, y, H.clone().requires_grad_(True), u, lam, 4)
    btprop.h_steps(model, S, method(h_steps=1, h_optimizer="sgd", h_lr=eta, h_param="tanh"))
    torch.testing.assert_close(S.H.detach(), want, rtol=0, atol=1e-12)
    assert torch.equal(S.H[0], H[0])  # H_1 untouched, bitwise
    assert S.H.detach().abs()[mask].max() < 1  # every bounded coordinate stays inside (-1, 1)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("penalty", ["kl", "l2+kl"])
def test_kl_term_value_and_gradient_against_direct_computation(cell, penalty):
    model, x, y, H, g = setup(cell)
    H = H + 0.3 * torch.randn(H.shape, generator=g, dtype=torch.float64)  # off the constraint: KL > 0
    H[0] = 0
    u = torch.randn(x.shape[1] - 1, model.state_size, generator=g, dtype=torch.float64) * 0.1
    lam, mu = 0.7, 1.9
    Hr = H.clone().requires_grad_(True)
    model.zero_grad()
    J_ref = hand_J(model, x, y, Hr, u, lam if penalty == "l2+kl" else 0.0, mu)
    J_ref.backward()
    g_theta_ref, g_H_ref = grads(model), Hr.grad

    Hb = H.clone().requires_grad_(True)
    model.zero_grad()
    S = Blocks(x, y, Hb, u, lam, 4, penalty=penalty, mu=mu)  # chunks of 4: the successor of a chunk's last block is in the next
    out = btprop.objective(model, S, backward=lambda J: J.backward())
    assert (out["ce"] + out["penalty"]).item() == pytest.approx(J_ref.item(), rel=1e-13)
    torch.testing.assert_close(grads(model), g_theta_ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(Hb.grad, g_H_ref, rtol=1e-10, atol=1e-13)
    # the KL part is not nothing: without it J is smaller
    without = btprop.objective(model, Blocks(x, y, H, u, lam if penalty == "l2+kl" else 0.0, 4))
    assert out["penalty"].item() - without["penalty"].item() > 1e-3


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("mu", [0.0, 2.5])
def test_t1_holds_with_the_kl_term(cell, mu):
    """At a forward initialisation KL and its gradient vanish: at weight 0 as the
    spec asks, and at any weight."""
    model, s, K = tiny_model(cell), stream(40), 4
    x, y = btprop.blocks(s, K)
    H = btprop.init_states(model, x, model.flat_state(model.zero_state(1)), "forward")
    u = torch.zeros(x.shape[1] - 1, model.state_size, dtype=torch.float64)
    n = x.shape[1]
    model.zero_grad()
    btprop.objective(model, Blocks(x, y, H.detach(), u, 1.0, 3, penalty="l2+kl", mu=mu),
                     backward=lambda J: (J / n).backward())
    torch.testing.assert_close(grads(model), truncated_bptt_grad(model, s, K), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["penalty", "admm", "alm"])
def test_tanh_and_kl_at_rest_are_bptt_and_defaults_are_today(name):
    """n_h = 0 (ALM: its joint steps need n_h ≥ 1, so only the defaults): the
    whole epoch is BPTT's with tanh and l2+kl; and the defaults change nothing."""
    s, K, lr = stream(61), 5, 0.7
    ref = tiny_model("gru")
    bptt.train_epoch(ref, sgd(ref, lr), s, run_cfg(name="bptt", block_size=K), {})
    if name != "alm":
        a = tiny_model("gru")
        cfg = run_cfg(name=name, block_size=K, h_steps=0, h_param="tanh", penalty="l2+kl", kl_weight=0.8)
        btprop.train_epoch(a, sgd(a, lr), s, cfg, {})
        torch.testing.assert_close(params(a), params(ref), rtol=0, atol=1e-13)
    kw = dict(name=name, block_size=K, h_steps=2, h_optimizer="adagrad", chunk_blocks=4)
    b, c = tiny_model("lstm"), tiny_model("lstm")
    btprop.train_epoch(b, sgd(b, lr), s, run_cfg(**kw), {})
    btprop.train_epoch(c, sgd(c, lr), s, run_cfg(h_param="free", penalty="l2", kl_weight=0.0, **kw), {})
    assert torch.equal(params(b), params(c))


@pytest.mark.parametrize("name", ["penalty", "admm", "alm"])
@pytest.mark.parametrize("mode", ["batch", "minibatch"])
def test_every_method_and_mode_trains_with_tanh_and_kl(name, mode):
    s, K = stream(61), 3
    a = tiny_model("lstm")
    penalty = "kl" if name == "penalty" else "l2+kl"
    cfg = run_cfg(batch_size=4, name=name, mode=mode, block_size=K, h_steps=2, h_optimizer="adagrad",
                  h_param="tanh", penalty=penalty, kl_weight=0.5, chunk_blocks=3)
    state = {}
    stats = btprop.train_epoch(a, sgd(a, 0.3), s, cfg, state)
    assert all(math.isfinite(v) for v in stats.values())
    assert stats["h_steps"] == 2
    assert not torch.equal(params(a), params(tiny_model("lstm")))
    if mode == "batch":  # the persisted H: bounded coordinates inside (-1, 1)
        d = a.hidden_size
        assert state["H"][:, :d].abs().max() < 1


def test_defaults_keep_the_identity_and_new_values_change_it():
    from test_schema import TINY, composed
    from tprop_exp.run import schema
    admm = composed(TINY + ["method=admm"])
    same = ["method.h_param=free", "method.penalty=l2", "method.kl_weight=0.0"]
    assert schema.run_hash(composed(TINY + ["method=admm"] + same)) == schema.run_hash(admm)
    for o in ["method.h_param=tanh", "method.penalty=l2+kl", "method.kl_weight=0.5"]:
        assert schema.run_hash(composed(TINY + ["method=admm", o])) != schema.run_hash(admm), o
