"""Training over processes (tprop_exp.distributed) gives the single-process answer.

2 and 4 gloo processes (torch.multiprocessing) each train a float64 tiny
model on their share; the parameters after the epochs must equal those of
one process running btprop/bptt alone. Plus the pieces with no processes:
the launcher's environment variables, the shares, the input checks.
"""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from helpers import params, run_cfg, sgd, stream, tiny_model
from tprop_exp import UserError
from tprop_exp.core.methods import bptt
from tprop_exp.core import btprop
from tprop_exp.core import distributed

# (name, cell, method and train settings, epochs): every batch BTPROP method with h-steps, and BPTT.
CASES = [
    ("bptt-minibatch", "lstm", dict(name="bptt", mode="minibatch", block_size=4, batch_size=4, clip=0.3), 1),
    ("bptt-batch", "gru", dict(name="bptt", mode="batch", block_size=4, batch_size=5), 1),
    ("penalty-adagrad", "lstm", dict(name="penalty", h_steps=3, h_optimizer="adagrad", h_clip=0.5,
                                     clip=0.3, h_tol=1e-3), 1),
    ("penalty-zero-init", "gru", dict(name="penalty", init="zero", h_steps=2, theta_steps=2), 1),
    ("admm", "gru", dict(name="admm", h_steps=2, u_lr=0.5, lam_mult=2.0), 2),
    ("alm", "lstm", dict(name="alm", h_steps=2, u_lr=0.5), 1),
    # SPEC §7: tanh moves Z (its ghost row too), the KL term crosses the boundary as the λ term does
    ("admm-tanh-kl", "lstm", dict(name="admm", h_steps=2, h_param="tanh", penalty="l2+kl",
                                  kl_weight=0.7, u_lr=0.5), 1),
    ("penalty-tanh-kl", "rnn", dict(name="penalty", h_steps=2, h_optimizer="adagrad", h_param="tanh",
                                    penalty="kl", kl_weight=1.3), 1),
]
N = 3 * 22 + 1  # 22 blocks of 3


def cfg_of(kw):
    kw = dict(kw)
    batch_size, clip = kw.pop("batch_size", 1), kw.pop("clip", 0.0)
    return run_cfg(batch_size=batch_size, clip=clip, **kw)


def train(case, core, theta_of):
    _, cell, kw, epochs = case
    cfg = cfg_of(kw)
    model = tiny_model(cell)
    theta = theta_of(sgd(model, lr=0.2, clip=cfg.train.clip))
    state, stats = {}, None
    for epoch in range(1, epochs + 1):
        stats = core.train_epoch(model, theta, stream(N), cfg, state, epoch=epoch)
        core.end_epoch(state, cfg)
    return params(model), stats


