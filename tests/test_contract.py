"""The run contract's last gaps (issue 23): values the schema accepts but the
machine cannot run, group keys, flags, messages, signals and disk, sweeps with
duplicate identities, ALM under fp16, evaluation mode.

The fast tests run a few cases through the command line and the rest in this
process; the whole battery (scripts/battery.py, `make battery`, 60+ cases) is
the slow test at the end.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import V, cpu_runs_bf16_lstm, method, stream
from omegaconf import OmegaConf

from tprop_exp import UserError
from tprop_exp.core import btprop
from tprop_exp.core.methods import alm
from tprop_exp.core.model import LanguageModel
from tprop_exp.core.optim import ThetaStep
from tprop_exp.core.perplexity import evaluate
from tprop_exp.run import checks, machine, records

ROOT = Path(__file__).resolve().parents[1]
TINY = ["arch.hidden_size=8", "train.train_tokens=2000", "train.max_epochs=1", "train.eval_batch_size=4",
        "dataset=sample_chars"]


def cli(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "tprop_exp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def refused(p, *words):
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("tprop_exp: error: "), lines
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------- through the command line (fast)

@pytest.mark.parametrize("args,words", [
    (["--foo"], ("unknown flag '--foo'",)),
    (["train.lr=2", "--config-dir", "/tmp", "train.clip=1"], ("--config-dir", "comes after the overrides")),
])
def test_flags_are_one_line(tmp_path, args, words):
    refused(cli(args, tmp_path), *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU's missing fp16 LSTM kernel")
def test_fp16_on_a_cpu_is_refused_before_anything_is_written(tmp_path):
    line = refused(cli(TINY + ["train.precision=fp16"], tmp_path), "train.precision", "'fp16'", "cpu", "LSTM")
    assert "Run workload" not in line  # oneDNN's advice, not the cause
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available() or cpu_runs_bf16_lstm(), reason="this CPU runs bf16 LSTMs")
def test_bf16_where_the_cpu_cannot_is_refused_before_anything_is_written(tmp_path):
    line = refused(cli(TINY + ["train.precision=bf16"], tmp_path), "train.precision", "'bf16'", "cpu", "LSTM")
    assert "or bf16" not in line  # no advice to use what just failed
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_key_the_source_does_not_read_is_refused(tmp_path):
    """The record would say tokens: bytes while the run tokenised words."""
    refused(cli(TINY + ["dataset.tokens=bytes"], tmp_path), "dataset.tokens", "'bytes'", "chars, words")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- in this process (fast)

def composed(*overrides):
    from hydra import compose, initialize_config_dir

    import tprop_exp.cli  # noqa: F401  (the resolvers)
    from tprop_exp.run.schema import CONF
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("overrides,words", [
    (["train.seed=-1"], ("train.seed", "-1", "2**64")),
    ([f"train.seed={2 ** 64}"], ("train.seed",)),
    (["dataset.train=/x"], ("dataset.train", "not read by dataset sample_chars")),
    (["dataset=local", "dataset.train_frac=0.5"], ("dataset.train_frac",)),
    (["dataset.source=ftp"], ("dataset.source", "ftp")),
    (["train.device=mps"], ("train.device", "mps")),
    (["train.device=cuda:99"], ("train.device", "cuda:99")),
])
def test_values_the_machine_cannot_run(overrides, words):
    with pytest.raises(UserError) as e:
        checks.check(composed(*overrides))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_seed_bounds_are_torchs():
    checks.check(composed(f"train.seed={2 ** 64 - 1}"))
    torch.Generator().manual_seed(2 ** 64 - 1)  # the largest the schema allows: torch takes it
    checks.check(composed("train.seed=0"))


def test_memory_estimate_refuses_with_the_numbers():
    cfg = composed("arch.hidden_size=1000000000")
    fixed, acts = machine.memory_need(cfg, 27, 2000)
    h = 10 ** 9
    assert fixed == 4 * 2 * (2 * 27 * h + 27 + 4 * h * (2 * h + 2))  # fp32 θ and its gradient (SGD: no state)
    with pytest.raises(UserError) as e:
        machine.memory(cfg, 27, 2000, torch.device("cpu"))
    line = str(e.value)
    assert f"{fixed + acts:,} bytes" in line and "available" in line and "arch.hidden_size: 1000000000" in line
    machine.memory(composed("arch.hidden_size=8"), 27, 2000, torch.device("cpu"))  # small: fine


def test_flag_checks():
    checks.check_flags(["-m", "train.lr=1,2", "--config-dir", "/tmp"])  # flags last, nothing after: argparse takes it
    checks.check_flags(["--cfg", "job", "train.lr=1"])
    checks.check_flags(["--help", "--foo"])  # Hydra prints its help
    for argv, words in ((["train.lr=1", "-m", "train.clip=1"], "after the overrides"),
                        (["--config-dir", "train.lr=1"], "needs a value"), (["--bogus"], "unknown flag"),
                        (["--cfg", "nope"], "invalid choice")):
        with pytest.raises(UserError, match=words):
            checks.check_flags(argv)


def test_invalid_and_failed_records_are_tried_again(tmp_path):
    config = {"train": {"lr": 1.0}}
    for status, again in (("invalid", True), ("failed", True), ("completed", False), ("diverged", False)):
        (tmp_path / "result.json").write_text(json.dumps({"status": status, "config": config}))
        assert (records.finished_result(tmp_path, config) is None) == again, status


def test_in_use_is_its_own_kind_of_refusal(tmp_path):
    lock = records.lock_run(tmp_path)
    try:
        with pytest.raises(records.InUse):
            records.lock_run(tmp_path)
    finally:
        lock.release()


# ------------------------------------------------------------- ALM under fp16 (item 7)

def alm_after_overflow(scale, h_clip=1.0, cell="gru"):
    """One ALM update under fp16 autocast on a CPU (a GRU has the kernels) with
    the scaler's scale at `scale`; returns (H after, whether θ moved)."""
    torch.manual_seed(0)
    model = LanguageModel(V, cell=cell, hidden_size=4, init_range=0.5)
    model.amp_dtype = torch.float16
    theta = ThetaStep(torch.optim.SGD(model.parameters(), lr=0.1), clip=0.0, fp16=True)
    theta.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    x, y = btprop.blocks(stream(4 * 6), 4)
    n = x.shape[1]
    H = torch.randn(n, model.state_size)
    S = btprop.Blocks(x, y, H.clone().requires_grad_(True), torch.zeros(n - 1, model.state_size), 1.0, 100)
    m = method(name="alm", h_steps=2, h_lr=0.5, h_clip=h_clip, h_optimizer="sgd")
    before = [p.detach().clone() for p in model.parameters()]
    alm.update(model, theta, S, m, duals_on=True)
    moved = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    return S.H.detach(), moved, H


