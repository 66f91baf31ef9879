"""The command line end to end (SPEC §3), run as a user runs it.

Every run is `python -m tprop_exp ...` in a subprocess, on the offline sample
corpus with tiny settings (hidden size 8, 20k training characters, 2 epochs),
so the whole file takes a minute or two on a 2-core CPU.  The subprocesses get
OMP_NUM_THREADS=1: with models this small one thread is fastest, and on a
shared 2-core machine OpenMP's spinning threads can make each update hundreds
of times slower (seen: 1 s per update instead of 2 ms).
"""
import json
import re
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["arch.hidden_size=8", "train.train_tokens=20000", "train.max_epochs=2",
        "train.eval_batch_size=4", "dataset=sample_chars"]
ADMM = ["method=admm", "method.h_steps=2", "method.u_start_epoch=1"]
RESULT_KEYS = {"status", "best_valid_ppl", "test_ppl", "train_ppl", "epochs", "wall_s",
               "train_tokens_per_s", "config", "commit", "torch", "device", "command", "world"}
ROW_KEYS = {"epoch", "train_ppl", "valid_ppl", "tokens_per_s", "seconds"}
BTPROP_KEYS = {"ce", "penalty", "residual", "dual_norm", "h_steps"}
TIMING = {"tokens_per_s", "seconds"}


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def cli(args, cwd, timeout=300):
    """Run the command line; returns (CompletedProcess, seconds)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "tprop_exp", *args], cwd=cwd, env=env(),
                       capture_output=True, text=True, timeout=timeout)
    return p, time.perf_counter() - t0


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def result(run_dir):
    return json.loads((Path(run_dir) / "result.json").read_text())


def trained_epochs(stdout):
    return [line for line in stdout.splitlines() if re.search(r"\] INFO epoch \d+/\d+  train_ppl ", line)]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """One BPTT run and one ADMM run, each in its own folder (shared by tests)."""
    root = tmp_path_factory.mktemp("tiny")
    runs = {}
    for name, extra in (("bptt", []), ("admm", ADMM)):
        args = TINY + extra + [f"hydra.run.dir={root / name}"]
        p, seconds = cli(args, root)
        runs[name] = dict(dir=root / name, args=args, proc=ok(p), seconds=seconds, cwd=root)
    return runs


# ------------------------------------------------------------------ records

@pytest.mark.parametrize("name", ["bptt", "admm"])
def test_run_writes_its_records(tiny_runs, name):
    run = tiny_runs[name]
    d = run["dir"]
    for f in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (d / ".hydra" / f).is_file()
    overrides = (d / ".hydra" / "overrides.yaml").read_text()
    assert "arch.hidden_size=8" in overrides and "hydra.run.dir" not in overrides

    rows = metrics(d)
    assert [r["epoch"] for r in rows] == [1, 2]
    keys = ROW_KEYS | (BTPROP_KEYS if name != "bptt" else set())
    for r in rows:
        assert keys <= set(r), keys - set(r)
        for k in keys:
            assert isinstance(r[k], (int, float)) and math.isfinite(r[k]), (k, r[k])
        assert 1 < r["train_ppl"] < 27 and 1 < r["valid_ppl"] < 27  # 27 symbols; it learns
        assert r["tokens_per_s"] > 0 and r["seconds"] > 0
    assert rows[1]["train_ppl"] < rows[0]["train_ppl"]
    if name == "bptt":
        assert not BTPROP_KEYS & set(rows[0])
        assert all(math.isfinite(r["running_nll"]) for r in rows)
        # 20000 tokens in 32 streams of 625: 17 windows of 35 steps
        assert rows[0]["tokens_per_s"] * rows[0]["seconds"] == pytest.approx(17 * 35 * 32)
    else:
        for r in rows:
            assert r["h_steps"] == 2  # method.h_steps=2, tolerance 1e-5 not reached
            assert r["dual_norm"] > 0  # duals move from epoch 1 on (u_start_epoch=1)
            assert r["residual"] > 0 and r["penalty"] >= 0
            assert math.exp(r["ce"]) != pytest.approx(r["train_ppl"], rel=1e-9)  # frozen θ, not the free-H term
        assert rows[0]["tokens_per_s"] * rows[0]["seconds"] == pytest.approx(1999 * 10)

    res = result(d)
    assert RESULT_KEYS <= set(res), RESULT_KEYS - set(res)
    assert res["status"] == "completed"
    assert res["epochs"] == len(rows) == 2
    assert res["best_valid_ppl"] == min(r["valid_ppl"] for r in rows)
    best = min(rows, key=lambda r: r["valid_ppl"])
    assert res["train_ppl"] == best["train_ppl"]
    assert math.isfinite(res["test_ppl"]) and 1 < res["test_ppl"] < 27
    assert res["wall_s"] == pytest.approx(sum(r["seconds"] for r in rows))
    tokens = sum(r["tokens_per_s"] * r["seconds"] for r in rows)
    assert res["train_tokens_per_s"] == pytest.approx(tokens / res["wall_s"])
    cfg = res["config"]
    assert cfg["method"]["name"] == name
    assert cfg["arch"]["hidden_size"] == 8 and cfg["arch"]["cell"] == "lstm"
    assert cfg["train"]["train_tokens"] == 20000 and cfg["dataset"]["name"] == "sample_chars"
    assert "${" not in json.dumps(cfg)  # resolved
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    assert res["commit"].split("+")[0] == head
    assert res["torch"] == torch.__version__
    assert res["device"].startswith("cpu")
    assert res["command"].startswith("python -m tprop_exp")
    for o in TINY:
        assert o in res["command"]


def test_test_ppl_is_the_best_state_on_the_test_split(tiny_runs):
    """test_ppl is the best epoch's model on the test split (eval_batch_size streams),
    and the recorded valid_ppl is that model's validation perplexity."""
    from omegaconf import OmegaConf

    from tprop_exp.data.corpora import load_corpus, resolve_data_dir
    from tprop_exp.core.perplexity import evaluate
    from tprop_exp.core.model import build_model

    d = tiny_runs["bptt"]["dir"]
    res = result(d)
    cfg = OmegaConf.create(res["config"])
    saved = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    corpus = load_corpus(cfg.dataset, resolve_data_dir(cfg.data_dir))
    assert saved["vocab_size"] == len(corpus.vocab) and saved["config"] == res["config"]
    model = build_model(cfg.arch, len(corpus.vocab))
    model.load_state_dict(saved["state_dict"])
    assert evaluate(model, corpus.test, 4)[1] == pytest.approx(res["test_ppl"], rel=1e-5)
    assert evaluate(model, corpus.valid, 4)[1] == pytest.approx(res["best_valid_ppl"], rel=1e-5)


