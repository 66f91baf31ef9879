"""Throughput and communication of training over P processes: batch BTPROP
against data-parallel BPTT (tprop_exp.distributed), written to results/distributed.md.

    python scripts/bench_dist.py [--procs 1 2 4] [--hidden 64] [--tokens 20000] [--out results/distributed.md]

P processes are started with torch.multiprocessing (gloo on the CPU; nccl when
there are P GPUs). Bytes are counted from tensor sizes (distributed.Comm): the
boundary states that batch BTPROP sends point to point, and the θ all-reduce
both methods need, counted for a ring (2(P-1)/P × |θ| × dtype bytes per process).
Timings only: nothing here is a test.
"""
import argparse
import os
import sys
import tempfile
import time

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from tprop_exp.core import distributed
from tprop_exp.core.model import LanguageModel
from tprop_exp.core.optim import ThetaStep
from tprop_exp.run.records import device_name, git_commit

V = 27
K = 20


def run_cfg(name, mode, batch_size, h_steps):
    method = dict(name=name, mode=mode, block_size=K, init="forward", h_steps=h_steps,
                  h_optimizer="adagrad", h_lr=0.1, h_tol=0.0, h_clip=0.0, theta_steps=1, lam=1.0,
                  lam_mult=1.0, u_lr=0.1, u_start_epoch=1, chunk_blocks=4096)
    return OmegaConf.create({"method": method, "train": {"batch_size": batch_size, "clip": 0.5}})


