"""One BTPROP update and epoch (SPEC §1 "One update") against a hand-written
reference, in float64.

The reference runs every block on its own (a loop over blocks, no chunking),
takes gradients with torch.autograd and applies plain SGD by hand, in the
step order SPEC §1 prescribes:
  penalty            h-steps → θ-steps
  ADMM, batch        h-steps → θ-steps → dual step   (u persists)
  ADMM, mini-batch   h-steps → dual step → θ-steps   (u restarts every mini-batch)
  ALM                n_h rounds of (joint step on H and θ, then dual step)
H descends J, θ descends L = J / n, H_1 never moves, the dual step is
u_b ← u_b + ρ (F_b − H_{b+1}). It shares nothing with btprop.py but the model.
"""
import pytest
import torch
import torch.nn.functional as F

from tprop_exp.core import btprop

from helpers import method, params, run_cfg, sgd, stream, tiny_model

RHO = 0.7  # a dual step size other than 1, so that ρ is seen


def hand_blocks(s, K):
    """Column b = tokens b·K .. b·K+K−1 of the stream; targets shifted by one."""
    nb = (len(s) - 1) // K
    x = torch.stack([s[b * K:(b + 1) * K] for b in range(nb)], 1)
    y = torch.stack([s[b * K + 1:(b + 1) * K + 1] for b in range(nb)], 1)
    return x, y


def run_block(model, x, y, b, h):
    """Block b from the flat state h: (CE_b = mean NLL of its K tokens, F_b flat)."""
    logits, state = model(x[:, b:b + 1], model.unflat_state(h.view(1, -1)))
    return F.cross_entropy(logits[:, 0], y[:, b]), model.flat_state(state)[0]


def hand_J(model, x, y, H, u, lam):
    """J = Σ_b CE_b + (λ/2) Σ_{b<n} ||F_b + u_b − H_{b+1}||², and the F_b."""
    n = x.shape[1]
    ce, Fs = zip(*[run_block(model, x, y, b, H[b]) for b in range(n)])
    pen = sum(((Fs[b] + u[b] - H[b + 1]) ** 2).sum() for b in range(n - 1))
    return sum(ce) + lam / 2 * pen, Fs


@torch.no_grad()
def hand_forward_init(model, x, h1):
    H = [h1.view(-1)]
    for b in range(x.shape[1] - 1):
        H.append(run_block(model, x, x, b, H[-1])[1])  # targets unused
    return torch.stack(H)


def sgd_(tensors, grads, lr):
    with torch.no_grad():
        for p, g in zip(tensors, grads):
            p -= lr * g


def hand_update(model, x, y, H, u, lam, m, lr, duals_on):
    """One update in SPEC §1's order. Returns H, u and the carry: F_n of the
    update's last forward pass (θ before its last step)."""
    n, ps = x.shape[1], list(model.parameters())

    def dual(H, u):
        if n == 1:
            return u
        with torch.no_grad():
            Fs = hand_J(model, x, y, H, u, lam)[1]
            return u + m.u_lr * (torch.stack(Fs[:-1]) - H[1:])

    if m.name == "alm":
        for _ in range(m.h_steps):
            Hl = H.clone().requires_grad_(True)
            J, Fs = hand_J(model, x, y, Hl, u, lam)
            gH, *g = torch.autograd.grad(J, [Hl, *ps])
            gH[0] = 0
            H = (H - m.h_lr * gH).detach()
            sgd_(ps, [gi / n for gi in g], lr)
            carry = Fs[-1].detach()
            if duals_on:
                u = dual(H, u)
        return H, u, carry
    admm = duals_on and m.name == "admm"
    for _ in range(m.h_steps):
        Hl = H.clone().requires_grad_(True)
        gH, = torch.autograd.grad(hand_J(model, x, y, Hl, u, lam)[0], Hl)
        gH[0] = 0
        H = (H - m.h_lr * gH).detach()
    if admm and m.mode == "minibatch":
        u = dual(H, u)
    for _ in range(m.theta_steps):
        J, Fs = hand_J(model, x, y, H, u, lam)
        sgd_(ps, torch.autograd.grad(J / n, ps), lr)
        carry = Fs[-1].detach()
    if admm and m.mode == "batch":
        u = dual(H, u)
    return H, u, carry