def worker(rank, world, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    comm = distributed.Comm(rank, world, torch.device("cpu"))
    results = {}
    for case in CASES:
        core = distributed.Core(comm, case[2]["name"])
        results[case[0]] = train(case, core, lambda t: distributed.SharedTheta(t, comm))
    if rank == 0:
        results["bytes"] = (comm.p2p_bytes, comm.allreduce_bytes)
        torch.save(results, out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def single():
    return {case[0]: train(case, bptt if case[2]["name"] == "bptt" else btprop, lambda t: t)
            for case in CASES}


# 4 processes on a busy 2-core machine take over a minute: `slow`.
@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_same_parameters_as_one_process(world, single, tmp_path):
    out = tmp_path / "out.pt"
    mp.spawn(worker, args=(world, str(tmp_path / "store"), str(out)), nprocs=world)
    results = torch.load(out)
    for name, (p1, s1) in single.items():
        p, s = results[name]
        torch.testing.assert_close(p, p1, rtol=1e-10, atol=1e-12, msg=f"{name}: θ differs")
        for key in s1:
            assert s[key] == pytest.approx(s1[key], rel=1e-9, abs=1e-12), f"{name}: {key}"
    assert results["bytes"][0] > 0 and results["bytes"][1] > 0


def test_environment_names():
    assert distributed.environment({}) == (0, 1, 0)
    assert distributed.environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert distributed.environment(slurm) == (5, 8, 1)
    # torchrun inside a SLURM allocation: torchrun's names win
    assert distributed.environment({**slurm, "RANK": "0", "WORLD_SIZE": "2"}) == (0, 2, 0)
    local = {"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_LOCALID": "1"}
    assert distributed.environment(local) == (1, 2, 1)
    with pytest.raises(UserError, match="SLURM_PROCID=8"):
        distributed.environment({"SLURM_PROCID": "8", "SLURM_NTASKS": "8"})


def test_shares_cover_once():
    for n, world in [(22, 4), (5, 5), (7, 2), (100, 3)]:
        ranges = [distributed.share(n, r, world) for r in range(world)]
        assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_bad_sharing_is_user_error():
    cfg = cfg_of(dict(name="bptt", batch_size=3))
    with pytest.raises(UserError, match="train.batch_size=3 must be at least"):
        distributed.check(cfg, 1000, 4)
    cfg = cfg_of(dict(name="admm", mode="minibatch", batch_size=6))
    with pytest.raises(UserError, match="multiple of the number of processes"):
        distributed.check(cfg, 1000, 4)
    cfg = cfg_of(dict(name="admm", block_size=3))
    with pytest.raises(UserError, match="cannot be shared by 4"):
        distributed.check(cfg, 10, 4)
    distributed.check(cfg, 13, 4)  # 4 blocks, one each
    distributed.check(OmegaConf.create(cfg), 10, 1)


# ---------------------------------------------------------------- the command line under torchrun

TINY = ["arch.hidden_size=8", "train.train_tokens=6000", "train.max_epochs=1", "train.eval_batch_size=4",
        "train.train_eval_tokens=2000", "dataset=sample_chars", "method=admm", "method.mode=batch",
        "method.h_steps=1", "method.block_size=10", "train.dtype=float64"]


def child_env():
    """The environment of a child command: one thread, Hydra's short errors."""
    import os
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def torchrun(args, cwd, nproc=2):
    import subprocess
    import sys
    env = child_env()
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "tprop_exp", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_run_records_once_and_resumes(tmp_path):
    """Stopped by SIGTERM in epoch 2, a two-process run leaves one checkpoint
    with every process's H; it resumes with two processes (not one) to the
    single-process answer."""
    import json
    import signal
    import subprocess
    import sys
    import time
    args = [a for a in TINY if not a.startswith("train.max_epochs=")] + ["train.max_epochs=30"]
    run = tmp_path / "run"
    env = child_env()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "tprop_exp", *args, f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not ((run / "tprop_exp.log").exists() and " epoch 1/30 " in (run / "tprop_exp.log").read_text()):
        assert proc.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (run / "result.json").exists(), err[-3000:]
    assert out.count(" epoch 1/30 ") == 1  # one process prints the epoch
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["world"] == 2 and len(ckpt["core_state"]) == 2
    nb = (6000 - 1) // 10
    # every block's H once, plus the left range's copy of its neighbour's first H
    assert sum(s["H"].shape[0] for s in ckpt["core_state"]) == nb + 1
    # resuming with another number of processes is refused on every process
    p = torchrun([*args, f"hydra.run.dir={run}"], tmp_path, nproc=1)
    assert p.returncode != 0 and "resume it with as many" in p.stderr
    p = torchrun([*args, f"hydra.run.dir={run}"], tmp_path)
    assert p.returncode == 0 and "resuming at epoch" in p.stdout, p.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["world"] == 2
    # the single-process run of the same config: the same model
    one = tmp_path / "one"
    q = subprocess.run([sys.executable, "-m", "tprop_exp", *args, f"hydra.run.dir={one}"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-3000:]
    single = json.loads((one / "result.json").read_text())
    assert single["best_valid_ppl"] == pytest.approx(result["best_valid_ppl"], rel=1e-9)


@pytest.mark.slow
def test_torchrun_sweep_shares_one_group(tmp_path):
    """A sweep (-m) under torchrun: its runs share one process group, and every
    process counts each run by the record the lead wrote (make time-dist)."""
    import json
    p = torchrun(["-m", *TINY, "train.seed=1,2", f"hydra.sweep.dir={tmp_path / 'sw'}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("sweep: 2 completed / 0 diverged / 0 failed / 0 invalid") == 2, p.stdout[-2000:]
    results = [json.loads(f.read_text()) for f in (tmp_path / "sw").glob("*/result.json")]
    assert sorted(r["world"] for r in results) == [2, 2] and {r["status"] for r in results} == {"completed"}


@pytest.mark.slow
def test_torchrun_bad_input_stops_every_process(tmp_path):
    p = torchrun([*TINY, "train.batch_size=0", f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path)
    assert p.returncode != 0
    # torchrun's own log lines can run into ours: count the line, not where it starts
    line = "tprop_exp: error: train.batch_size: 0 is not allowed; it must be a positive number\n"
    errors = p.stderr.count("tprop_exp: error:")
    assert errors == p.stderr.count(line) >= 1, p.stderr[-2000:]
    # each process says it in one line, unless torchrun stopped it first (after the other's exit 2)
    stopped = p.stderr.count("tprop_exp: stopped by SIGTERM before training began; nothing was written")
    assert errors + stopped == 2, p.stderr[-2000:]
    assert not (tmp_path / "bad" / "result.json").exists()


@pytest.mark.slow
def test_slurm_launcher_one_process_per_task(tmp_path):
    """The SLURM launcher's path (submitit's local executor) with two tasks:
    one run over two processes, the answer of one process."""
    import json
    import subprocess
    import sys
    env = child_env()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)

    def sweep(extra, out):
        p = subprocess.run([sys.executable, "-m", "tprop_exp", "-m", *TINY, *extra,
                            f"hydra.sweep.dir={out}"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=400)
        assert p.returncode == 0, p.stderr[-3000:]
        (run,) = [d for d in out.iterdir() if (d / "result.json").exists()]
        return run

    run = sweep(["hydra/launcher=slurm_local", "hydra.launcher.tasks_per_node=2"], tmp_path / "slurm")
    assert json.loads((run / "result.json").read_text())["world"] == 2
    one = sweep([], tmp_path / "one")
    assert (json.loads((run / "result.json").read_text())["best_valid_ppl"]
            == pytest.approx(json.loads((one / "result.json").read_text())["best_valid_ppl"], rel=1e-9))
