"""Frozen-θ evaluation (SPEC §1) against a hand computation, in float64.

The reference walks the stream one token at a time, carrying the state, and
sums -log softmax(target): nothing shared with evaluate() but the model.
"""
import math

import pytest
import torch

from tprop_exp.core import perplexity as evaluation
from tprop_exp.data.corpora import batchify

from helpers import V, needs_cpu_bf16_lstm, params, stream, tiny_model

CELLS = ["rnn", "gru", "lstm"]


def hand_nll_sum(model, column):
    """Σ_t -log p(x_{t+1} | x_1..x_t) over one stream, one token at a time."""
    state = model.zero_state(1)
    total = 0.0
    with torch.no_grad():
        for t in range(len(column) - 1):
            logits, state = model(column[t].view(1, 1), state)
            total += -torch.log_softmax(logits[0, 0], dim=-1)[column[t + 1]].item()
    return total, len(column) - 1


def hand_ppl(model, tokens, n_streams):
    cols = batchify(tokens, n_streams)
    total = count = 0
    for j in range(cols.shape[1]):
        s, n = hand_nll_sum(model, cols[:, j])
        total, count = total + s, count + n
    return total / count, math.exp(total / count)


@pytest.mark.parametrize("cell,layers", [("rnn", 1), ("gru", 1), ("lstm", 1), ("lstm", 2)])
def test_one_stream_equals_hand_computation(cell, layers):
    model, tokens = tiny_model(cell, layers), stream(50)
    nll, ppl = evaluation.evaluate(model, tokens, n_streams=1)
    ref_nll, ref_ppl = hand_ppl(model, tokens, 1)
    assert abs(nll - ref_nll) < 1e-10
    assert abs(ppl - ref_ppl) < 1e-10 * ref_ppl
    # every one of the 49 predicted tokens counts: dropping or adding one changes the mean
    assert abs(ref_nll - hand_nll_sum(model, tokens[:-1])[0] / 48) > 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_three_streams_equal_hand_computation_over_batchify_columns(cell):
    model, tokens = tiny_model(cell), stream(61)  # 61 = 3·20 + 1: one token dropped
    nll, ppl = evaluation.evaluate(model, tokens, n_streams=3)
    ref_nll, ref_ppl = hand_ppl(model, tokens, 3)
    assert abs(nll - ref_nll) < 1e-10
    assert abs(ppl - ref_ppl) < 1e-10 * ref_ppl
    # the layout matters: three streams are not one stream (the state restarts per column)
    assert abs(nll - hand_ppl(model, tokens, 1)[0]) > 1e-6


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("n_streams", [1, 3])
def test_window_does_not_change_the_result(cell, n_streams):
    model, tokens = tiny_model(cell), stream(97)
    ref = hand_ppl(model, tokens, n_streams)[0]
    for window in (1, 2, 3, 7, 31, 256):
        nll, _ = evaluation.evaluate(model, tokens, n_streams=n_streams, window=window)
        assert abs(nll - ref) < 1e-10, window


def test_zero_decoder_gives_perplexity_equal_to_vocab_size():
    model, tokens = tiny_model("lstm"), stream(40)
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    for n in (1, 3):
        nll, ppl = evaluation.evaluate(model, tokens, n_streams=n)
        assert abs(nll - math.log(V)) < 1e-14
        assert abs(ppl - V) < 1e-12


def test_evaluation_changes_nothing_and_restores_the_mode():
    model, tokens = tiny_model("gru"), stream(30)
    before = params(model).clone()
    model.train()
    evaluation.evaluate(model, tokens, n_streams=2)
    assert model.training
    model.eval()
    evaluation.evaluate(model, tokens, n_streams=2)
    assert not model.training
    assert torch.equal(params(model), before)
    assert all(p.grad is None for p in model.parameters())


def test_perplexity_overflow_is_inf():
    assert evaluation.perplexity(0.0) == 1.0
    assert evaluation.perplexity(math.log(7.0)) == pytest.approx(7.0, rel=1e-15)
    assert evaluation.perplexity(1e4) == math.inf
    assert evaluation.perplexity(math.inf) == math.inf


