"""Bad input through the real command line: one line, status 2, nothing written;
run identity and folder names; sweeps that go on past bad cells."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import tprop_exp.cli  # noqa: F401  (registers the resolvers)
from tprop_exp.run import schema
from tprop_exp.cli import CONF

TINY = ["arch.hidden_size=8", "train.train_tokens=2000", "train.max_epochs=1",
        "train.eval_batch_size=4", "dataset=sample_chars"]


def cli(args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "tprop_exp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(p):
    return [line for line in p.stderr.splitlines() if line.strip()]


BAD = [  # (overrides, the key the one line must name)
    # types and unknown keys, refused while Hydra composes
    (["train.seed=abc"], "train.seed"),
    (["train.seed=null"], "train.seed"),
    (["arch.hidden_size=1.5"], "arch.hidden_size"),
    (["method.block_size=2.5"], "method.block_size"),
    (["train.max_epochs=1.5"], "train.max_epochs"),
    (["train.lr=fast"], "train.lr"),
    (["train.lrr=0.1"], "train.lrr"),
    (["+train.lrr=0.1"], "train.lrr"),
    (["+dataset.foo=1"], "dataset.foo"),
    (["row=xyz"], "row"),
    (["profile=xyz"], "profile"),
    (["arch=foo"], "arch"),
    # ranges and choices, refused before the run folder is made
    (["train.lr=nan"], "train.lr"),
    (["train.lr=inf"], "train.lr"),
    (["train.lr=0"], "train.lr"),
    (["method.lam=nan"], "method.lam"),
    (["method=admm", "method.lam=inf"], "method.lam"),
    (["method=admm", "method.h_lr=nan"], "method.h_lr"),
    (["arch.init_range=nan"], "arch.init_range"),
    (["arch.init_range=-0.1"], "arch.init_range"),
    (["arch.hidden_size=0"], "arch.hidden_size"),
    (["arch.num_layers=0"], "arch.num_layers"),
    (["arch.cell=transformer"], "arch.cell"),
    (["train.clip=-1"], "train.clip"),
    (["train.threads=0"], "train.threads"),
    (["train.batch_size=-1"], "train.batch_size"),
    (["train.eval_batch_size=0"], "train.eval_batch_size"),
    (["train.train_eval_tokens=0"], "train.train_eval_tokens"),
    (["train.optimizer=lbfgs"], "train.optimizer"),
    (["train.precision=fp8"], "train.precision"),
    (["train.dtype=bfloat16"], "train.dtype"),
    (["train.lr_decay=2"], "train.lr_decay"),
    (["train.device=tpu"], "train.device"),
    (["method.mode=full"], "method.mode"),
    (["method=admm", "method.init=random"], "method.init"),
    (["method=admm", "method.h_optimizer=adam"], "method.h_optimizer"),
    (["method=admm", "method.h_steps=-1"], "method.h_steps"),
    (["method=penalty", "method.theta_steps=0"], "method.theta_steps"),
    (["method=alm", "method.h_steps=0"], "method.h_steps"),
    (["dataset.level=byte"], "dataset.level"),
    (["dataset.train_frac=1.5"], "dataset.train_frac"),
    (["dataset.train_frac=0.96"], "dataset.valid_frac"),  # 0.96 + 0.05 leaves no test split
    (["dataset.vocab_size=1"], "dataset.vocab_size"),
]


@pytest.mark.parametrize("args,key", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_status_2_and_writes_nothing(tmp_path, args, key):
    p = cli(TINY + args, tmp_path)
    lines = error_lines(p)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert len(lines) == 1, lines
    assert lines[0].startswith("tprop_exp: error: ") and key in lines[0], lines[0]
    assert "Could not override" not in lines[0]  # Hydra's hint, not the reason
    assert list(tmp_path.iterdir()) == []  # no runs/, no outputs/, nothing


def test_unknown_group_option_lists_the_options(tmp_path):
    line = error_lines(cli(TINY + ["row=xyz"], tmp_path))[0]
    for row in ("bptt", "h0", "h1", "h5", "admm", "alm", "penalty"):
        assert row in line
    line = error_lines(cli(TINY + ["profile=xyz"], tmp_path))[0]
    assert "sample" in line and "paper" in line


def snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def test_refused_run_leaves_an_existing_folder_untouched(tmp_path):
    d = tmp_path / "run"
    assert cli(TINY + [f"hydra.run.dir={d}"], tmp_path).returncode == 0
    before = snapshot(d)
    assert (Path(".hydra") / "config.yaml") in before and Path("result.json") in before
    # a bad value, and a good config that is another run's
    for extra in (["train.lr=nan"], ["train.lr=0.5", "method.block_size=20"]):
        p = cli(TINY + extra + [f"hydra.run.dir={d}"], tmp_path)
        assert p.returncode == 2 and len(error_lines(p)) == 1, p.stderr
        assert snapshot(d) == before
    # the second names the keys that differ, with old and new values
    line = error_lines(p)[0]
    assert "train.lr: 1.0 -> 0.5" in line and "method.block_size: 35 -> 20" in line


def composed(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def test_identity_covers_exactly_the_computation():
    base = composed(TINY)
    same = ["train.device=cpu", "train.threads=3", "train.ckpt_interval_s=5", "data_dir=/tmp/x",
            "seeds=4", "name=other", "dataset.urls=[a]", "method.h_steps=3"]  # BPTT ignores h_steps
    for o in same:
        assert schema.run_hash(composed(TINY + [o])) == schema.run_hash(base), o
    differ = ["train.lr=0.5", "train.seed=2", "method.block_size=20", "arch.cell=gru",
              "method=admm", "train.precision=bf16", "dataset.vocab_size=10"]
    for o in differ:
        assert schema.run_hash(composed(TINY + [o])) != schema.run_hash(base), o
    admm = composed(TINY + ["method=admm"])
    assert schema.run_hash(composed(TINY + ["method=admm", "method.h_steps=3"])) != schema.run_hash(admm)


def test_folder_name_is_short_and_safe_for_many_overrides(tmp_path):
    many = TINY + ["train.lr=0.5", "train.seed=7", "train.clip=0.25", "train.patience=2",
                   "train.lr_decay=0.25", "train.batch_size=4", "arch.init_range=0.05",
                   "arch.num_layers=1", "method.block_size=7", "train.optimizer=adam",
                   "train.train_eval_tokens=500", "dataset.vocab_size=20", "dataset.train_frac=0.8"]
    assert len(many) == 18
    p = cli(many, tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    (run,) = (tmp_path / "runs" / "default").iterdir()
    assert len(run.name) <= 52 and run.name.startswith("bptt-K7-lstm8-sample_chars-"), run.name
    assert json.loads((run / "result.json").read_text())["status"] == "completed"
    p = cli(list(reversed(many)) + ["train.device=cpu"], tmp_path)  # the same run
    assert p.returncode == 0 and f"{run}: already completed; nothing to do" in p.stdout


# joblib: slow (the fast suite runs the joblib launcher in test_cli's parity test)
@pytest.mark.parametrize("launcher", [[], pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                                        marks=pytest.mark.slow)],
                         ids=["basic", "joblib"])
def test_sweep_records_bad_cells_and_goes_on(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    p = cli(["-m", *TINY, "train.lr=0.01,0,0.02", *launcher, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    results = [json.loads(f.read_text()) for f in sweep.glob("*/result.json")]
    status = sorted((r["status"], (r.get("config") or {}).get("train", {}).get("lr")) for r in results)
    assert status == [("completed", 0.01), ("completed", 0.02), ("invalid", None)]
    (bad,) = [r for r in results if r["status"] == "invalid"]
    assert "train.lr" in bad["error"] and "train.lr=0" in bad["overrides"]
    assert "sweep: 2 completed / 0 diverged / 0 failed / 1 invalid" in p.stdout
    # a type error in one cell
    p = cli(["-m", *TINY, "train.seed=1,abc", *launcher, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert p.returncode == 1
    assert "sweep: 1 completed / 0 diverged / 0 failed / 1 invalid" in p.stdout


def test_mixed_method_sweep_composes(tmp_path):
    sweep = tmp_path / "sweep"
    p = cli(["-m", *TINY, "method=bptt,admm", "method.h_steps=1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "sweep: 2 completed / 0 diverged / 0 failed / 0 invalid" in p.stdout
    names = sorted(d.name.split("-")[0] for d in sweep.iterdir() if d.is_dir())
    assert names == ["admm", "bptt"]


# ------------------------------------------- more bad input, checked in-process

CONFIG_BAD = [  # (overrides, words the one line must hold): composed and checked as the CLI does
    (["train.eval_batch_size=1.5"], ["train.eval_batch_size", "1.5"]),
    (["arch.hidden_size=nan"], ["arch.hidden_size", "nan"]),
    (["method.u_lr=inf"], ["method.u_lr", "inf"]),
    (["train.clip=nan"], ["train.clip", "nan"]),
    (["train.clip=abc"], ["train.clip", "abc"]),
    (["dataset.vocab_size=abc"], ["dataset.vocab_size", "abc"]),
    (["train.threads=-1"], ["train.threads", "-1"]),
    (["train.patience=0"], ["train.patience", "0"]),
    (["train.train_tokens=0"], ["train.train_tokens", "0"]),
    (["method.hsteps=1"], ["method.hsteps"]),
    (["+foo=1"], ["foo"]),
    (["arch.cell=lstmm"], ["arch.cell", "lstmm", "lstm"]),
    (["method=foo"], ["method/foo", "bptt"]),
    (["dataset=foo"], ["dataset/foo", "sample_chars"]),
    (["train.optimizer=rmsprop"], ["train.optimizer", "rmsprop", "adam"]),
    (["dataset.train_frac=0.99"], ["dataset.valid_frac", "0.05"]),
    (["method.lam_mult=inf"], ["method.lam_mult", "inf"]),
    (["train.lr_decay=nan"], ["train.lr_decay", "nan"]),
    (["method=admm", "method.h_param=sigmoid"], ["method.h_param", "sigmoid", "tanh"]),
    (["method=admm", "method.penalty=l1"], ["method.penalty", "l1", "l2+kl"]),
    (["method=admm", "method.kl_weight=-1"], ["method.kl_weight", "-1"]),
    (["method=admm", "method.penalty=kl"], ["method.penalty", "kl", "admm"]),
    (["method=penalty", "method.penalty=l2+kl", "method.slots=all_free"], ["method.penalty", "l2+kl", "all_free"]),
]


def test_more_bad_config_is_one_line_naming_key_and_value():
    from tprop_exp.run import checks
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for args, words in CONFIG_BAD:
            with pytest.raises(Exception) as e:
                checks.check(compose("config", overrides=TINY + args))
            line = checks.describe(e.value)
            assert "\n" not in line and all(w in line for w in words), (args, line)


def test_data_sizes_name_the_key_at_fault():
    import torch
    from types import SimpleNamespace as NS
    from tprop_exp import UserError
    from tprop_exp.run import checks

    def cfg(batch=4, eval_batch=4, train_tokens=None, train_eval=None, method="bptt"):
        return OmegaConf.create({"method": {"name": method}, "train": {
            "batch_size": batch, "eval_batch_size": eval_batch, "train_tokens": train_tokens,
            "train_eval_tokens": train_eval}})
    corpus = NS(train=torch.arange(100), valid=torch.arange(20), test=torch.arange(30))
    checks.data_sizes(cfg(batch=50, eval_batch=10), corpus)  # 2 steps each: just enough
    for c, words in [(cfg(batch=51), ["train.batch_size: 51", "at most 50"]),
                     (cfg(eval_batch=11), ["train.eval_batch_size: 11", "validation", "at most 10"]),
                     (cfg(eval_batch=6, train_eval=10), ["train.eval_batch_size: 6", "training", "at most 5"])]:
        with pytest.raises(UserError) as e:
            checks.data_sizes(c, corpus)
        assert all(w in str(e.value) for w in words), str(e.value)
    checks.data_sizes(cfg(batch=51, method="admm"), corpus)  # BTPROP: blocks per update, any number
    with pytest.raises(UserError, match="train.train_tokens: 1 leaves 1"):
        checks.data_sizes(cfg(train_tokens=1), NS(train=torch.arange(1), valid=corpus.valid, test=corpus.test))


def _local(d, text):
    d.mkdir()
    for s in ("train", "valid", "test"):
        (d / f"{s}.txt").write_text(text)
    return ["dataset=local", f"dataset.path={d.name}"]


FAULTS = [  # (name, setup(tmp) -> overrides, words the one line must hold)
    ("data_dir is a file", lambda t: (t / "f").write_text("x") and ["data_dir=f", "dataset.vocab_size=5"],
     ["data_dir", "is a file"]),
    ("run dir under a file", lambda t: (t / "f").write_text("x") and [f"hydra.run.dir={t}/f/run"],
     ["hydra.run.dir", "is a file"]),
    ("run dir under /proc", lambda t: ["hydra.run.dir=/proc/tprop_exp_x/run"], ["/proc/tprop_exp_x", "hydra.run.dir"]),
    ("local files missing", lambda t: ["dataset=local", "dataset.path=nodata"], ["dataset.train", "no such file"]),
    ("one-symbol corpus", lambda t: _local(t / "d", "a " * 500) + ["dataset.eos=false"],
     ["dataset local", "one distinct symbol"]),
    ("batch over train_tokens", lambda t: ["train.batch_size=3000"],
     ["train.batch_size: 3000", "train.train_tokens=2000"]),
    ("eval batch over valid", lambda t: ["train.eval_batch_size=1000000"], ["train.eval_batch_size", "validation"]),
    ("result.json garbage", lambda t: (t / "r").mkdir() or (t / "r" / "result.json").write_text("{x")
     and [f"hydra.run.dir={t}/r"], ["result.json", "not JSON"]),
    ("checkpoint without model", lambda t: (t / "r").mkdir() or __import__("torch").save(
        {"a": 1}, t / "r" / "checkpoint.pt") or [f"hydra.run.dir={t}/r"], ["checkpoint.pt", "model"]),
]


@pytest.mark.parametrize("setup,words", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_data_and_folder_faults_are_one_line_and_write_nothing(tmp_path, setup, words):
    args = setup(tmp_path)
    before = snapshot(tmp_path), sorted(tmp_path.rglob("*"))
    p = cli(TINY + ["train.train_eval_tokens=1000"] + args, tmp_path)
    lines = error_lines(p)
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert lines[0].startswith("tprop_exp: error: ") and all(w in lines[0] for w in words), lines[0]
    assert (snapshot(tmp_path), sorted(tmp_path.rglob("*"))) == before  # no runs/, no .hydra/, no .lock
