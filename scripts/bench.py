"""Training-core throughput against a bare PyTorch loop: a markdown table.

    python scripts/bench.py [--size cpu|gpu] [--device auto] [--scaling] [--out results/bench]

Synthetic tokens. Each row runs in its own subprocess, which times the
project's code and a bare reference loop written here (embedding, nn.LSTM,
decoder, Adam, global-norm clipping: the same shapes; its Adam is
torch.optim.Adam(foreach=True), faster on a CPU than Adam's default loop over
tensors, while the project's code builds its optimizer as a run does, fused),
interleaved, after a warm-up, and reports medians of several repeats (the
ratio: the median of the ratios within interleaved pairs, whose order
alternates). Peak memory is the
increase of the process's maximum resident set (getrusage ru_maxrss) from
before the row's tensors exist to the end of its first run (the project's
code, run before the reference), on a CPU; torch.cuda.max_memory_allocated
over the same span on a GPU. The bare model's weights are counted too, and
they are small. Timings only:
nothing here is a test.

Rows: an A/A control (a second copy of the bare loop in the place of the
project's code: the ratio this method gives two equal loops); BPTT
mini-batch; a BTPROP (ADMM) mini-batch update, tokens counted once per
h-step and θ-step pass; one batch-mode θ-step and one h-step over
all blocks (the reference: BPTT with chunk_blocks parallel streams over the
same blocks, each stream reading consecutive blocks); forward initialisation
(the reference: one nn.LSTM call over the stream, no state read at block
ends); evaluation. Each side is credited with the tokens it predicts, so a
layout that drops a stream's tail is not paid for work it did not do.
`--scaling`: seconds per epoch against corpus size, and batch mode's peak
memory against the number of blocks (method.chunk_blocks bounds it).

Two more rows per size, at the sizes of SGD_SIZE and CLI_SIZE: `bptt_sgd`,
BPTT with plain SGD against the bare loop with torch.optim.SGD (char level,
V=63, LSTM 200, 35 steps × 20 streams); `cli`, a whole run of the command
(`python -m tprop_exp`, its `train_tokens_per_s` from result.json: training
time only) against a bare script on the same corpus prefix and layout
(LSTM 128, 32 streams, unroll 50, Adam), each in its own process,
interleaved pairs whose order alternates, the ratio their median. `--rows
sgd,cli` runs only those.
"""
import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import nn

from tprop_exp.core.methods import bptt
from tprop_exp.core import btprop
from tprop_exp.core import perplexity as evaluation
from tprop_exp.core import optim
from tprop_exp.core.btprop import Blocks
from tprop_exp.core.model import LanguageModel
from tprop_exp.run.records import device_name, git_commit
from tprop_exp.run.trainer import pick_device

ROWS = ("bare_copy", "bptt", "btprop_update", "theta_step", "h_step", "forward_init", "evaluation")
# (label, vocabulary, hidden, tokens, parallel streams / blocks per update, chunk_blocks);
# the CPU sizes fill whole chunks, like the reference's whole windows, and
# each timing lasts about a second or more (shorter ones were lost in this
# 2-core machine's noise).
SIZES = {
    "cpu": [("char", 27, 128, 61_440, 64, 256), ("char", 27, 512, 3_200, 32, 64),
            ("word", 10_000, 128, 3_200, 32, 64), ("word", 267_735, 128, 800, 8, 16)],
    "gpu": [("char", 27, 128, 2_000_000, 512, 4096), ("char", 27, 512, 1_000_000, 512, 4096),
            ("char", 27, 1024, 1_000_000, 512, 2048), ("word", 10_000, 512, 500_000, 64, 512),
            ("word", 267_735, 512, 100_000, 32, 64)],
}
K, N_H = 10, 2
# (V, hidden, K, streams, tokens) of the bptt_sgd row; (hidden, streams, K, training tokens) of the cli row
SGD_SIZE = {"cpu": (63, 200, 35, 20, 70_000), "gpu": (63, 200, 35, 20, 2_000_000)}
CLI_SIZE = {"cpu": (128, 32, 50, 100_000), "gpu": (128, 32, 50, 600_000)}