def test_alm_skips_hs_step_when_the_scaler_skips_thetas():
    H, moved, H0 = alm_after_overflow(2.0 ** 100)  # every scaled gradient overflows
    assert not moved  # the scaler skipped θ's step ...
    assert H.isfinite().all()  # ... and H's (h_clip: 0·inf would be NaN)
    assert torch.equal(H, H0)
    H, moved, H0 = alm_after_overflow(2.0 ** 4)  # no overflow: both step
    assert moved and H.isfinite().all() and not torch.equal(H[1:], H0[1:])


def test_theta_step_says_whether_it_was_taken():
    model = LanguageModel(V, cell="rnn", hidden_size=3)
    for fp16, scale, taken in ((False, None, True), (True, 2.0 ** 4, True), (True, 2.0 ** 100, False)):
        theta = ThetaStep(torch.optim.SGD(model.parameters(), lr=0.1), fp16=fp16)
        if scale:
            theta.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        model.amp_dtype = torch.float16 if fp16 else None
        theta.zero_grad()
        logits, _ = model(stream(6).view(-1, 1), model.zero_state(1))
        theta.backward(logits.float().logsumexp(-1).sum())
        assert theta.step() is taken


# ------------------------------------------------------------- evaluation mode (item 8)

def modes_during_evaluation():
    """model.training in every forward pass of an evaluation, from a model in training mode."""
    model = LanguageModel(V, cell="lstm", hidden_size=4)
    model.train()
    seen = set()
    model.register_forward_pre_hook(lambda module, args: seen.add(module.training))
    evaluate(model, stream(200), 2, window=7)
    assert model.training  # given back as it came
    return seen


def test_evaluation_runs_the_model_in_eval_mode():
    assert modes_during_evaluation() == {False}


def test_eval_mode_matters_to_a_model_with_dropout():
    """A model whose output depends on its mode gives evaluation's number only in eval()."""
    torch.manual_seed(0)
    model = LanguageModel(V, cell="lstm", hidden_size=4)
    drop = torch.nn.Dropout(0.5)
    model.embed.register_forward_hook(lambda module, args, out: drop.train(model.training)(out))
    tokens = stream(200)
    got = evaluate(model, tokens, 2)[0]
    model.eval()
    with torch.no_grad():
        want = evaluate(model, tokens, 2)[0]
    assert got == want and math.isfinite(got)


# ------------------------------------------------------------- the battery (slow)

@pytest.mark.slow
def test_battery():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "battery.py")], capture_output=True, text=True,
                       timeout=3600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
    assert "pass" in p.stdout.splitlines()[-1]