def hand_epoch(model, s, m, lr, B, state, epoch=1):
    x, y = hand_blocks(s, m.block_size)
    nb = x.shape[1]
    lam = state.setdefault("lam", m.lam)
    duals_on = m.name in ("admm", "alm") and epoch >= m.u_start_epoch
    h0 = torch.zeros(1, model.state_size, dtype=torch.float64)
    if m.mode == "batch":
        if "H" not in state:
            state["H"] = hand_forward_init(model, x, h0)
            state["u"] = torch.zeros(nb - 1, model.state_size, dtype=torch.float64)
        state["H"], state["u"], _ = hand_update(model, x, y, state["H"], state["u"], lam, m, lr, duals_on)
        return
    carry = h0
    for start in range(0, nb, B):
        xb, yb = x[:, start:start + B], y[:, start:start + B]
        H = hand_forward_init(model, xb, carry)
        u = torch.zeros(xb.shape[1] - 1, model.state_size, dtype=torch.float64)
        carry = hand_update(model, xb, yb, H, u, lam, m, lr, duals_on)[2]


SETTINGS = dict(block_size=3, h_steps=2, h_lr=0.1, h_optimizer="sgd", theta_steps=1,
                lam=0.5, u_lr=RHO, init="forward", chunk_blocks=3)
B, LR = 4, 0.3  # 40 tokens, K = 3: 13 blocks, mini-batches of 4, 4, 4 and 1 blocks


def run_epochs(name, mode, cell, layers, epochs, **kw):
    model = tiny_model(cell, layers)
    cfg = run_cfg(batch_size=B, **{**SETTINGS, "name": name, "mode": mode, **kw})
    theta, state = sgd(model, LR), {}
    for e in range(1, epochs + 1):
        btprop.train_epoch(model, theta, stream(40), cfg, state, epoch=e)
    return model, state, cfg


@pytest.mark.parametrize("cell,layers", [("gru", 1), ("lstm", 2)])
@pytest.mark.parametrize("mode", ["minibatch", "batch"])
@pytest.mark.parametrize("name", ["penalty", "admm", "alm"])
def test_epochs_equal_the_hand_reference(name, mode, cell, layers):
    """Two epochs (batch mode: H and u carried from the first into the second)."""
    model, state, cfg = run_epochs(name, mode, cell, layers, epochs=2)
    ref, ref_state = tiny_model(cell, layers), {}
    for e in (1, 2):
        hand_epoch(ref, stream(40), cfg.method, LR, B, ref_state, epoch=e)
    torch.testing.assert_close(params(model), params(ref), rtol=0, atol=1e-12)
    if mode == "batch":
        torch.testing.assert_close(state["H"], ref_state["H"], rtol=0, atol=1e-12)
        torch.testing.assert_close(state["u"], ref_state["u"], rtol=0, atol=1e-12)
        assert (ref_state["u"].abs().max() > 1e-4) == (name != "penalty")


