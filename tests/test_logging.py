"""Logging and metric loggers: readable lines in the run's log file, interval
lines without per-update host syncs, TensorBoard scalars read back, an Optuna
search over train.lr, labels on the lines of a sweep's runs."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tprop_exp import UserError
from tprop_exp.run import logger

TINY = ["debug=default", "train.train_tokens=3000", "train.max_epochs=2", "train.log_interval_s=0"]


def cli(args, cwd):
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "tprop_exp", *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=300)


def test_numbers_are_readable():
    assert logger.number(39390.4) == "39,390"
    assert logger.number(0.4376123) == "0.4376"
    assert logger.number(123.456) == "123.5"
    assert logger.number(0.00001234) == "1.23e-05"
    assert logger.number(12000) == "12,000"
    assert logger.number(None) == "None"
    assert logger.number(float("inf")) == "inf"
    assert logger.number(7.04) == "7.040" and logger.number(6.99996) == "7.000"  # not "7"
    assert logger.number(1.0) == "1.000" and logger.number(0.0) == "0"


def test_run_labels_keep_the_settings_and_cut_the_hash():
    assert logger.short_name("admm-K10-h10-gru128-sample_chars-c9b45dc6fd") == "admm-K10-h10-gru128-sample_chars-c9b45d"
    assert logger.short_name("run") == "run" and logger.short_name("my-run-folder") == "my-run-folder"


class Counting:
    """A stand-in for a device scalar that counts host reads."""
    reads = 0

    def item(self):
        Counting.reads += 1
        return 2.0


class Metrics(logger.NoLogger):
    def __init__(self):
        self.rows = []

    def log(self, scalars, step, prefix):
        self.rows.append((prefix, step, scalars))


def test_progress_reads_the_loss_only_at_the_interval():
    Counting.reads = 0
    m = Metrics()
    p = logger.Progress(1, 0, None, 5, 4, interval_s=3600, metrics=m, step0=0)
    for i in range(1, 200):
        p.update({"update": i, "nll_sum": Counting()})
    assert Counting.reads == 0 and m.rows == []
    p = logger.Progress(1, 0, None, 5, 4, interval_s=0, metrics=m, step0=100)
    p.update({"update": 3, "nll_sum": Counting()})
    assert Counting.reads == 1
    prefix, step, scalars = m.rows[0]
    assert (prefix, step, scalars["loss"]) == ("train", 100 + 3 * 20, 2.0 / 3)


@pytest.mark.parametrize("name,mode,n,K,B", [
    ("bptt", "minibatch", 700, 5, 4), ("bptt", "minibatch", 703, 7, 3), ("bptt", "batch", 400, 6, 2),
    ("admm", "minibatch", 700, 5, 4), ("penalty", "minibatch", 301, 4, 7)])
def test_updates_per_epoch_is_known_before_the_epoch(name, mode, n, K, B):
    """The first epoch's total: as many as the core then reports."""
    from tprop_exp.core import optim, registry
    from tprop_exp.run.trainer import updates_per_epoch
    from tests.helpers import run_cfg, stream, tiny_model
    model = tiny_model()
    cfg = run_cfg(batch_size=B, name=name, mode=mode, block_size=K, h_steps=1)
    cfg.train.optimizer, cfg.train.lr = "sgd", 0.1
    calls = []
    theta = optim.ThetaStep(__import__("torch").optim.SGD(model.parameters(), lr=0.1), 0.0)
    method = registry.method(name)
    method.train_epoch(model, theta, stream(n), cfg, {}, on_update=lambda pos: calls.append(pos["update"]))
    assert updates_per_epoch(cfg, method, n) == len(calls) == calls[-1]


