"""The authors' rules (SPEC §6, variant=tprnn) against hand-written float64
references, one test per rule.

The references below are written from SPEC §6's words: every block is run on
its own (a loop, no chunking), gradients come from torch.autograd, and the
updates (SGD, Adagrad with ε outside the root, the dual formula) are applied
by hand. They share nothing with btprop.py or tprnn.py but the model.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from tprop_exp.core import btprop, optim, registry
from tprop_exp.core.btprop import Blocks
from tprop_exp.core.model import LanguageModel
from tprop_exp.core.perplexity import evaluate_weighted

from helpers import V, method, params, run_cfg, sgd, stream, tiny_model

K, LAM, RHO, ETA = 3, 0.5, 0.7, 0.1


def hand_blocks(s, K=K):
    nb = (len(s) - 1) // K
    x = torch.stack([s[b * K:(b + 1) * K] for b in range(nb)], 1)
    y = torch.stack([s[b * K + 1:(b + 1) * K + 1] for b in range(nb)], 1)
    return x, y


def run_block(model, x, y, j, start, zero_type=None):
    """Block j from the flat state `start`: CE_j = (1/K) Σ_t w_t NLL_t (w = 0 for
    `zero_type`, every token still counted by 1/K), and F_j flat."""
    logits, state = model(x[:, j:j + 1], model.unflat_state(start.view(1, -1)))
    nll = F.cross_entropy(logits[:, 0], y[:, j], reduction="none")
    if zero_type is not None:
        nll = torch.where(y[:, j] == zero_type, torch.zeros_like(nll), nll)
    return nll.sum() / nll.numel(), model.flat_state(state)[0]


def hand_J(model, x, y, S, u, lam=LAM, zero_type=None):
    """J = Σ_j CE_j(S_j) + (λ/2) Σ_j ||F_j(S_j) + u_j − S_{j+1}||² over the
    constraints there are (n with n+1 slots; n−1 with n), and the F_j."""
    n = x.shape[1]
    out = [run_block(model, x, y, j, S[j], zero_type) for j in range(n)]
    ce, Fs = [o[0] for o in out], [o[1] for o in out]
    pen = sum(((Fs[j] + u[j] - S[j + 1]) ** 2).sum() for j in range(S.shape[0] - 1))
    return sum(ce) + lam / 2 * pen, Fs


def grad_S(model, x, y, S, u, scale=1.0):
    Sl = S.clone().requires_grad_(True)
    g, = torch.autograd.grad(hand_J(model, x, y, Sl, u)[0] * scale, Sl)
    return g


def grad_theta(model, x, y, S, u, scale):
    ps = list(model.parameters())
    return list(torch.autograd.grad(hand_J(model, x, y, S, u)[0] * scale, ps))


def sgd_(ps, gs, lr):
    with torch.no_grad():
        for p, g in zip(ps, gs):
            p -= lr * g


def hand_dual(model, x, y, S, u, n):
    """u_j ← u_j + ρ·λ·(F_j + u_j − S_{j+1})/n."""
    with torch.no_grad():
        Fs = hand_J(model, x, y, S, u)[1]
        return torch.stack([u[j] + RHO * LAM * (Fs[j] + u[j] - S[j + 1]) / n for j in range(u.shape[0])])


def m_(**kw):
    base = dict(slots="all_free", dual_update="scaled", drop_last_block=False, init="tprnn_zero",
                h_lr=ETA, lam=LAM, u_lr=RHO)
    base.update(kw)
    return method(**base)


def setup(cell="gru", n=4, seed=0):
    model, s = tiny_model(cell, seed=seed), stream(n * K + 1)
    x, y = hand_blocks(s)
    return model, x, y


# ---------------------------------------------------------------- slots, init

def test_all_free_slots_n_plus_one_and_first_slot_moves():
    """n+1 slots, block j from S_j, constraints j = 1..n; one SGD h-step on J moves every slot, S_1 too."""
    model, x, y = setup()
    n = x.shape[1]
    S0 = torch.randn(n + 1, model.state_size, dtype=torch.float64)
    u = 0.1 * torch.randn(n, model.state_size, dtype=torch.float64)
    S = Blocks(x, y, S0.clone().requires_grad_(True), u, LAM, 2, free_first=True)
    out = btprop.objective(model, S)
    J = hand_J(model, x, y, S0, u)[0]
    assert float(out["ce"] + out["penalty"]) == pytest.approx(float(J.detach()), rel=1e-12)
    btprop.h_steps(model, S, m_(h_steps=1, h_optimizer="sgd", init="zero"))
    ref = S0 - ETA * grad_S(model, x, y, S0, u)
    assert torch.allclose(S.H.detach(), ref, rtol=0, atol=1e-12)
    assert not torch.allclose(S.H[0].detach(), S0[0])


@pytest.mark.parametrize("slots", ["all_free", "fixed_first"])
def test_tprnn_zero_every_slot_zero_nothing_carried(slots):
    """tprnn_zero: every slot 0 whatever the carry (n+1 rows all free, n rows fixed first)."""
    from tprop_exp.core import tprnn
    model, x, y = setup()
    carry = torch.randn(1, model.state_size, dtype=torch.float64)
    H = tprnn.init_slots(model, x, carry, m_(slots=slots, init="tprnn_zero"))
    assert H.shape == (x.shape[1] + (slots == "all_free"), model.state_size)
    assert torch.equal(H.detach(), torch.zeros_like(H))


@pytest.mark.parametrize("slots", ["all_free", "fixed_first"])
def test_tprnn_mb_start(slots):
    """-mb_init: S_1 = carry, S_{j+1} = F_j(0) (each block from zero, not chained), S_{n+1} = 0."""
    from tprop_exp.core import tprnn
    model, x, y = setup()
    n = x.shape[1]
    carry = torch.randn(1, model.state_size, dtype=torch.float64)
    H = tprnn.init_slots(model, x, carry, m_(slots=slots, init="tprnn_mb")).detach()
    zero = torch.zeros(model.state_size, dtype=torch.float64)
    with torch.no_grad():
        ref = [carry[0]] + [run_block(model, x, y, j, zero)[1] for j in range(n - 1)]
    if slots == "all_free":
        ref.append(zero)
    assert torch.allclose(H, torch.stack(ref), rtol=0, atol=1e-12)


def hand_epoch_zero_start(model, s, B, lr, n_extra=1):
    """Penalty, 0 h-steps, one SGD θ-step on J/n per mini-batch, every slot 0."""
    x, y = hand_blocks(s)
    for start in range(0, x.shape[1], B):
        xb, yb = x[:, start:start + B], y[:, start:start + B]
        n = xb.shape[1]
        S = torch.zeros(n + n_extra, model.state_size, dtype=torch.float64)
        u = torch.zeros(n + n_extra - 1, model.state_size, dtype=torch.float64)
        sgd_(list(model.parameters()), grad_theta(model, xb, yb, S, u, 1 / n), lr)


def test_tprnn_zero_epoch_carries_nothing():
    """An epoch of mini-batches, each started from all-zero slots (no carry in)."""
    s = stream(40)
    model, ref = tiny_model("gru"), tiny_model("gru")
    cfg = run_cfg(batch_size=4, **dict(m_(name="penalty", mode="minibatch", h_steps=0)))
    btprop.train_epoch(model, sgd(model, 0.3), s, cfg, {})
    hand_epoch_zero_start(ref, s, 4, 0.3)
    assert torch.allclose(params(model), params(ref), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- duals and order

def update(name, model, S, m, lr=0.3):
    theta = sgd(model, lr)
    return registry.method(name).update(model, theta, S, m, True)


@pytest.mark.parametrize("mb", [False, True])
def test_admm_tprnn_dual_formula_and_order(mb):
    """ADMM, dual_update=tprnn: dual → h → θ (default flags), h → dual → θ (-mb_init)."""
    model, x, y = setup()
    ref = tiny_model("gru")
    n = x.shape[1]
    S0 = 0.3 * torch.randn(n + 1, model.state_size, dtype=torch.float64)
    m = m_(name="admm", mode="minibatch", dual_update="tprnn", h_steps=2, h_optimizer="sgd",
           theta_steps=1, init="tprnn_mb" if mb else "tprnn_zero")
    S = Blocks(x, y, S0.clone().requires_grad_(True), torch.zeros(n, model.state_size, dtype=torch.float64),
               LAM, 2, free_first=True)
    update("admm", model, S, m)
    H, u = S0.clone(), torch.zeros(n, ref.state_size, dtype=torch.float64)
    if not mb:
        u = hand_dual(ref, x, y, H, u, n)
    for _ in range(2):
        H = H - ETA * grad_S(ref, x, y, H, u)
    if mb:
        u = hand_dual(ref, x, y, H, u, n)
    sgd_(list(ref.parameters()), grad_theta(ref, x, y, H, u, 1 / n), 0.3)
    assert torch.allclose(S.u, u, rtol=0, atol=1e-12)
    assert torch.allclose(S.H.detach(), H, rtol=0, atol=1e-12)
    assert torch.allclose(params(model), params(ref), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mb", [False, True])
def test_alm_tprnn_dual_order(mb):
    """ALM, dual_update=tprnn: one dual step, then the joint steps (default
    flags); joint steps, then one dual step (-mb_init). Joint step: S on ∇J, θ on ∇(J/n)."""
    model, x, y = setup()
    ref = tiny_model("gru")
    n = x.shape[1]
    S0 = 0.3 * torch.randn(n + 1, model.state_size, dtype=torch.float64)
    m = m_(name="alm", mode="minibatch", dual_update="tprnn", h_steps=2, h_optimizer="sgd",
           init="tprnn_mb" if mb else "tprnn_zero")
    S = Blocks(x, y, S0.clone().requires_grad_(True), torch.zeros(n, model.state_size, dtype=torch.float64),
               LAM, 2, free_first=True)
    update("alm", model, S, m)
    H, u = S0.clone(), torch.zeros(n, ref.state_size, dtype=torch.float64)
    if not mb:
        u = hand_dual(ref, x, y, H, u, n)
    ps = list(ref.parameters())
    for _ in range(2):
        gH = grad_S(ref, x, y, H, u)
        gt = grad_theta(ref, x, y, H, u, 1 / n)
        H = H - ETA * gH
        sgd_(ps, gt, 0.3)
    if mb:
        u = hand_dual(ref, x, y, H, u, n)
    assert torch.allclose(S.u, u, rtol=0, atol=1e-12)
    assert torch.allclose(S.H.detach(), H, rtol=0, atol=1e-12)
    assert torch.allclose(params(model), params(ref), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- Adagrad rules

def hand_adagrad_h(model, x, y, S, u, steps, tol):
    """S ← S − η g/(√(Σg²) + 1e-5), g = ∇(J/n), state from zero; stop after the
    first step whose Euclidean ‖g‖ is below tol. Returns S, steps, norms."""
    n, G, norms = x.shape[1], torch.zeros_like(S), []
    for k in range(steps):
        g = grad_S(model, x, y, S, u, 1 / n)
        G = G + g * g
        S = S - ETA * g / (G.sqrt() + 1e-5)
        norms.append(float(g.norm()))
        if norms[-1] < tol:
            return S, k + 1, norms
    return S, steps, norms


@pytest.mark.parametrize("stop", [False, True])
def test_tprnn_adagrad_h_steps_and_stop(stop):
    model, x, y = setup(seed=2)
    n = x.shape[1]
    S0 = 0.3 * torch.randn(n + 1, model.state_size, dtype=torch.float64)
    u = 0.1 * torch.randn(n, model.state_size, dtype=torch.float64)
    _, _, norms = hand_adagrad_h(model, x, y, S0, u, 4, 0.0)
    tol = 0.0
    if stop:  # between the first and the second step's gradient norms: stops after step 2
        assert norms[1] < norms[0]
        tol = norms[1] * (1 + 1e-6)
    ref, taken_ref, _ = hand_adagrad_h(model, x, y, S0, u, 4, tol)
    S = Blocks(x, y, S0.clone().requires_grad_(True), u, LAM, 2, free_first=True)
    taken = btprop.h_steps(model, S, m_(h_steps=4, h_optimizer="tprnn_adagrad", h_tol=tol))
    assert int(taken) == taken_ref == (2 if stop else 4)
    assert torch.allclose(S.H.detach(), ref, rtol=0, atol=1e-12)


def test_tprnn_adagrad_theta_persistent_state_and_clip():
    """θ: Adagrad with ε outside the root, its Σg² kept across mini-batches (and
    epochs), on ∇θ(J/n) clipped to global norm 0.5."""
    s = stream(40)
    model, ref = tiny_model("gru"), tiny_model("gru")
    cfg = OmegaConf.merge(run_cfg(batch_size=4, clip=0.5, **dict(m_(name="penalty", mode="minibatch", h_steps=0))),
                          {"train": {"optimizer": "tprnn_adagrad", "lr": 0.2}})
    theta = optim.build(model, cfg)
    for e in (1, 2):
        btprop.train_epoch(model, theta, s, cfg, {}, epoch=e)
    ps = list(ref.parameters())
    G, norms = [torch.zeros_like(p) for p in ps], []
    x, y = hand_blocks(s)
    for _ in (1, 2):
        for start in range(0, x.shape[1], 4):
            xb, yb = x[:, start:start + 4], y[:, start:start + 4]
            nb = xb.shape[1]
            S = torch.zeros(nb + 1, ref.state_size, dtype=torch.float64)
            g = grad_theta(ref, xb, yb, S, torch.zeros(nb, ref.state_size, dtype=torch.float64), 1 / nb)
            norm = math.sqrt(sum(float((gi ** 2).sum()) for gi in g))
            norms.append(norm)
            g = [gi * min(1.0, 0.5 / (norm + 1e-6)) for gi in g]
            with torch.no_grad():
                for p, gi, Gi in zip(ps, g, G):
                    Gi += gi * gi
                    p -= 0.2 * gi / (Gi.sqrt() + 1e-5)
    assert max(norms) > 0.5 > min(norms)  # the clip acts on some steps, not all
    assert torch.allclose(params(model), params(ref), rtol=0, atol=1e-10)


# ---------------------------------------------------------------- token weights

def test_zero_weight_first_type_in_training_and_evaluation():
    """Type t weighs 0 in CE_b (the mean still over K tokens) and in the
    authors' evaluation (the mean still over every token); the true number
    is unchanged."""
    model, x, y = setup()
    t = int(y[0, 0])
    model.zero_type = t
    n = x.shape[1]
    S0 = 0.3 * torch.randn(n, model.state_size, dtype=torch.float64)
    u = torch.zeros(n - 1, model.state_size, dtype=torch.float64)
    out = btprop.objective(model, Blocks(x, y, S0, u, LAM, 2))
    J = hand_J(model, x, y, S0, u, zero_type=t)[0]
    assert float(out["ce"] + out["penalty"]) == pytest.approx(float(J.detach()), rel=1e-12)
    assert (y == t).sum() > 0
    tokens = stream(60)
    nll, ppl, nll_w, ppl_w = evaluate_weighted(model, tokens, 3, t)
    cols = (len(tokens) // 3)
    data = tokens[:cols * 3].view(3, cols).t()  # 3 streams, state carried along each
    with torch.no_grad():
        logits, _ = model(data[:-1], model.zero_state(3))
        tok = F.cross_entropy(logits.flatten(0, 1), data[1:].flatten(), reduction="none")
    keep = data[1:].flatten() != t
    assert nll == pytest.approx(float(tok.mean()), rel=1e-12)
    assert nll_w == pytest.approx(float((tok * keep).sum() / tok.numel()), rel=1e-12)
    assert ppl_w < ppl


# ---------------------------------------------------------------- init, data, batch

def test_tprnn_init():
    """Embedding and decoder weights U(±init_range), decoder bias 0, recurrent U(±1/√d)."""
    d, r = 16, 0.05
    torch.manual_seed(0)
    model = LanguageModel(V, "gru", d, 1, init_range=r, init="tprnn")
    assert torch.equal(model.decoder.bias, torch.zeros_like(model.decoder.bias))
    for p in (model.embed.weight, model.decoder.weight):
        assert p.abs().max() <= r and p.abs().max() > 0.9 * r
    rec = torch.cat([p.flatten() for p in model.rnn.parameters()])
    assert rec.abs().max() <= d ** -0.5 and rec.abs().max() > 0.9 * d ** -0.5
    torch.manual_seed(0)
    plain = LanguageModel(V, "gru", d, 1, init_range=r)
    assert all(p.abs().max() <= r for p in plain.parameters())


@pytest.mark.parametrize("mode", ["minibatch", "batch"])
def test_drop_last_block(mode):
    """The epoch's last block never trains: the same as the stream without it."""
    s = stream(40)  # 13 blocks of 3
    cfg = run_cfg(batch_size=4, **dict(method(name="penalty", mode=mode, h_steps=1, h_lr=0.1)))
    dropped = OmegaConf.merge(cfg, {"method": {"drop_last_block": True}})
    a, b, c = tiny_model("gru"), tiny_model("gru"), tiny_model("gru")
    btprop.train_epoch(a, sgd(a, 0.3), s, dropped, {})
    btprop.train_epoch(b, sgd(b, 0.3), s[:12 * K + 1], cfg, {})
    btprop.train_epoch(c, sgd(c, 0.3), s, cfg, {})
    assert torch.allclose(params(a), params(b), rtol=0, atol=1e-13)
    assert not torch.allclose(params(a), params(c), rtol=0, atol=1e-6)