@pytest.mark.parametrize("mode", ["minibatch", "batch"])
@pytest.mark.parametrize("name", ["admm", "alm"])
def test_duals_act_in_every_mode(name, mode):
    """Duals on from epoch 1: θ ends elsewhere than with the penalty method (SPEC:
    a dual step that cannot change any later computation is a defect)."""
    with_duals = params(run_epochs(name, mode, "gru", 1, epochs=2)[0])
    without = params(run_epochs(name, mode, "gru", 1, epochs=2, u_start_epoch=3)[0])
    penalty = params(run_epochs("penalty", mode, "gru", 1, epochs=2)[0])
    if name == "admm":  # duals off, ADMM is the penalty method
        torch.testing.assert_close(without, penalty, rtol=0, atol=0)
    assert (with_duals - without).abs().max() > 1e-6
    assert (with_duals - penalty).abs().max() > 1e-6


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_batch_mode_keeps_H_and_u_across_epochs(cell):
    """θ fixed (lr 0), one SGD h-step per epoch: epoch 2 starts from epoch 1's H
    (not from a new forward pass), and u accumulates."""
    model = tiny_model(cell)
    cfg = run_cfg(name="admm", mode="batch", block_size=3, h_steps=1, h_lr=0.2, theta_steps=1,
                  lam=1.0, u_lr=RHO)
    theta, state, m = sgd(model, 0.0), {}, cfg.method
    x, y = hand_blocks(stream(40), 3)
    H = hand_forward_init(model, x, torch.zeros(1, model.state_size, dtype=torch.float64))
    u = torch.zeros(x.shape[1] - 1, model.state_size, dtype=torch.float64)
    for epoch in (1, 2, 3):
        btprop.train_epoch(model, theta, stream(40), cfg, state, epoch=epoch)
        Hl = H.clone().requires_grad_(True)
        gH, = torch.autograd.grad(hand_J(model, x, y, Hl, u, 1.0)[0], Hl)
        gH[0] = 0
        H = H - 0.2 * gH
        with torch.no_grad():
            Fs = hand_J(model, x, y, H, u, 1.0)[1]
        u_next = u + RHO * (torch.stack(Fs[:-1]) - H[1:])
        torch.testing.assert_close(state["H"], H, rtol=0, atol=1e-13)
        torch.testing.assert_close(state["u"], u_next, rtol=0, atol=1e-13)
        assert (u_next - u).abs().max() > 1e-5  # each epoch adds to u
        u = u_next


def test_lambda_multiplier_keeps_lambda_times_u():
    """λ ← λ·λ_mult at the end of an epoch: the multiplier λ·u is kept, and the
    next epoch's penalty is (λ_new / 2)||F + u_new − H||² with u_new = λ u / λ_new."""
    model = tiny_model("gru")
    cfg = run_cfg(name="admm", mode="batch", block_size=3, h_steps=1, h_lr=0.1, theta_steps=1,
                  lam=0.5, lam_mult=3.0, u_lr=RHO)
    theta, state = sgd(model, LR), {}
    btprop.train_epoch(model, theta, stream(40), cfg, state, epoch=1)
    lam_u = state["lam"] * state["u"].clone()
    H1, u1 = state["H"].clone(), state["u"].clone()
    btprop.end_epoch(state, cfg)
    assert state["lam"] == pytest.approx(1.5, rel=1e-15)
    torch.testing.assert_close(state["lam"] * state["u"], lam_u, rtol=1e-14, atol=0)
    assert lam_u.abs().max() > 1e-4

    ref = tiny_model("gru")
    ref.load_state_dict(model.state_dict())
    ref_state = {"lam": 1.5, "H": H1, "u": u1 * 0.5 / 1.5}
    hand_epoch(ref, stream(40), cfg.method, LR, B, ref_state, epoch=2)
    btprop.train_epoch(model, theta, stream(40), cfg, state, epoch=2)
    torch.testing.assert_close(params(model), params(ref), rtol=0, atol=1e-12)
    torch.testing.assert_close(state["u"], ref_state["u"], rtol=0, atol=1e-12)
    torch.testing.assert_close(state["H"], ref_state["H"], rtol=0, atol=1e-12)


def test_penalty_factor_is_half_lambda():
    """The reported penalty is (λ/2) Σ||F_b − H_{b+1}||², checked on zero-initialised H."""
    model, K, lam = tiny_model("lstm"), 3, 0.8
    x, y = hand_blocks(stream(31), K)
    H = torch.zeros(x.shape[1], model.state_size, dtype=torch.float64)
    u = torch.zeros(x.shape[1] - 1, model.state_size, dtype=torch.float64)
    with torch.no_grad():
        J, Fs = hand_J(model, x, y, H, u, lam)
        out = btprop.objective(model, btprop.Blocks(x, y, H, u, lam, 4))
    pen = lam / 2 * sum((Fs[b] - H[b + 1]).pow(2).sum() for b in range(x.shape[1] - 1))
    assert out["penalty"].item() == pytest.approx(pen.item(), rel=1e-13)
    assert (out["ce"] + out["penalty"]).item() == pytest.approx(J.item(), rel=1e-13)
