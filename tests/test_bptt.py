"""Truncated BPTT (SPEC §1) against hand-written loops, in float64.

The references walk the stream one token at a time and detach the state
every K tokens; they share nothing with bptt.py but the model.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from tprop_exp import UserError
from tprop_exp.core.methods import bptt
from tprop_exp.data.corpora import batchify, windows
from tprop_exp.core.model import detach
from tprop_exp.core.optim import ThetaStep

from helpers import grads, needs_cpu_bf16_lstm, params, run_cfg, stream, tiny_model


def train(model, opt, s, *, batch_size, K, clip, mode, pos=None, on_update=None):
    """bptt.train_epoch with the run config it reads built from keywords."""
    cfg = run_cfg(batch_size=batch_size, clip=clip, name="bptt", mode=mode, block_size=K)
    return bptt.train_epoch(model, ThetaStep(opt, clip), s, cfg, {}, pos=pos, on_update=on_update)


def bptt_windows(s, B, K):
    return windows(batchify(s, B), K)[:2]

CELLS = ["rnn", "gru", "lstm"]


def hand_loss(model, column, K, n_pred):
    """Mean NLL of the first n_pred predictions of one stream, one token at a
    time, the state detached every K tokens (K=None: never)."""
    state = model.zero_state(1)
    total = 0.0
    for t in range(n_pred):
        if K is not None and t > 0 and t % K == 0:
            state = detach(state)
        logits, state = model(column[t].view(1, 1), state)
        total = total + F.cross_entropy(logits[0], column[t + 1].view(1))
    return total / n_pred


def hand_grad(model, column, K, n_pred):
    model.zero_grad()
    loss = hand_loss(model, column, K, n_pred)
    loss.backward()
    return grads(model).clone(), loss.item()


def sgd_step_gradient(model, s, K, mode, batch_size=1, clip=0.0):
    """Run one epoch of bptt.train_epoch with SGD lr=1 and read the update back."""
    before = params(model).clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    out = train(model, opt, s, batch_size=batch_size, K=K, clip=clip, mode=mode)
    return before - params(model), out


# ------------------------------------------------------------------- windows

def test_windows_layout_and_shifted_targets():
    s = torch.arange(50)  # the value of a token is its position in the stream
    B, K = 3, 4
    x, y = bptt_windows(s, B, K)
    T = 50 // B  # 16 steps per stream; (16 - 1) // 4 = 3 whole windows, 3 positions dropped
    assert x.shape == y.shape == (3, K, B)
    for i in range(3):
        for k in range(K):
            for b in range(B):
                assert x[i, k, b] == b * T + i * K + k  # column b is the b-th contiguous slice
                assert y[i, k, b] == x[i, k, b] + 1  # the target is the next token
    assert (y // T == x // T).all()  # a target never crosses into the next stream
    assert torch.equal(x[1:, 0], y[:-1, -1])  # consecutive windows tile the stream


@pytest.mark.parametrize("n,B,K,nw", [(20, 1, 19, 1), (20, 1, 1, 19), (43, 1, 4, 10),
                                      (61, 3, 5, 3), (64, 4, 15, 1)])
def test_windows_count(n, B, K, nw):
    x, y = bptt_windows(torch.arange(n), B, K)
    assert x.shape == (nw, K, B)
    assert torch.equal(y.flatten(), (x + 1).flatten())


def test_stream_shorter_than_one_window_is_a_clear_error():
    """A user's error (exit status 2 from the command line), not a crash."""
    model = tiny_model()
    with pytest.raises(UserError, match="too short for one window"):
        train(model, torch.optim.SGD(model.parameters(), lr=1.0), stream(10),
                         batch_size=1, K=20, clip=0, mode="minibatch")


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("mode", ["batch", "minibatch"])
def test_whole_sequence_window_is_full_autograd(cell, mode):
    s = stream(20)
    model, ref = tiny_model(cell), tiny_model(cell)
    g_full, loss = hand_grad(ref, s, None, 19)
    g, out = sgd_step_gradient(model, s, K=19, mode=mode)
    torch.testing.assert_close(g, g_full, rtol=0, atol=1e-12)
    assert g_full.norm() > 1e-3
    assert out["running_nll"] == pytest.approx(loss, abs=1e-12)
    assert out["tokens"] == 19


@pytest.mark.parametrize("cell", CELLS)
def test_truncated_gradient_is_real_and_matches_a_detached_loop(cell):
    s, K = stream(43), 4  # 10 windows of 4 tokens; the last 2 predictions are dropped
    model, ref = tiny_model(cell), tiny_model(cell)
    g_trunc, loss = hand_grad(ref, s, K, 40)
    g_full, loss_full = hand_grad(ref, s, None, 40)
    g, out = sgd_step_gradient(model, s, K=K, mode="batch")
    torch.testing.assert_close(g, g_trunc, rtol=0, atol=1e-12)
    # the truncation is real: the gradient is not the full one (same loss value, though)
    assert (g - g_full).norm() > 1e-4 * g_full.norm()
    assert loss == pytest.approx(loss_full, abs=1e-12)
    assert out["running_nll"] == pytest.approx(loss, abs=1e-12)
    assert out["tokens"] == 40


