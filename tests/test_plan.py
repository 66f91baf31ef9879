"""plan: its speed against a real run of the same setting (in this test's own
run), readable durations, one row per setting with seeds counted, and the
sweeps a run takes (no experiment, -m, --config-dir); refusals in one line."""
import json
import os
import subprocess
import sys

import pytest

from tprop_exp.report import plan


def fake_speed(cfg, vocab):
    return 1000.0 * cfg.arch.hidden_size, 1e6  # timing is not what these tests check


SETTING = ["arch=gru", "arch.hidden_size=32", "method.block_size=10", "train.optimizer=adam",
           "train.lr=0.003", "train.train_tokens=60000", "train.max_epochs=1", "train.threads=1",
           "method.h_steps=1", "train.train_eval_tokens=2000"]


@pytest.mark.parametrize("method", ["bptt", pytest.param("admm", marks=pytest.mark.slow)])
def test_estimate_is_within_the_stated_factor_of_a_real_run(tmp_path, method):
    args = [f"method={method}", *SETTING]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    p = subprocess.run([sys.executable, "-m", "tprop_exp", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    real = json.loads((tmp_path / "run" / "result.json").read_text())["train_tokens_per_s"]
    estimate = plan.plan(args)["tokens/s"].iloc[0]
    assert 1 / plan.FACTOR <= estimate / real <= plan.FACTOR, (estimate, real)


def test_durations_read_as_hours_minutes_seconds():
    assert [plan.duration(s) for s in (0, 0.3, 40, 185, 600, 4320, 3 * 86400 + 7200)] == \
        ["0 s", "1 s", "40 s", "3 min 5 s", "10 min", "1 h 12 min", "3 d 2 h"]


def test_one_row_per_setting_with_seeds_counted_and_the_dominant_named(monkeypatch, capsys):
    monkeypatch.setattr(plan, "speed", fake_speed)
    table = plan.main(["experiment=demo", "train.seed=1,2,3", "arch.hidden_size=8,64"])
    assert len(table) == 4 and list(table["seeds"]) == [3, 3, 3, 3]  # method × hidden size
    assert set(table["setting"]) == {f"method={m} arch.hidden_size={h}" for m in ("bptt", "admm")
                                     for h in (8, 64)}
    assert table["share"].sum() == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "4 settings, 12 runs" in out and "Most of the time" in out
    # the slowest (hidden 8 at 8,000 tokens/s here) dominate
    assert "arch.hidden_size=8 (" in out.split("Most of the time")[1]
    assert "e+0" not in out and "0.0" not in out.split("\n")[2]


def test_ad_hoc_sweeps_without_an_experiment_and_with_m(monkeypatch, capsys):
    monkeypatch.setattr(plan, "speed", fake_speed)
    for argv in (["method=bptt,admm", "arch.hidden_size=8"], ["-m", "method=bptt,admm", "arch.hidden_size=8"]):
        table = plan.main(argv)
        assert list(table["setting"]) == ["method=bptt", "method=admm"]
    assert "Every setting above also has: arch.hidden_size=8" in capsys.readouterr().out


def test_own_experiment_through_config_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(plan, "speed", fake_speed)
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nname: mine\narch:\n  hidden_size: 8\n"
        "hydra:\n  sweeper:\n    params:\n      method.block_size: 10,20\n")
    for argv in (["--config-dir", str(tmp_path), "experiment=mine"], [f"--config-dir={tmp_path}", "experiment=mine"]):
        assert list(plan.main(argv)["setting"]) == ["method.block_size=10", "method.block_size=20"]


@pytest.mark.parametrize("argv,words", [(["experiment=nope"], "Could not find 'experiment/nope'"),
                                        (["train.lrr=1"], "unknown key train.lrr"),
                                        (["--config-dir", "/no/such/dir"], "is not a folder")])
def test_refusals_are_one_line_and_status_2(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        plan.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and words in err[0], err


def test_help_answers(capsys):
    assert plan.main(["--help"]) is None
    assert "usage:" in capsys.readouterr().out
