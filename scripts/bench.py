"""Training throughput of truncated BPTT and BTPROP: a table of tokens/s.

    python scripts/bench.py [--device auto] [--hidden 128] [--tokens 60000] [--threads N]

Synthetic character-level data (27 symbols), one LSTM layer, one pass of each
method over the same tokens after a short warm-up. Timings only: nothing here
is a test.
"""
import argparse
import sys
import time

import pandas as pd
import torch
from omegaconf import OmegaConf

from tprop_exp import bptt, btprop
from tprop_exp.models import LanguageModel
from tprop_exp.records import device_name, git_commit
from tprop_exp.train import pick_device

V = 27


def method_cfg(name, K, h_steps, mode="minibatch"):
    return OmegaConf.create(dict(
        name=name, mode=mode, block_size=K, init="forward", h_steps=h_steps,
        h_optimizer="adagrad", h_lr=0.1, h_tol=0.0, h_clip=0.0, theta_steps=1, lam=1.0,
        lam_mult=1.0, u_lr=0.1, u_start_epoch=1, chunk_blocks=4096))


def one_pass(setting, stream, hidden, device):
    torch.manual_seed(0)
    model = LanguageModel(V, "lstm", hidden).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    name, K, B, h = setting
    t0 = time.perf_counter()
    if name == "bptt":
        out = bptt.train_epoch(model, opt, stream, batch_size=B, K=K, clip=0.5, mode="minibatch")
    else:
        out = btprop.train_epoch(model, opt, stream, method_cfg(name, K, h), batch_size=B,
                                 clip=0.5, lam=1.0, duals_on=name != "penalty", chunk=4096)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out["tokens"] / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=60000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    stream = torch.randint(0, V, (args.tokens + 1,), generator=torch.Generator().manual_seed(0))
    settings = [("bptt", 35, 32, 0), ("bptt", 10, 32, 0),
                ("penalty", 10, 32, 0), ("admm", 10, 32, 1), ("admm", 10, 32, 5),
                ("admm", 10, 256, 1), ("alm", 10, 32, 5)]
    one_pass(settings[0], stream[:5001], args.hidden, device)  # warm-up
    rows = [{"method": n, "K": K, "batch": B, "h_steps": h if n != "bptt" else "",
             "tokens/s": round(one_pass((n, K, B, h), stream, args.hidden, device))}
            for n, K, B, h in settings]
    print(f"command: python scripts/bench.py {' '.join(sys.argv[1:])}\n\n"
          f"commit {git_commit()}; device: {device_name(device)}; torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}; LSTM {args.hidden}; {args.tokens} tokens\n")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