@pytest.mark.parametrize("init,restarts", [("tprnn_zero", True), ("forward", False)])
def test_batch_restarts_H_and_u_every_epoch(init, restarts):
    """The authors' "batch" run is one mini-batch of every block: H and u
    restart at 0 every epoch, so epoch 2 is the same from a fresh state."""
    s = stream(40)
    cfg = run_cfg(**dict(m_(name="admm", mode="batch", init=init, h_steps=2, h_optimizer="sgd",
                            u_start_epoch=1, dual_update="tprnn")))
    a = tiny_model("gru")
    state = {}
    btprop.train_epoch(a, sgd(a, 0.3), s, cfg, state, epoch=1)
    b = tiny_model("gru")
    b.load_state_dict(a.state_dict())
    assert state["u"].abs().max() > 0 and state["H"][1:].abs().max() > 0
    btprop.train_epoch(a, sgd(a, 0.3), s, cfg, state, epoch=2)
    btprop.train_epoch(b, sgd(b, 0.3), s, cfg, {}, epoch=2)
    assert torch.allclose(params(a), params(b), rtol=0, atol=1e-13) == restarts


def test_tprnn_dual_step_with_nonzero_duals():
    """u_j ← u_j + ρ·λ·(F_j + u_j − S_{j+1})/n from u ≠ 0 (a later dual step)."""
    from tprop_exp.core import tprnn
    model, x, y = setup()
    n = x.shape[1]
    S0 = 0.3 * torch.randn(n + 1, model.state_size, dtype=torch.float64)
    u0 = 0.2 * torch.randn(n, model.state_size, dtype=torch.float64)
    S = Blocks(x, y, S0.clone(), u0.clone(), LAM, 2, free_first=True)
    tprnn.dual(model, S, m_(dual_update="tprnn"))
    assert torch.allclose(S.u, hand_dual(model, x, y, S0, u0, n), rtol=0, atol=1e-13)