SETTINGS = [  # (label, config, updates per epoch as a function of the stream length)
    ("BPTT data-parallel (B=16, K=20)", run_cfg("bptt", "minibatch", 16, 0), lambda n: (n // 16 - 1) // K),
    ("batch BTPROP ADMM, 1 h-step (K=20)", run_cfg("admm", "batch", 1, 1), lambda n: 1),
    ("batch BTPROP ADMM, 5 h-steps (K=20)", run_cfg("admm", "batch", 1, 5), lambda n: 1),
]


def timed(comm, setting, stream, hidden, device, reps):
    label, cfg, _ = setting
    torch.manual_seed(0)
    model = LanguageModel(V, "lstm", hidden).to(device)
    theta = ThetaStep(torch.optim.SGD(model.parameters(), lr=0.1), 0.5)
    core = distributed.Core(comm, cfg.method.name) if comm else None
    if comm:
        theta = distributed.SharedTheta(theta, comm)
    else:
        from tprop_exp.core.methods import bptt
        from tprop_exp.core import btprop
        core = bptt if cfg.method.name == "bptt" else btprop
    state = {}
    core.train_epoch(model, theta, stream, cfg, state)  # warm-up, and batch BTPROP's forward init
    if comm:
        comm.p2p_bytes = comm.allreduce_bytes = 0
        dist.barrier()
    t0, tokens = time.perf_counter(), 0
    for _ in range(reps):
        tokens += core.train_epoch(model, theta, stream, cfg, state)["tokens"]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    p2p = torch.tensor([comm.p2p_bytes if comm else 0.0, comm.allreduce_bytes if comm else 0.0, seconds])
    if comm:
        dist.all_reduce(p2p, op=dist.ReduceOp.MAX)  # the busiest process
    return dict(method=label, tokens_per_s=tokens / p2p[2].item(), seconds=p2p[2].item(),
                reps=reps, p2p=p2p[0].item(), allreduce=p2p[1].item(), n_params=n_params,
                state_size=model.state_size)


def link(comm, n_params, device, reps=20):
    """Seconds for one small point-to-point message and for one all-reduce of θ."""
    small, big = torch.zeros(1, device=device), torch.zeros(n_params, device=device)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        ops = [dist.P2POp(dist.isend, small, (comm.rank + 1) % comm.world),
               dist.P2POp(dist.irecv, small, (comm.rank - 1) % comm.world)]
        for r in dist.batch_isend_irecv(ops):
            r.wait()
    alpha = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        dist.all_reduce(big)
    return alpha, (time.perf_counter() - t0) / reps


def worker(rank, world, store, hidden, n_tokens, reps, out):
    torch.set_num_threads(1)
    gpu = torch.cuda.device_count() >= world and world > 1
    device = torch.device("cuda", rank) if gpu else torch.device("cuda" if torch.cuda.is_available() and world == 1 else "cpu")
    comm = None
    if world > 1:
        dist.init_process_group("nccl" if gpu else "gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        comm = distributed.Comm(rank, world, device)
    stream = torch.randint(0, V, (n_tokens,), generator=torch.Generator().manual_seed(0))
    rows = [timed(comm, s, stream, hidden, device, reps) for s in SETTINGS]
    for row, s in zip(rows, SETTINGS):
        row["updates"] = s[2](n_tokens) * reps
    if comm:
        alpha, t_allreduce = link(comm, rows[0]["n_params"], device)
        for row in rows:
            row.update(alpha_s=alpha, allreduce_s=t_allreduce)
    if rank == 0:
        for row in rows:
            row.update(P=world, device=device_name(device))
        torch.save(rows, out)
    if comm:
        dist.destroy_process_group()


def table(rows):
    df = pd.DataFrame(rows)
    df["p2p B/update"] = df.p2p / df.updates
    df["all-reduce B/update"] = df.allreduce / df.updates
    df["s/update"] = df.seconds / df.updates
    return df


def write(df, args, path):
    one = df[df.P == 1].set_index("method")
    show = df[["method", "P", "tokens_per_s", "s/update", "p2p B/update", "all-reduce B/update"]].copy()
    show["speed-up"] = [r.tokens_per_s / one.loc[r.method, "tokens_per_s"] for r in df.itertuples()]
    show = show.round({"tokens_per_s": 0, "s/update": 4, "p2p B/update": 0, "all-reduce B/update": 0, "speed-up": 2})
    r = df.iloc[0]
    state_b, theta_b = int(r.state_size) * 4, int(r.n_params) * 4
    multi = df[df.P > 1]
    alpha = multi.alpha_s.median() if len(multi) else float("nan")
    t_ar = multi.allreduce_s.median() if len(multi) else float("nan")
    beta = 2 * theta_b / t_ar if len(multi) else float("nan")  # ring: ~2|θ| bytes per process
    lines = [
        "# Training over processes: batch BTPROP against data-parallel BPTT",
        "",
        f"From `python scripts/bench_dist.py {' '.join(sys.argv[1:])}` at commit {git_commit()}, "
        f"torch {torch.__version__}, {r.device}; one LSTM layer of {args.hidden} units, "
        f"{int(r.n_params):,} parameters (float32), state size {int(r.state_size)}, "
        f"{args.tokens:,} synthetic tokens (27 symbols), K = {K}, {args.reps} timed epochs after a warm-up. "
        "Throughput is the slowest process's; bytes are what the busiest process sends per update "
        "(per θ-step), counted from tensor sizes.",
        "",
        show.to_markdown(index=False),
        "",
        "## The paper's argument, checked",
        "",
        f"Per update, batch BTPROP's boundary exchange moves, per process and per h-step, one state "
        f"to the left (the neighbour's first H) and one to the right (that ghost row's gradient): "
        f"2 × {int(r.state_size)} × 4 = {2 * state_b:,} bytes, whatever P and whatever the number of "
        f"blocks. The θ all-reduce that BPTT and BTPROP both need moves 2(P−1)/P × {int(r.n_params):,} × 4 "
        f"≈ {2 * theta_b:,} bytes per process for large P: "
        f"{theta_b / state_b:,.0f} times the state. So the exchange that makes BTPROP's blocks "
        "parallel is negligible next to the all-reduce; what BTPROP changes is not the bytes but "
        "how much work one update spreads over: every block of the training set (nb·K tokens) "
        "instead of B·K.",
        "",
        "A model on paper: time per update t(P) = c/P + α·m + V/β, with c the single-process "
        "compute per update (measured, column s/update at P = 1), m the messages in sequence and "
        "V the bytes per process. "
        f"Measured here: α ≈ {alpha * 1e6:,.0f} µs per small message, and an all-reduce of θ takes "
        f"{t_ar * 1e3:,.2f} ms, i.e. β ≈ {beta / 1e9:,.2f} GB/s on this machine's loopback.",
        "",
        "- Data-parallel BPTT: m ≈ 2(P−1) (ring), V ≈ 2·|θ|·4 bytes per update; its c is small "
        "(B·K tokens), so c/P shrinks quickly below the fixed all-reduce time and adding machines stops "
        "paying once c/P < α·2(P−1) + V/β. The all-reduce does not shrink with P.",
        "- Batch BTPROP: per update the same all-reduce (once per θ-step) plus per h-step two "
        "messages of one state each (m = 2 per h-step, V = 2·state·4 bytes), independent of P. Its c "
        "is the whole epoch, so c/P stays far above the communication for any P up to the number of "
        "blocks: it scales almost linearly on paper. The catch is the one the paper reports: a "
        "full-batch update is a poor use of the data (claim 3), and the h-steps' messages are "
        "latency-bound, 2·n_h·α per update.",
        "",
        "On this 2-core CPU, P = 4 processes share 2 cores, so throughput cannot grow past P = 2; "
        "the byte counts are exact at every P, and the timings above give c, α and β for the model.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="results/distributed.md")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for P in args.procs:
            out = os.path.join(tmp, f"{P}.pt")
            mp.spawn(worker, args=(P, os.path.join(tmp, f"store{P}"), args.hidden, args.tokens, args.reps, out),
                     nprocs=P)
            rows += torch.load(out)
            print(f"P={P} done", flush=True)
    df = table(rows)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    from pathlib import Path
    write(df, args, Path(args.out))
    df.to_csv(Path(args.out).with_suffix(".csv"), index=False)
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
