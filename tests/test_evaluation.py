"""Frozen-θ evaluation (SPEC §1) against a hand computation, in float64.

The reference walks the stream one token at a time, carrying the state, and
sums -log softmax(target): nothing shared with evaluate() but the model.
"""
import math

import pytest
import torch

from tprop_exp import evaluation
from tprop_exp.data import batchify

from helpers import V, params, stream, tiny_model

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