def test_init_from_state_dict_and_refusal(tmp_path):
    """train.init_from: θ from a state_dict (plain, or a run's model.pt); a misfit is one line."""
    from tprop_exp import UserError
    from tprop_exp.run.trainer import start_from
    src, dst = tiny_model("gru", seed=1), tiny_model("gru", seed=2)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": src.state_dict(), "vocab_size": V}, tmp_path / "model.pt")
    for f in ("plain.pt", "model.pt"):
        dst = tiny_model("gru", seed=2)
        start_from(dst, str(tmp_path / f))
        assert torch.equal(params(dst), params(src))
    with pytest.raises(UserError, match="train.init_from"):
        start_from(tiny_model("lstm"), str(tmp_path / "plain.pt"))


@pytest.mark.parametrize("stop", [False, True])
def test_alm_tprnn_adagrad_joint_steps_and_stop(stop):
    """ALM under tprnn_adagrad: S (Adagrad rule, restarted) and θ (the run's
    optimizer, SGD here) both on ∇(J/n); stop after the first joint step with
    √(‖g_S‖² + ‖g_θ‖²) below h_tol."""
    def hand(ref, S, u, tol):
        ps, G, norms = list(ref.parameters()), torch.zeros_like(S), []
        for k in range(3):
            Sl = S.clone().requires_grad_(True)
            gS, *gt = torch.autograd.grad(hand_J(ref, x, y, Sl, u)[0] / n, [Sl, *ps])
            norms.append(math.sqrt(float((gS ** 2).sum()) + sum(float((g ** 2).sum()) for g in gt)))
            G = G + gS * gS
            S = (S - ETA * gS / (G.sqrt() + 1e-5)).detach()
            sgd_(ps, gt, 0.3)
            if norms[-1] < tol:
                return S, k + 1, norms
        return S, 3, norms

    model, x, y = setup(seed=3)
    n = x.shape[1]
    S0 = 0.3 * torch.randn(n + 1, model.state_size, dtype=torch.float64)
    u = torch.zeros(n, model.state_size, dtype=torch.float64)
    norms = hand(tiny_model("gru", seed=3), S0, u, 0.0)[2]
    tol = norms[1] * (1 + 1e-6) if stop else 0.0
    if stop:
        assert norms[1] < norms[0]
    ref = tiny_model("gru", seed=3)
    H, taken_ref, _ = hand(ref, S0, u, tol)
    m = m_(name="alm", mode="minibatch", h_steps=3, h_optimizer="tprnn_adagrad", h_tol=tol)
    S = Blocks(x, y, S0.clone().requires_grad_(True), u.clone(), LAM, 2, free_first=True)
    out = registry.method("alm").update(model, sgd(model, 0.3), S, m, False)
    assert int(out["h_steps"]) == taken_ref == (2 if stop else 3)
    assert torch.allclose(S.H.detach(), H, rtol=0, atol=1e-12)
    assert torch.allclose(params(model), params(ref), rtol=0, atol=1e-12)