def cfg_of(mode, B, chunk, name="admm"):
    return OmegaConf.create({"method": dict(
        name=name, mode=mode, block_size=K, init="forward", h_steps=N_H, h_optimizer="sgd",
        h_lr=1.0, h_tol=0.0, h_clip=0.0, theta_steps=1, lam=1.0, lam_mult=1.0, u_lr=0.1,
        u_start_epoch=1, chunk_blocks=chunk),
        "train": {"batch_size": B, "clip": 0.5, "optimizer": "adam", "lr": 1e-4}})


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Bare(nn.Module):
    """The reference: the plainest loop with the same shapes."""

    def __init__(self, V, d):
        super().__init__()
        self.embed, self.rnn, self.dec = nn.Embedding(V, d), nn.LSTM(d, d), nn.Linear(d, V)

    def epoch(self, opt, x, y, train=True):
        """x, y (nw, K, B): BPTT with Adam and clipping, or a frozen pass."""
        state = None
        for xi, yi in zip(x, y):
            with torch.set_grad_enabled(train):
                out, state = self.rnn(self.embed(xi), state)
                loss = nn.functional.cross_entropy(self.dec(out).flatten(0, 1), yi.flatten())
            state = tuple(s.detach() for s in state)
            if train:
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.parameters(), 0.5)
                opt.step()


def windows_of(stream, B, device):
    from tprop_exp.data.corpora import batchify, windows
    x, y, _ = windows(batchify(stream, B).to(device), K)
    return x, y


def streams_of(x, c):
    """Blocks x (K, nb) as BPTT windows (nw, K, c), nw = nb // c: stream j reads
    blocks j·nw, j·nw + 1, ..., so the reference sees the very same tokens."""
    nw = x.shape[1] // c
    return x[:, :nw * c].reshape(K, c, nw).permute(2, 0, 1)


