"""Run plumbing: model.pt and evaluate, the folder lock, faults, status across
kills, signals, non-finite configs, the objective, devices per job.

Most checks call train.run in this process on a tiny config; a few run the
command line as a user does.
"""
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest
import torch
from hydra import compose, initialize_config_dir

from tprop_exp import UserError
from tprop_exp.run import evaluate
from tprop_exp.run import records
from tprop_exp.run import trainer as train
from tprop_exp.cli import CONF

TINY = ["debug=default", "train.train_tokens=2000", "train.max_epochs=2"]


def config(*overrides):
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose("config", overrides=[*TINY, *overrides])


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def cli(args, cwd, module="tprop_exp"):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    d = tmp_path_factory.mktemp("done") / "run"
    d.mkdir()
    return d, train.run(config(), d)


# ---------------------------------------------------------- model.pt, evaluate

def test_finished_run_keeps_model_not_checkpoint(finished):
    d, res = finished
    assert res["status"] == "completed"
    assert not (d / "checkpoint.pt").exists()
    saved = torch.load(d / "model.pt", weights_only=True)  # plain tensors and containers only
    assert set(saved) == {"state_dict", "vocab_size", "config"}
    assert saved["config"] == res["config"]
    # returns at once, the same result, without training
    assert train.run(config(), d) == json.loads((d / "result.json").read_text())


def test_evaluate_rebuilds_the_best_model(finished):
    d, res = finished
    assert evaluate.perplexity(d, "test") == pytest.approx(res["test_ppl"], rel=1e-6)
    assert evaluate.perplexity(d, "valid") == pytest.approx(res["best_valid_ppl"], rel=1e-6)


def test_evaluate_cli(finished, tmp_path):
    d, res = finished
    p = cli([str(d), "--split", "test"], tmp_path, "tprop_exp.evaluate")
    assert p.returncode == 0, p.stderr
    assert f"test perplexity {res['test_ppl']:.4f}" in p.stdout
    p = cli([str(tmp_path)], tmp_path, "tprop_exp.evaluate")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no model.pt" in p.stderr


# ------------------------------------------------------------ records, faults

def test_status_survives_a_kill_after_the_last_checkpoint(tmp_path, monkeypatch):
    """Diverged (huge lr) and killed before result.json: started again it stays
    diverged after the same one epoch, not a fresh epoch that diverges again."""
    cfg = config("train.lr=1e9", "train.max_epochs=3", "train.clip=0")
    real = records.write_json

    def killed(path, obj):
        if Path(path).name == "result.json":
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after this runs
        real(path, obj)
    monkeypatch.setattr(records, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, tmp_path)
    assert (tmp_path / "checkpoint.pt").exists()
    monkeypatch.setattr(records, "write_json", real)
    res = train.run(cfg, tmp_path)
    assert res["status"] == "diverged" and res["epochs"] == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert train.objective(res) == math.inf


def test_partial_writes_are_removed_on_start(tmp_path):
    for name in (".checkpoint.pt.x1y2", ".result.json.abc", ".metrics.jsonl.q"):
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / ".hydra").mkdir()
    train.run(config("train.max_epochs=1"), tmp_path)
    assert not list(tmp_path.glob(".*.*.*")) and (tmp_path / ".hydra").exists()


@pytest.mark.parametrize("err,cause", [(errno.ENOSPC, "the disk is full"),
                                       (errno.EACCES, "Permission denied")])
def test_write_errors_are_one_line(tmp_path, monkeypatch, err, cause):
    def fail(*a, **k):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'result.json'}: {cause}$"):
        records.write_json(tmp_path / "result.json", {})
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def test_disk_full_in_a_run_is_one_line(tmp_path, monkeypatch):
    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match=r"cannot write .*checkpoint\.pt: the disk is full"):
        train.run(config("train.max_epochs=1"), tmp_path)


CORRUPT = {
    "garbage": (b"not a torch file", "is unreadable"),
    "list": ([1, 2], "not a checkpoint"),
    "no model": ({"config": {}, "epoch": 1}, "has no history, model"),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_checkpoint_is_one_line(tmp_path, case):
    content, msg = CORRUPT[case]
    path = tmp_path / "checkpoint.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(UserError, match=msg) as e:
        records.load_checkpoint(tmp_path, {})
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_result_that_is_a_list_is_one_line(tmp_path):
    (tmp_path / "result.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a run's result"):
        records.finished_result(tmp_path, {})


def test_corrupt_checkpoint_from_the_cli(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    torch.save(["x"], d / "checkpoint.pt")
    p = cli([*TINY, f"hydra.run.dir={d}"], tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert str(d / "checkpoint.pt") in p.stderr and not (d / "result.json").exists()


def test_non_finite_config_is_the_same_run_again(tmp_path):
    """inf is stored as null in result.json; the identity check compares alike."""
    cfg = records.resolved_config(config("train.ckpt_interval_s=600", "train.clip=inf"))
    assert cfg["train"]["clip"] == math.inf
    records.write_json(tmp_path / "result.json", {"status": "completed", "config": cfg})
    assert records.finished_result(tmp_path, cfg)["status"] == "completed"
    cfg["train"]["clip"] = 1.0
    with pytest.raises(UserError, match="different config"):
        records.finished_result(tmp_path, cfg)


# ------------------------------------------------------------------ the lock

def test_a_locked_folder_is_refused(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    with filelock.FileLock(d / ".lock", timeout=0):
        p = cli([*TINY, f"hydra.run.dir={d}"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "in use by another run" in p.stderr
    assert not any((d / f).exists() for f in records.RECORDS)
    assert sorted(f.name for f in d.iterdir()) == [".lock"]  # refused before Hydra wrote .hydra/ or a log


# ------------------------------------------------------------------- signals

SIG = ["debug=default", "train.train_tokens=30000", "train.max_epochs=2", "train.log_interval_s=0",
       "train.batch_size=8"]


@pytest.mark.slow  # three command-line runs
def test_sigterm_checkpoints_and_resumes_to_the_same_numbers(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    assert cli([*SIG, f"hydra.run.dir={a}"], tmp_path).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "tprop_exp", *SIG, f"hydra.run.dir={b}"],
                            cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    # wait for a progress line from inside epoch 1, then stop the run there
    while not ((b / "tprop_exp.log").exists() and "epoch 1  update" in (b / "tprop_exp.log").read_text()):
        assert proc.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in out and "resumes when started again" in out
    assert "Traceback" not in out + err
    ck = torch.load(b / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 0 and ck["pos"] is not None
    p = cli([*SIG, f"hydra.run.dir={b}"], tmp_path)
    assert p.returncode == 0 and "resuming at epoch 1, update" in p.stdout
    strip = lambda d: [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "tokens_per_s")}
                       for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert strip(b) == strip(a) and len(strip(a)) == 2
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert (rb["test_ppl"], rb["best_valid_ppl"]) == (ra["test_ppl"], ra["best_valid_ppl"])


# ------------------------------------------------------- objective, devices

def test_objective():
    assert train.objective({"status": "completed", "best_valid_ppl": 3.5}) == 3.5
    for r in ({"status": "diverged", "best_valid_ppl": 3.5}, {"status": "failed"},
              {"status": "completed", "best_valid_ppl": None}):
        assert train.objective(r) == math.inf


def test_parallel_jobs_take_one_gpu_each(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [str(train.pick_device("auto", j)) for j in range(5)] == \
        ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert str(train.pick_device("cuda:2", 0)) == "cuda:2"  # an explicit device stands
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert str(train.pick_device("auto", 4)) == "cuda"