def test_tprnn_adagrad_h_steps_move_tanh_states_with_a_free_first_slot():
    """The authors' h-steps under method.h_param=tanh (SPEC §7) and all_free slots:
    Adagrad on Z with ∂(J/n)/∂Z = ∂(J/n)/∂H ⊙ (1 − tanh²Z), Z from atanh of the
    clamped start, every slot (S_1 too) reparametrised: a GRU bounds its whole state."""
    model, x, y = setup(seed=3)
    n = x.shape[1]
    S0 = 0.3 * torch.randn(n + 1, model.state_size, dtype=torch.float64)
    S0[1, 0] = 1.0  # saturated: the clamp keeps atanh finite
    u = 0.1 * torch.randn(n, model.state_size, dtype=torch.float64)
    Z = torch.atanh(S0.clamp(-1 + 1e-6, 1 - 1e-6))
    G = torch.zeros_like(Z)
    for _ in range(2):
        g = grad_S(model, x, y, torch.tanh(Z), u, 1 / n) * (1 - torch.tanh(Z) ** 2)
        G = G + g * g
        Z = Z - ETA * g / (G.sqrt() + 1e-5)
    S = Blocks(x, y, S0.clone().requires_grad_(True), u, LAM, 2, free_first=True)
    btprop.h_steps(model, S, m_(h_steps=2, h_optimizer="tprnn_adagrad", h_tol=0.0, h_param="tanh"))
    assert torch.allclose(S.H.detach(), torch.tanh(Z), rtol=0, atol=1e-12)
    assert not torch.allclose(S.H[0].detach(), S0[0])