@pytest.mark.parametrize("cell", CELLS)
def test_batch_mode_over_parallel_streams(cell):
    s, B, K = stream(62), 2, 5  # two streams of 31: 6 windows each
    model, ref = tiny_model(cell), tiny_model(cell)
    cols = batchify(s, B)
    ref.zero_grad()
    loss = sum(hand_loss(ref, cols[:, b], K, 30) for b in range(B)) / B
    loss.backward()
    g, out = sgd_step_gradient(model, s, K=K, mode="batch", batch_size=B)
    torch.testing.assert_close(g, grads(ref), rtol=0, atol=1e-12)
    assert out["running_nll"] == pytest.approx(loss.item(), abs=1e-12)
    assert out["tokens"] == 60


def test_clip_scales_the_update_to_the_clip_norm():
    s, K, clip = stream(43), 4, 1e-3
    model, ref = tiny_model("lstm"), tiny_model("lstm")
    g_ref, _ = hand_grad(ref, s, K, 40)
    assert g_ref.norm() > 10 * clip
    g, _ = sgd_step_gradient(model, s, K=K, mode="batch", clip=clip)
    n = g_ref.norm().item()
    assert g.norm().item() == pytest.approx(n * clip / (n + 1e-6), rel=1e-9)  # torch's clip_coef
    torch.testing.assert_close(g / g.norm(), g_ref / g_ref.norm(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_minibatch_trajectory_matches_a_hand_loop(cell):
    s, B, K, lr = stream(62), 2, 5, 0.3
    model, ref = tiny_model(cell), tiny_model(cell)
    cols = batchify(s, B)
    state = ref.zero_state(B)
    nll = []
    for i in range(6):  # one SGD update per window, the state carried across, detached
        ref.zero_grad()
        logits, state = ref(cols[i * K:(i + 1) * K], state)
        loss = F.cross_entropy(logits.flatten(0, 1), cols[i * K + 1:(i + 1) * K + 1].flatten())
        loss.backward()
        nll.append(loss.item())
        with torch.no_grad():
            for p in ref.parameters():
                p -= lr * p.grad
        state = detach(state)
    out = train(model, torch.optim.SGD(model.parameters(), lr=lr), s,
                           batch_size=B, K=K, clip=0, mode="minibatch")
    torch.testing.assert_close(params(model), params(ref), rtol=0, atol=1e-12)
    assert out["running_nll"] == pytest.approx(sum(nll) / 6, abs=1e-12)


# ------------------------------------------------------------ updates, resume

@pytest.mark.parametrize("mode,expected", [("minibatch", None), ("batch", 1)])
@pytest.mark.parametrize("B", [1, 3])
def test_number_of_optimizer_steps(mode, expected, B):
    s, K = stream(200), 7
    nw = (200 // B - 1) // K
    model = tiny_model("gru")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps, updates = [], []
    real_step = opt.step
    opt.step = lambda *a, **k: (steps.append(1), real_step(*a, **k))[1]
    train(model, opt, s, batch_size=B, K=K, clip=0.5, mode=mode,
                     on_update=lambda pos: updates.append(pos["update"]))
    assert len(steps) == (nw if expected is None else expected)
    assert updates == list(range(1, nw + 1))


@pytest.mark.parametrize("cell", CELLS)
def test_resume_from_a_position_ends_exactly_as_uninterrupted(cell):
    """What the run driver checkpoints mid-epoch ({update, state, nll_sum} plus the
    model and optimizer) is enough to finish the epoch bit for bit."""
    s, B, K, cut = stream(150), 2, 4, 7
    a = tiny_model(cell)
    opt_a = torch.optim.Adagrad(a.parameters(), lr=0.2)  # an optimizer with state
    out_a = train(a, opt_a, s, batch_size=B, K=K, clip=0.5, mode="minibatch")

    b = tiny_model(cell)
    opt_b = torch.optim.Adagrad(b.parameters(), lr=0.2)
    saved = {}

    def on_update(pos):
        if pos["update"] == cut:
            saved.update(model=copy.deepcopy(b.state_dict()), opt=copy.deepcopy(opt_b.state_dict()),
                         pos=copy.deepcopy(pos))
    train(b, opt_b, s, batch_size=B, K=K, clip=0.5, mode="minibatch", on_update=on_update)
    assert saved

    c = tiny_model(cell, seed=123)  # a fresh process: other weights until loaded
    c.load_state_dict(saved["model"])
    opt_c = torch.optim.Adagrad(c.parameters(), lr=0.2)
    opt_c.load_state_dict(saved["opt"])
    out_c = train(c, opt_c, s, batch_size=B, K=K, clip=0.5, mode="minibatch",
                             pos=saved["pos"])
    assert torch.equal(params(c), params(a))
    assert out_c == out_a


@needs_cpu_bf16_lstm
def test_bf16_autocast_keeps_fp32_weights_and_a_close_gradient():
    """train.precision=bf16: the forward runs in bf16, the weights, their
    gradients and the carried state stay fp32, and the full-batch gradient is
    the fp32 one to bf16's precision."""
    from tprop_exp.core.model import PRECISIONS

    s, K = stream(43), 4
    out = {}
    for precision in ("fp32", "bf16"):
        model = tiny_model("lstm").float()
        model.amp_dtype = PRECISIONS[precision]
        g, stats = sgd_step_gradient(model, s, K=K, mode="batch")
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        out[precision] = g, stats["running_nll"]
    (g32, nll32), (g16, nll16) = out["fp32"], out["bf16"]
    assert g16.dtype == torch.float32
    assert (g16 - g32).norm() < 0.05 * g32.norm()
    assert not torch.equal(g16, g32)  # bf16 did run
    assert nll16 == pytest.approx(nll32, rel=5e-3)