def test_finished_run_returns_at_once(tiny_runs):
    run = tiny_runs["admm"]
    d = run["dir"]
    assert not (d / "checkpoint.pt").exists()  # a finished run keeps model.pt only
    before = {f: (d / f).read_bytes() for f in ("result.json", "metrics.jsonl", "model.pt")}
    mtime = (d / "model.pt").stat().st_mtime_ns
    p, seconds = cli(run["args"], run["cwd"])
    ok(p)
    assert "nothing to do" in p.stdout
    assert not trained_epochs(p.stdout)
    assert trained_epochs(run["proc"].stdout)  # the first time, it did print its epochs
    for f, content in before.items():
        assert (d / f).read_bytes() == content, f
    assert (d / "model.pt").stat().st_mtime_ns == mtime
    assert seconds < run["seconds"], (seconds, run["seconds"])


# -------------------------------------------------------------------- resume

RESUME = ["arch.hidden_size=8", "train.max_epochs=3", "train.eval_batch_size=4",
          "dataset=sample_chars"]


def wait_for(cond, proc, timeout=120):
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.002)


def kill_mid_epoch(args, run_dir, cwd, epochs_done):
    """Start the run, wait until a checkpoint taken inside epoch `epochs_done` + 1
    is on disk (atomic replace: each one is a new inode, read whole), then
    SIGKILL it. Returns the (epoch, update) of the checkpoint left on disk."""
    proc = subprocess.Popen([sys.executable, "-m", "tprop_exp", *args], cwd=cwd, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, seen = run_dir / "checkpoint.pt", set()

    def mid_epoch_checkpoint():
        try:
            st = ckpt.stat()
        except FileNotFoundError:
            return False
        key = (st.st_ino, st.st_mtime_ns)  # inodes are reused: the pair names one file
        if key in seen:
            return False
        seen.add(key)
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        return ck["epoch"] == epochs_done and ck["pos"] is not None

    try:
        wait_for(mid_epoch_checkpoint, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    return ck["epoch"], (ck["pos"] or {}).get("update")


@pytest.mark.parametrize("name,extra", [
    # 7500 steps per stream of 8: 214 updates per epoch. `slow`: test_bptt resumes
    # BPTT from a mid-epoch position in-process, and the ADMM case below kills the CLI.
    pytest.param("bptt", ["train.train_tokens=60000", "train.batch_size=8"], marks=pytest.mark.slow),
    # 4000 blocks of 10, 32 per update: 125 updates per epoch
    ("admm", ["train.train_tokens=40000"] + ADMM),
])
def test_killed_run_resumes_to_the_same_numbers(tmp_path, name, extra):
    """A runs uninterrupted (no mid-epoch checkpoints); B checkpoints after every
    update and is killed twice, in epoch 1 and in epoch 2, then finishes."""
    args = RESUME + extra
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    ok(cli(args + [f"hydra.run.dir={a_dir}"], tmp_path)[0])

    b_args = args + ["train.ckpt_interval_s=0", f"hydra.run.dir={b_dir}"]
    kills = [kill_mid_epoch(b_args, b_dir, tmp_path, epochs_done=0),
             kill_mid_epoch(b_args, b_dir, tmp_path, epochs_done=1)]
    p = ok(cli(b_args, tmp_path)[0])
    assert "resuming at epoch 2, update" in p.stdout
    # both kills landed inside an epoch (else the mid-epoch path went untested)
    assert kills[0][0] == 0 and kills[0][1] is not None, kills
    assert kills[1][0] == 1 and kills[1][1] is not None, kills

    ma, mb = metrics(a_dir), metrics(b_dir)
    assert len(ma) == len(mb) == 3
    assert [r["valid_ppl"] for r in mb] == [r["valid_ppl"] for r in ma]
    assert [r["train_ppl"] for r in mb] == [r["train_ppl"] for r in ma]
    assert without_timing(mb) == without_timing(ma)
    ra, rb = result(a_dir), result(b_dir)
    for k in ("status", "best_valid_ppl", "test_ppl", "train_ppl", "epochs"):
        assert rb[k] == ra[k], k
    assert rb["config"]["train"].pop("ckpt_interval_s") == 0
    ra["config"]["train"].pop("ckpt_interval_s")
    assert rb["config"] == ra["config"]


# -------------------------------------------------------------- run folders

def test_run_folder_is_named_by_the_identity(tmp_path):
    args = TINY + ["method.block_size=20"]
    ok(cli(args, tmp_path)[0])
    folders = list((tmp_path / "runs" / "default").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("bptt-K20-lstm8-sample_chars-")
    d = folders[0]
    assert result(d)["status"] == "completed"
    # the same run, asked with the overrides in another order and with keys that do
    # not change the result, finds the same folder and has nothing to do
    again = list(reversed(args)) + ["train.device=cpu", "train.ckpt_interval_s=7"]
    p = ok(cli(again, tmp_path)[0])
    assert "nothing to do" in p.stdout and str(d) in p.stdout
    assert not trained_epochs(p.stdout)
    assert [f.name for f in (tmp_path / "runs" / "default").iterdir()] == [d.name]


def test_run_with_no_overrides_finds_its_folder(tmp_path):
    """The default run would train for a long time, so its folder is given a
    finished result first: a run that finds it says so instead of training."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import tprop_exp.cli  # noqa: F401  (registers the resolvers)
    from tprop_exp.run.schema import run_folder_name

    with initialize_config_dir(config_dir=str(ROOT / "tprop_exp" / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config"), resolve=True)
    d = tmp_path / "runs" / "default" / run_folder_name(cfg)
    d.mkdir(parents=True)
    fake = {"status": "completed", "best_valid_ppl": 1.5, "config": cfg}
    (d / "result.json").write_text(json.dumps(fake))
    p = ok(cli([], tmp_path, timeout=120)[0])
    assert f"{d}: already completed; nothing to do" in p.stdout
    assert (d / ".hydra" / "config.yaml").is_file()
    assert [f.name for f in (tmp_path / "runs" / "default").iterdir()] == [d.name]
    assert json.loads((d / "result.json").read_text()) == fake


# ---------------------------------------------------------------- bad input

def local(tmp_path, train=b"a b c\nd e f\n", valid=b"a b\n", test=b"c d\n"):
    files = {}
    for split, content in (("train", train), ("valid", valid), ("test", test)):
        if content is not None:
            (tmp_path / f"{split}.txt").write_bytes(content)
        files[split] = tmp_path / f"{split}.txt" if content is not None else Path(f"/nonexistent/{split}.txt")
    return ["dataset=local"] + [f"dataset.{s}={p}" for s, p in files.items()]


BASE = [a for a in TINY if not a.startswith(("dataset=", "arch.hidden_size="))]
SAMPLE = ["dataset=sample_chars", "arch.hidden_size=8"]
BAD = {  # case: (overrides, a word the message must hold)
    "unknown arch": (lambda t: SAMPLE + ["arch=foo"], "arch/foo"),
    "unknown method": (lambda t: SAMPLE + ["method=nope"], "method/nope"),
    "unknown dataset": (lambda t: ["arch.hidden_size=8", "dataset=nope"], "dataset/nope"),
    "hidden size 0": (lambda t: ["dataset=sample_chars", "arch.hidden_size=0"], "arch.hidden_size"),
    "negative block size": (lambda t: SAMPLE + ["method.block_size=-1"], "method.block_size"),
    "batch size 0": (lambda t: SAMPLE + ["train.batch_size=0"], "train.batch_size"),
    "unknown key": (lambda t: SAMPLE + ["train.nope=1"], "train.nope"),
    "missing data file": (lambda t: ["arch.hidden_size=8"] + local(t, train=None),
                          "/nonexistent/train.txt"),
    "empty data file": (lambda t: ["arch.hidden_size=8"] + local(t, train=b""), "empty"),
    "data file not UTF-8": (lambda t: ["arch.hidden_size=8"] + local(t, train=b"\xff\xfe\x00abc\n\x80\n"),
                            "UTF-8"),
    "batch size too large for the data": (lambda t: SAMPLE + ["train.batch_size=1000"], "batch"),
    "unknown init": (lambda t: SAMPLE + ["method=admm", "method.init=random"], "method.init"),
    "unknown h optimizer": (lambda t: SAMPLE + ["method=admm", "method.h_optimizer=lbfgs"], "method.h_optimizer"),
    "no θ-steps": (lambda t: SAMPLE + ["method=penalty", "method.theta_steps=0"], "theta_steps"),
    "lr decay above 1": (lambda t: SAMPLE + ["train.lr_decay=2"], "train.lr_decay"),
    "unknown device": (lambda t: SAMPLE + ["train.device=tpu"], "train.device"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_status_2(tmp_path, case):
    make, words = BAD[case]
    args = BASE + make(tmp_path) + [f"hydra.run.dir={tmp_path / 'run'}"]
    p, _ = cli(args, tmp_path, timeout=120)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("tprop_exp: error:") and words in lines[0], lines[0]
    assert not list(tmp_path.rglob("result.json"))
    assert not trained_epochs(p.stdout)


def test_hydra_append_syntax_cannot_add_a_key(tmp_path):
    """`+train.nope=1` (Hydra's append) is refused like `train.nope=1`: the schema has no such key."""
    p, _ = cli(TINY + ["+train.nope=1", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert p.returncode == 2 and "unknown key train.nope" in p.stderr
    assert not (tmp_path / "run").exists()


def copy_data_dir(tmp_path):
    """A private data dir holding the sample text and its cached tensors."""
    from hydra import compose, initialize_config_dir

    from tprop_exp.cli import CONF
    from tprop_exp.data.corpora import _cache_key, resolve_data_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        key = _cache_key(compose("config", overrides=TINY).dataset)  # the cache TINY runs use
    src = resolve_data_dir(None)
    if not (src / "cache" / key).is_dir() or not (src / "sample" / "text8_sample.txt").is_file():
        pytest.skip("the sample corpus has not been built (run any sample_chars run once)")
    dst = tmp_path / "data"
    shutil.copytree(src / "sample", dst / "sample")
    shutil.copytree(src / "cache" / key, dst / "cache" / key)
    return dst, dst / "cache" / key


def truncate(cache):
    f = cache / "train.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def out_of_range(cache):
    x = np.load(cache / "valid.npy")
    x[100] = 1000
    np.save(cache / "valid.npy", x)


@pytest.mark.parametrize("corrupt", [truncate, out_of_range])
def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, tiny_runs, corrupt):
    """data.py checks its cache (readable, format, lengths, ids in range) and
    rebuilds a bad one from the source, saying so: the run is then exactly the
    run with a sound cache."""
    data_dir, cache = copy_data_dir(tmp_path)
    good = {f.name: f.read_bytes() for f in cache.iterdir()}
    corrupt(cache)
    assert {f.name: f.read_bytes() for f in cache.iterdir()} != good
    d = tmp_path / "run"
    p = ok(cli(TINY + [f"data_dir={data_dir}", f"hydra.run.dir={d}"], tmp_path)[0])
    out = p.stdout + p.stderr
    assert "unreadable" in out and "rebuilding" in out and str(cache) in out
    assert {f.name: f.read_bytes() for f in cache.iterdir()} == good
    ref = tiny_runs["bptt"]["dir"]
    assert without_timing(metrics(d)) == without_timing(metrics(ref))
    assert result(d)["test_ppl"] == result(ref)["test_ppl"]


# ---------------------------------------------------------------- sweeps

def test_sweep_runs_each_job_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m"] + TINY + ["method=bptt,penalty", f"hydra.sweep.dir={sweep}"]
    p = ok(cli(args, tmp_path)[0])
    assert len(trained_epochs(p.stdout)) == 4
    runs = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert len(runs) == 2
    methods = sorted(result(d)["config"]["method"]["name"] for d in runs)
    assert methods == ["bptt", "penalty"]
    for d in runs:
        assert result(d)["status"] == "completed" and len(metrics(d)) == 2
        assert (d / ".hydra" / "config.yaml").is_file()
    penalty = next(d for d in runs if d.name.startswith("penalty-"))
    assert all(r["dual_norm"] == 0 for r in metrics(penalty))  # no duals in the penalty method
    before = {d: (d / "result.json").read_bytes() for d in runs}

    p = ok(cli(args, tmp_path)[0])
    assert not trained_epochs(p.stdout)
    assert p.stdout.count("nothing to do") == 2
    assert "sweep: 2 completed / 0 diverged / 0 failed / 0 invalid" in p.stdout
    assert {d: (d / "result.json").read_bytes() for d in runs} == before


def test_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    blow_up = ["train.lr=1e6", "train.clip=0"]
    d = tmp_path / "run"
    p = ok(cli(TINY + blow_up + [f"hydra.run.dir={d}"], tmp_path)[0])
    res = result(d)
    assert res["status"] == "diverged"
    assert res["epochs"] == 1 and len(metrics(d)) == 1  # it stops at once
    assert "test ppl not evaluated (diverged)" in p.stdout and "test ppl None" not in p.stdout
    assert RESULT_KEYS <= set(res)
    row = metrics(d)[0]  # non-finite numbers are written as null
    train_ppl, valid_ppl = (math.inf if v is None else v for v in (row["train_ppl"], row["valid_ppl"]))
    assert not (math.log(train_ppl) < 2 * math.log(27)) or not math.isfinite(valid_ppl)

    sweep = tmp_path / "sweep"
    p = cli(["-m"] + TINY + ["train.lr=1e6,1", "train.clip=0", f"hydra.sweep.dir={sweep}"], tmp_path)[0]
    assert p.returncode == 1, p.stderr[-2000:]  # not every run completed
    assert "sweep: 1 completed / 1 diverged / 0 failed / 0 invalid" in p.stdout
    status = {result(d)["config"]["train"]["lr"]: result(d)["status"]
              for d in sweep.iterdir() if d.is_dir()}
    assert status == {1e6: "diverged", 1: "completed"}
    assert p.stdout.index("train.lr=1000000.0") < p.stdout.index("train.lr=1 ")  # in that order


@pytest.mark.parametrize("launcher", [
    pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], id="joblib"),
    pytest.param(["hydra/launcher=slurm_local"], id="submitit-local",
                 marks=pytest.mark.slow),  # half a minute; test_distributed covers the SLURM path too
])
def test_parallel_launchers_give_the_same_runs(tmp_path, launcher):
    """The joblib launcher, and the SLURM launcher through submitit's local
    executor, produce the runs (and numbers) of the plain sequential sweep."""
    one_epoch = [a for a in TINY if not a.startswith("train.max_epochs")] + ["train.max_epochs=1"]
    grid = ["-m"] + one_epoch + ["method=bptt,penalty"]  # two jobs: one per joblib worker
    ok(cli(grid + [f"hydra.sweep.dir={tmp_path / 'basic'}"], tmp_path)[0])
    ok(cli(grid + launcher + [f"hydra.sweep.dir={tmp_path / 'par'}"], tmp_path)[0])
    basic = {d.name: result(d) for d in (tmp_path / "basic").iterdir() if (d / "result.json").exists()}
    par = {d.name: result(d) for d in (tmp_path / "par").iterdir() if (d / "result.json").exists()}
    assert len(basic) == 2 and basic.keys() == par.keys()
    for name in basic:
        assert par[name]["status"] == "completed"
        assert par[name]["best_valid_ppl"] == basic[name]["best_valid_ppl"]


@pytest.mark.slow  # a finished run returning at once: test_finished_run_returns_at_once, fast
def test_more_seeds_extend_a_sweep(tmp_path):
    """`seeds=2` after `seeds=1` trains only the new seed's runs, in the same sweep folder."""
    args = ["-m", "experiment=methods", "row=bptt", "arch.hidden_size=8", "train.train_tokens=5000",
            "train.max_epochs=1", "train.eval_batch_size=4", f"hydra.sweep.dir={tmp_path / 'sw'}"]
    first = ok(cli(args + ["seeds=1"], tmp_path)[0])
    assert len(trained_epochs(first.stdout)) == 2  # two datasets, one seed
    second = ok(cli(args + ["seeds=2"], tmp_path)[0])
    assert len(trained_epochs(second.stdout)) == 2 and second.stdout.count("nothing to do") == 2
    runs = [result(d)["config"] for d in (tmp_path / "sw").iterdir() if (d / "result.json").exists()]
    assert len(runs) == 4 and sum(c["train"]["seed"] == 1112 for c in runs) == 2
