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
from tprop_exp import UserError, bptt, btprop, distributed

# (name, cell, method and train settings, epochs): every batch BTPROP method with h-steps, and BPTT.
CASES = [
    ("bptt-minibatch", "lstm", dict(name="bptt", mode="minibatch", block_size=4, batch_size=4, clip=0.3), 1),
    ("bptt-batch", "gru", dict(name="bptt", mode="batch", block_size=4, batch_size=5), 1),
    ("penalty-adagrad", "lstm", dict(name="penalty", h_steps=3, h_optimizer="adagrad", h_clip=0.5,
                                     clip=0.3, h_tol=1e-3), 1),
    ("penalty-zero-init", "gru", dict(name="penalty", init="zero", h_steps=2, theta_steps=2), 1),
    ("admm", "gru", dict(name="admm", h_steps=2, u_lr=0.5, lam_mult=2.0), 2),
    ("alm", "lstm", dict(name="alm", h_steps=2, u_lr=0.5), 1),
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


@pytest.mark.parametrize("world", [2, 4])
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