def test_first_epoch_bar_has_a_total(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    p = logger.Progress(1, 0, 40, 5, 4, interval_s=3600, metrics=Metrics(), step0=0)
    try:
        assert p.bar is not None and p.bar.total == 40
        p.update({"update": 10, "nll_sum": Counting()})
        assert p.bar.format_dict["total"] == 40 and "25%" in str(p.bar)
    finally:
        p.close()


def test_running_loss_of_btprop_is_ce_per_block():
    assert logger.running_loss({"update": 2, "sums": {"ce": 12.0}}, 3) == 2.0


def test_csv_logger(tmp_path):
    lg = logger.CSVLogger(tmp_path)
    lg.log({"valid_ppl": 3.5, "lr": 1.0}, 1, "epoch")
    lg.close()
    rows = list(csv.reader((tmp_path / "scalars.csv").open()))
    assert rows == [["step", "name", "value"], ["1", "epoch/valid_ppl", "3.5"], ["1", "epoch/lr", "1.0"]]


def test_missing_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    from omegaconf import OmegaConf
    with pytest.raises(UserError, match=r"^logger=wandb needs the wandb package: pip install"):
        logger.build(OmegaConf.create({"name": "wandb"}), tmp_path, {})


def test_tensorboard_run_and_log_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    d = tmp_path / "run"
    p = cli([*TINY, "logger=tensorboard", f"hydra.run.dir={d}"], tmp_path)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    ea = EventAccumulator(str(d / "tensorboard"))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    for key in rows[0]:
        if key == "epoch":
            continue
        events = ea.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert "train/loss" in tags and "train/tokens_per_s" in tags
    # HParams tab: the run's keys and its final metrics
    ea = EventAccumulator(str(d / "tensorboard"))
    ea.Reload()
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["arch.hidden_size"].number_value == 8 and hp["method.name"].string_value == "bptt"
    result = json.loads((d / "result.json").read_text())
    assert ea.Scalars("hparam/best_valid_ppl")[0].value == pytest.approx(result["best_valid_ppl"], rel=1e-6)
    assert len(ea.Scalars("train/loss")) >= 2

    text = (d / "tprop_exp.log").read_text()  # Hydra's job log: the whole history
    lines = text.splitlines()
    assert all(f"[{d.name}] " in line for line in lines)  # labelled with the run
    assert re.search(r"INFO run .*: method bptt \(minibatch\), lstm 8, [\d,]+ parameters, on cpu", text)
    assert re.search(r"tokens: train 3,000, valid [\d,]+, test [\d,]+", text)
    assert len(re.findall(r"INFO epoch [12]/2  train_ppl [\d.]+  valid_ppl", text)) == 2
    # off a terminal: "update i of N" (N known before the first epoch) and the NLL with its unit
    m = re.search(r"INFO epoch 1  update (\d+) of (\d+)  train NLL [\d.]+ nats  tokens/s [\d,]+", text)
    assert m and int(m[1]) <= int(m[2])
    assert f"update {m[2]} of {m[2]} " in text  # log_interval_s=0: a line per update, the last one N of N
    assert re.search(rf"INFO run {d.name}: completed after 2 epochs .* best valid ppl [\d.]+, test ppl [\d.]+", text)
    assert "e+0" not in text
    assert text in p.stdout.replace("\r", "")  # the console shows the same lines


def test_optuna_search_over_lr(tmp_path):
    p = cli(["-m", "hparams_search=optuna_lr", *TINY, "train.max_epochs=1",
             "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "setup plugin" not in p.stdout  # alembic's INFO lines, imported by Optuna
    assert "sweep: 2 completed / 0 diverged / 0 failed / 0 invalid" in p.stdout  # as the basic sweeper says
    assert "\x1b[" not in p.stdout + p.stderr  # no colour codes in a pipe
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    results = [json.loads(f.read_text()) for f in (tmp_path / "sweep").glob("*/result.json")]
    assert len(results) == 2
    lrs = {r["config"]["train"]["lr"] for r in results}
    assert len(lrs) == 2 and all(0.01 <= lr <= 10 for lr in lrs)
    assert best["best_value"] == pytest.approx(min(r["best_valid_ppl"] for r in results))
    # each run's lines carry the job's number
    assert re.search(r"\[0:[^\]]+\] INFO epoch 1/1", p.stdout) and re.search(r"\[1:[^\]]+\] INFO epoch 1/1", p.stdout)


@pytest.mark.slow
def test_optuna_search_with_a_diverged_trial_says_so_and_exits_1(tmp_path):
    p = cli(["-m", "hparams_search=optuna_lr", *TINY, "train.max_epochs=1", "hydra.sweeper.n_trials=1",
             "train.lr=choice(1000000.0)", "train.clip=0", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "sweep: 0 completed / 1 diverged / 0 failed / 0 invalid" in p.stdout
