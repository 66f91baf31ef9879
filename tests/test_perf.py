"""The speed switches change no result: train.compile (BTPROP's per-chunk
terms under torch.compile) and the fused/foreach optimizers.

On a CPU the test compiles with the aot_eager backend (it traces and runs
the same graph as inductor would be given, without inductor's slow C++
build), so it checks that compiling the chunk terms keeps every number.
"""
import pytest
import torch
from omegaconf import OmegaConf

from tprop_exp.core.methods import bptt
from tprop_exp.core import btprop
from tprop_exp.core import optim
from tprop_exp.core.optim import OPTIMIZERS, ThetaStep

from helpers import params, run_cfg, sgd, stream, tiny_model


def btprop_epoch(compiled):
    btprop.compile_terms(compiled, backend="aot_eager")
    try:
        model = tiny_model("lstm")
        cfg = run_cfg(batch_size=4, clip=0.5, name="admm", mode="minibatch", block_size=3,
                      h_steps=2, chunk_blocks=2, u_start_epoch=1)
        stats = btprop.train_epoch(model, sgd(model, 0.3, 0.5), stream(60), cfg, {})
        return params(model), stats
    finally:
        btprop.compile_terms(False)


def test_compile_switch_changes_no_result():
    (p_eager, s_eager), (p_comp, s_comp) = btprop_epoch(False), btprop_epoch(True)
    assert not torch.equal(p_eager, params(tiny_model("lstm")))  # it trained
    torch.testing.assert_close(p_comp, p_eager, rtol=0, atol=1e-12)
    for key in s_eager:
        assert abs(s_comp[key] - s_eager[key]) < 1e-12, key
    assert btprop.TERMS["fn"] is btprop.chunk_terms  # the switch is off again


def test_plan_expands_the_sweep_and_estimates_each_run(monkeypatch):
    """Runs come from Hydra's own sweep expansion; time per run = epochs ×
    (training tokens / training speed + evaluated tokens / evaluation speed) + test."""
    from tprop_exp.report import plan
    monkeypatch.setattr(plan, "speed", lambda cfg, vocab: (1000.0, 1e6))  # timing is not tested here
    table = plan.plan(["experiment=demo", "profile=sample", "arch.hidden_size=8,16"])
    assert len(table) == 4  # method: bptt,admm × the two sizes given here
    assert {frozenset(r.split()) for r in table["setting"]} == set(
        frozenset({h, m}) for h in ("arch.hidden_size=8", "arch.hidden_size=16")
        for m in ("method=bptt", "method=admm"))
    # a command-line sweep of a key the experiment sweeps replaces it, as in Hydra
    assert len(plan.plan(["experiment=demo", "profile=sample", "method=bptt"])) == 1
    row = table.iloc[0]
    cfg = plan.sweep_runs(["experiment=demo", "method=bptt"])[0][1]
    _, _, n_valid, n_test = plan.corpus_facts(cfg.dataset, cfg.data_dir)
    evaluated = n_valid + min(row["train tokens"], 100_000)  # train.train_eval_tokens
    want = row["epochs"] * (row["train tokens"] / 1000.0 + evaluated / 1e6) + n_test / 1e6
    assert row["per_run_s"] == pytest.approx(want, rel=1e-12)
    assert row["epochs"] == 2 and 0 < row["train tokens"] <= 1_000_000  # demo: 2 epochs, ≤ 1M tokens


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_fused_optimizer_steps_as_the_per_tensor_loop(name):
    """optim.build fuses each step into one kernel on a CPU; over a BPTT epoch
    with clipping it moves θ as torch's plain per-tensor loop does, up to rounding."""
    cfg = OmegaConf.merge(run_cfg(batch_size=4, clip=0.5, name="bptt", mode="minibatch",
                                  block_size=5),
                          {"train": {"optimizer": name, "lr": 0.05}})
    ends = []
    for fused in (True, False):
        model = tiny_model("lstm").float()
        theta = optim.build(model, cfg) if fused else ThetaStep(
            OPTIMIZERS[name](model.parameters(), lr=cfg.train.lr, foreach=False), cfg.train.clip)
        assert theta.opt.defaults["fused"] is (True if fused else None)  # None: torch's default
        bptt.train_epoch(model, theta, stream(400), cfg, {})
        ends.append(params(model))
    moved = (ends[1] - params(tiny_model("lstm").float())).abs().max()
    assert moved > 0.05  # it trained: 19 updates
    torch.testing.assert_close(ends[0], ends[1], rtol=0, atol=1e-5)