# ------------------------------------------------------- train_ppl, precision

def tiny_trainer(tmp_path, name, eval_tokens):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from tprop_exp.run import trainer as train
    from helpers import method, sgd

    m = method(name=name, mode="minibatch", block_size=3, h_steps=1, h_lr=0.1)
    cfg = OmegaConf.create({"method": dict(m), "train": {
        "batch_size": 4, "clip": 0.0, "max_epochs": 1, "patience": 5, "eval_batch_size": 3,
        "train_eval_tokens": eval_tokens, "ckpt_interval_s": 600}})
    model = tiny_model("gru")
    theta = sgd(model, 0.5)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(theta.opt, factor=0.5, patience=0)
    corpus = SimpleNamespace(train=stream(120), valid=stream(40, seed=2), test=stream(40, seed=3),
                             vocab=[str(i) for i in range(V)])
    return train.Trainer(cfg, model, theta, sched, corpus, tmp_path, config={}), corpus


@pytest.mark.parametrize("name", ["bptt", "penalty"])
def test_train_ppl_row_is_the_frozen_model_on_the_training_prefix(tmp_path, name):
    """The epoch row's train_ppl is exp(mean NLL) of θ as the epoch left it, over
    the first train.train_eval_tokens training tokens in E streams, state carried:
    not the method's running objective, not the whole split."""
    t, corpus = tiny_trainer(tmp_path, name, eval_tokens=61)
    assert t.fit() == ("completed", None)
    row = t.history[0]
    ref_nll, ref_ppl = hand_ppl(t.model, corpus.train[:61], 3)
    assert row["train_ppl"] == pytest.approx(ref_ppl, rel=1e-10)
    assert t.train_ppl() == pytest.approx(ref_ppl, rel=1e-10)
    running = row["running_nll"] if name == "bptt" else row["ce"]
    assert abs(math.log(row["train_ppl"]) - running) > 1e-3  # θ moved while the objective ran
    assert abs(ref_nll - hand_ppl(t.model, corpus.train, 3)[0]) > 1e-5  # the prefix matters


def test_train_ppl_over_the_whole_split_when_null(tmp_path):
    t, corpus = tiny_trainer(tmp_path, "bptt", eval_tokens=None)
    assert t.train_ppl() == pytest.approx(hand_ppl(t.model, corpus.train, 3)[1], rel=1e-10)


@needs_cpu_bf16_lstm
def test_bf16_forward_keeps_fp32_state_and_float64_nll_sum():
    """train.precision=bf16 on a CPU: logits in bf16 under autocast, the state and
    the weights in fp32, and evaluation's NLL summed in float64 (a bf16 or fp16
    running sum of 6000 values near 2, added 14 at a time, would stall far below the truth)."""
    from tprop_exp.core.btprop import init_states
    from tprop_exp.core.model import PRECISIONS

    model = tiny_model("lstm", layers=2).float()
    model.amp_dtype = PRECISIONS["bf16"]
    assert model.amp_dtype is torch.bfloat16
    logits, state = model(stream(12).view(6, 2), model.zero_state(2))
    assert logits.dtype == torch.bfloat16
    assert all(s.dtype == torch.float32 for s in state)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = stream(13)[:12].view(4, 3)
    H = init_states(model, x, model.flat_state(model.zero_state(1)), "forward")
    assert H.dtype == torch.float32  # BTPROP's free variables too

    tokens = stream(6001)
    nll_bf16, _ = evaluation.evaluate(model, tokens, n_streams=2, window=7)  # 429 additions
    model.amp_dtype = None
    nll_fp32, _ = evaluation.evaluate(model, tokens, n_streams=2, window=7)
    with torch.no_grad():  # the reference: fp32 forward over each whole stream, float64 sum
        cols = batchify(tokens, 2)
        logits, _ = model(cols[:-1], model.zero_state(2))
        ref = -torch.log_softmax(logits.double(), -1).gather(2, cols[1:, :, None]).mean().item()
    assert abs(nll_fp32 - ref) < 1e-6 * ref
    assert abs(nll_bf16 - ref) < 2e-3 * ref
    assert all(p.dtype == torch.float32 for p in model.parameters())