def one_row(spec):
    """Time one row of one setting; returns its numbers (runs in a subprocess)."""
    device = pick_device(spec["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the row's tensors exist
    label, V, d, n_tok, B, chunk = spec["setting"]
    row, n_tok = spec["row"], int(n_tok * spec.get("scale", 1))
    torch.manual_seed(0)
    stream = torch.randint(0, V, (n_tok + 1,), device=device)
    model = LanguageModel(V, "lstm", d).to(device)
    theta = optim.build(model, cfg_of("minibatch", B, chunk))  # the project's: fused Adam
    bare = Bare(V, d).to(device)
    bare_opt = torch.optim.Adam(bare.parameters(), lr=1e-4, foreach=True)
    x, y = btprop.blocks(stream, K)
    nb = x.shape[1]
    h0 = model.flat_state(model.zero_state(1))
    passes = 1
    if row in ("bare_copy", "bptt", "btprop_update", "evaluation"):  # the others lay out their own
        bx, by = windows_of(stream, B, device)
        ref = lambda: bare.epoch(bare_opt, bx, by)
    if row == "bare_copy":  # A/A control: a second bare loop in the place of ours
        twin = Bare(V, d).to(device)
        twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-4, foreach=True)
        ours = lambda: twin.epoch(twin_opt, bx, by)
    elif row == "bptt":
        ours = lambda: bptt.train_epoch(model, theta, stream, cfg_of("minibatch", B, chunk, "bptt"), {})
    elif row == "btprop_update":
        passes = N_H + 1
        ours = lambda: btprop.train_epoch(model, theta, stream, cfg_of("minibatch", B, chunk), {})
    elif row in ("theta_step", "h_step"):
        u = torch.zeros(nb - 1, model.state_size, device=device)
        S = Blocks(x, y, btprop.init_states(model, x, h0, "forward"), u, 1.0, chunk)
        m = cfg_of("batch", B, chunk).method
        ours = (lambda: btprop.theta_steps(model, theta, S, m)) if row == "theta_step" else \
            (lambda: btprop.h_steps(model, S, OmegaConf.merge(m, {"h_steps": 1})))
        bx, by = streams_of(x, chunk), streams_of(y, chunk)
        ref = lambda: bare.epoch(bare_opt, bx, by)
    elif row == "forward_init":
        ours = lambda: btprop.forward_init(model, x, h0)
        with torch.no_grad():
            ref = lambda: bare.rnn(bare.embed(stream[:nb * K].view(-1, 1)))
    elif row == "evaluation":
        ours = lambda: evaluation.evaluate(model, stream, B)
        ref = lambda: bare.epoch(None, bx, by, train=False)

    def timed(fn):
        sync(device)
        t = time.perf_counter()
        with torch.no_grad() if row == "forward_init" else torch.enable_grad():
            fn()
        sync(device)
        return time.perf_counter() - t

    timed(ours)  # warm-up; the peak memory is the row's setup (H, u, data) and this first run
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
    timed(ref)
    t_ours, t_ref = [], []
    for r in range(spec["repeats"]):  # interleaved pairs, the order alternating
        if r % 2:
            t_ref.append(timed(ref))
        t_ours.append(timed(ours))
        if not r % 2:
            t_ref.append(timed(ref))
    # tokens predicted per run: ours, and the reference's
    if row == "forward_init":
        tok_ours = tok_ref = nb * K
    else:
        tok_ref = bx.numel()
        tok_ours = {"bptt": tok_ref, "bare_copy": tok_ref,
                    "evaluation": (len(stream) // B - 1) * B}.get(row, nb * K)
    s_ours, s_ref = statistics.median(t_ours), statistics.median(t_ref)
    updates = -(-nb // B) if row == "btprop_update" else None
    ours_rate, ref_rate = tok_ours * passes / s_ours, tok_ref / s_ref
    # the ratio within each pair, then the median: the pair's two timings share the machine's state
    ratio = statistics.median(tok_ours * passes * r / (tok_ref * o) for o, r in zip(t_ours, t_ref))
    return {"tokens/s": ours_rate, "bare tokens/s": ref_rate, "ratio": ratio, "seconds": s_ours,
            "ms/update": 1000 * s_ours / updates if updates else None,
            "peak MiB": peak / 2 ** 20, "blocks": nb}


def sgd_row(spec):
    """BPTT with plain SGD (lr 1, clip 0.5), ours against the bare loop, interleaved pairs."""
    device = pick_device(spec["device"])
    V, d, k, B, n_tok = spec["sgd"]
    torch.manual_seed(0)
    stream = torch.randint(0, V, (n_tok + 1,), device=device)
    model = LanguageModel(V, "lstm", d).to(device)
    cfg = OmegaConf.merge(cfg_of("minibatch", B, 64, "bptt"),
                          {"method": {"block_size": k}, "train": {"optimizer": "sgd", "lr": 1.0}})
    theta = optim.build(model, cfg)
    bare = Bare(V, d).to(device)
    bare_opt = torch.optim.SGD(bare.parameters(), lr=1.0)
    from tprop_exp.data.corpora import batchify, windows
    bx, by, _ = windows(batchify(stream, B).to(device), k)
    ours = lambda: bptt.train_epoch(model, theta, stream, cfg, {})
    ref = lambda: bare.epoch(bare_opt, bx, by)

    def timed(fn):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t

    timed(ours), timed(ref)  # warm-up
    pairs = []
    for r in range(spec["repeats"]):
        a, b = (timed(ref), timed(ours))[::-1] if r % 2 else (timed(ours), timed(ref))
        pairs.append((a, b))
    s_ours = statistics.median(o for o, _ in pairs)
    return {"tokens/s": bx.numel() / s_ours, "ratio": statistics.median(r / o for o, r in pairs),
            "ms/update": 1000 * s_ours / bx.shape[0], "peak MiB": None}


def bare_script(spec):
    """The bare script of the cli row: the corpus prefix a run reads, batchified
    and cut into windows as a run does, the bare loop over it once; tokens/s."""
    from tprop_exp.data.corpora import batchify, load_corpus, resolve_data_dir, windows
    from hydra import compose, initialize_config_dir
    from tprop_exp.run.schema import CONF
    d, B, k, n_tok = spec["cli"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        ds = compose("config", overrides=["dataset=sample_chars"]).dataset
    corpus = load_corpus(ds, resolve_data_dir(None))
    device = pick_device(spec["device"])
    torch.manual_seed(1111)
    bare = Bare(len(corpus.vocab), d).to(device)
    opt = torch.optim.Adam(bare.parameters(), lr=0.002)
    x, y, _ = windows(batchify(corpus.train[:n_tok], B).to(device), k)
    sync(device)
    t = time.perf_counter()
    bare.epoch(opt, x, y)
    sync(device)
    return {"tokens/s": x.numel() / (time.perf_counter() - t)}


def cli_row(spec):
    """A whole run of the command against the bare script, each in its own process."""
    import tempfile
    d, B, k, n_tok = spec["cli"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("HYDRA_FULL_ERROR", None)
    args = ["dataset=sample_chars", "method=bptt", "arch=lstm", f"arch.hidden_size={d}",
            f"train.batch_size={B}", f"method.block_size={k}", "train.optimizer=adam", "train.lr=0.002",
            f"train.train_tokens={n_tok}", "train.max_epochs=1", "train.train_eval_tokens=1000",
            f"train.device={spec['device']}"]

    def ours():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "tprop_exp", *args, f"hydra.run.dir={tmp}/run"],
                           env=env, capture_output=True, text=True, check=True, cwd=tmp)
            return json.loads((Path(tmp) / "run" / "result.json").read_text())["train_tokens_per_s"]

    def ref():
        out = subprocess.run([sys.executable, __file__, "--bare", json.dumps(spec)], env=env,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["tokens/s"]

    pairs = []
    for r in range(spec["repeats"]):
        a, b = (ref(), ours())[::-1] if r % 2 else (ours(), ref())
        pairs.append((a, b))
    return {"tokens/s": statistics.median(o for o, _ in pairs),
            "ratio": statistics.median(o / r for o, r in pairs), "ms/update": None, "peak MiB": None}


def run_row(spec):
    """one_row in a fresh interpreter, so its peak memory is its own."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch CPU threads (also in each row)")
    ap.add_argument("--scaling", action="store_true", help="epoch time and memory against size")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--rows", default="all", help="all, or a comma list of: core, sgd, cli")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--bare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(sgd_row(spec) if spec["row"] == "bptt_sgd" else one_row(spec)))
        return
    if args.bare:
        print(json.dumps(bare_script(json.loads(args.bare))))
        return
    wanted = {"core", "sgd", "cli"} if args.rows == "all" else set(args.rows.split(","))
    device = pick_device(args.device)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    base = {"device": args.device, "repeats": args.repeats}
    rows = []
    if not args.scaling:
        if "sgd" in wanted:
            V, d, k, B, _ = SGD_SIZE[args.size]
            r = run_row({**base, "row": "bptt_sgd", "sgd": SGD_SIZE[args.size]})
            rows.append({"setting": f"char V={V} LSTM {d}, K={k}, SGD", "row": "bptt_sgd", "streams/chunk": B,
                         **{k2: r[k2] for k2 in ("tokens/s", "ratio", "ms/update", "peak MiB")}})
        if "cli" in wanted:
            d, B, k, n = CLI_SIZE[args.size]
            r = cli_row({**base, "cli": CLI_SIZE[args.size]})
            rows.append({"setting": f"sample_chars LSTM {d}, K={k}, Adam, {n:,} tokens", "row": "cli",
                         "streams/chunk": B, **{k2: r[k2] for k2 in ("tokens/s", "ratio", "ms/update", "peak MiB")}})
        for setting in (SIZES[args.size] if "core" in wanted else []):
            for row in ROWS:
                r = run_row({**base, "setting": setting, "row": row})
                width = setting[5] if row in ("theta_step", "h_step", "forward_init") else setting[4]
                rows.append({"setting": f"{setting[0]} V={setting[1]} LSTM {setting[2]}",
                             "row": row, "streams/chunk": width,
                             **{k: r[k] for k in ("tokens/s", "ratio", "ms/update", "peak MiB")}})
        name = args.size
    else:
        setting = SIZES[args.size][0]
        for scale in (1, 2, 4):
            for row in ("bptt", "theta_step"):
                r = run_row({**base, "setting": setting, "row": row, "scale": scale, "repeats": 1})
                rows.append({"size": f"{scale}×", "row": row, "blocks": r["blocks"],
                             "chunk_blocks": setting[5], "seconds": r["seconds"],
                             "peak MiB": r["peak MiB"]})
        name = f"{args.size}-scaling"
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g")
    head = (f"command: python scripts/bench.py {' '.join(sys.argv[1:])}\n\n"
            f"commit {git_commit()}; {datetime.date.today()}; device: {device_name(device)}; "
            f"torch {torch.__version__}; threads {torch.get_num_threads()}; K={K}; "
            f"BTPROP update: ADMM, {N_H} h-steps + 1 θ-step.\n"
            f"peak MiB: {'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'increase of ru_maxrss'} "
            f"from the row's setup to the end of its first run; ratio: tokens/s against the bare loop "
            f"in the same process, the median over {args.repeats} interleaved pairs.\n")
    print(head + "\n" + table)
    out = Path(args.out) / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head + "\n" + table + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
