"""One run, top to bottom: data, model, epochs, evaluation, records.

    result = run(cfg, run_dir)

Checkpoints (plain state_dicts) are written at the end of every epoch and,
in mini-batch mode, every `train.ckpt_interval_s` seconds within one, so a
killed run started again resumes where it was and ends exactly as one never
interrupted. A finished run returns its result at once.
"""
import functools
import math
import time
from pathlib import Path

import torch

from . import UserError, bptt, btprop, distributed, optim, records
from .data import load_corpus, resolve_data_dir
from .evaluation import evaluate
from .models import PRECISIONS, build_model

# The training core of each method: train_epoch(...) and end_epoch(state, cfg).
CORES = {"bptt": bptt, "penalty": btprop, "admm": btprop, "alm": btprop}
METHODS = tuple(CORES)


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device must be auto, cpu or cuda[:N], got {name!r}")


def run(cfg, run_dir, overrides=()):
    run_dir = Path(run_dir)
    config = records.resolved_config(cfg)
    done = records.finished_result(run_dir, config)
    if done is not None:
        print(f"{run_dir}: already {done['status']}; nothing to do")
        return done
    device = pick_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    corpus = load_corpus(cfg.dataset, resolve_data_dir(cfg.data_dir))
    if cfg.train.train_tokens is not None:
        corpus.train = corpus.train[:cfg.train.train_tokens]
    distributed.check(cfg, len(corpus.train), distributed.environment()[1])
    comm, device = distributed.init(device)  # (None, device) for a single process
    torch.manual_seed(cfg.train.seed)
    dtype = getattr(torch, cfg.train.dtype)
    model = build_model(cfg.arch, len(corpus.vocab)).to(device=device, dtype=dtype)
    model.amp_dtype = PRECISIONS[cfg.train.precision]  # autocast; weights stay in `dtype`
    if device.type == "cuda" and cfg.train.precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    theta = optim.build(model, cfg)
    if comm is not None:
        theta = distributed.SharedTheta(theta, comm)
    # Shrink the learning rate when validation stops improving (patience 0).
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(theta.opt, factor=cfg.train.lr_decay, patience=0)
    prov = records.provenance(device, overrides)
    t = Trainer(cfg, model, theta, sched, corpus, run_dir, config, comm)
    t.resume(distributed.load(comm, run_dir, config))
    status, error = t.fit()
    result = t.result(status, prov)
    if error:
        result["error"] = error
    if t.lead:
        records.write_metrics(run_dir, t.history)  # final: also a diverged run, or a resumed one with nothing left
        records.write_json(run_dir / "result.json", result)
    return result


class Trainer:
    """The mutable state of one run, so that it can be checkpointed whole."""

    def __init__(self, cfg, model, theta, sched, corpus, run_dir, config, comm=None):
        self.cfg, self.model, self.theta, self.sched = cfg, model, theta, sched
        self.corpus, self.run_dir, self.config = corpus, run_dir, config
        self.core = CORES[cfg.method.name] if comm is None else distributed.Core(comm, cfg.method.name)
        self.comm, self.lead = comm, comm is None or comm.rank == 0  # the lead process writes records
        self.epoch, self.history, self.best, self.bad_epochs = 0, [], math.inf, 0
        self.best_state, self.state, self.pos = None, {}, None  # state: the core's, across epochs
        self.wall = 0.0
        self.last_save = time.monotonic()

    def checkpoint(self, pos=None):
        save = records.save_checkpoint if self.comm is None else functools.partial(distributed.save, self.comm)
        save(self.run_dir, {
            "config": self.config, "epoch": self.epoch, "history": self.history,
            "model": self.model.state_dict(), "theta": self.theta.state_dict(),
            "sched": self.sched.state_dict(), "best": self.best, "bad_epochs": self.bad_epochs,
            "best_state": self.best_state, "core_state": self.state,
            "pos": pos, "wall": self.wall, "rng": torch.get_rng_state(),
        })
        self.last_save = time.monotonic()

    def resume(self, ckpt):
        if ckpt is None:
            return
        device = self.model.decoder.weight.device
        self.model.load_state_dict(ckpt["model"])
        self.theta.load_state_dict(ckpt["theta"])
        self.sched.load_state_dict(ckpt["sched"])
        torch.set_rng_state(ckpt["rng"])
        self.epoch, self.history = ckpt["epoch"], ckpt["history"]
        self.best, self.bad_epochs, self.best_state = ckpt["best"], ckpt["bad_epochs"], ckpt["best_state"]
        self.wall = ckpt["wall"]
        self.state = to_device(ckpt["core_state"], device)
        self.pos = to_device(ckpt["pos"], device)
        if self.lead:
            print(f"{self.run_dir}: resuming at epoch {self.epoch + 1}"
                  + (f", update {self.pos['update']}" if self.pos else ""))

    def on_update(self, pos):
        due = time.monotonic() - self.last_save > self.cfg.train.ckpt_interval_s
        if self.comm is not None:
            due = self.comm.decide(due)  # all processes take part in a checkpoint
        if due:
            pos["elapsed"] = time.perf_counter() - self.epoch_t0  # this epoch's seconds so far
            self.checkpoint(pos)

    def train_epoch(self):
        on_update = self.on_update if self.cfg.method.mode == "minibatch" else None
        pos, self.pos = self.pos, None
        return self.core.train_epoch(self.model, self.theta, self.corpus.train, self.cfg,
                                     self.state, epoch=self.epoch + 1, pos=pos, on_update=on_update)

    def train_ppl(self):
        """SPEC's train_ppl: θ frozen, evaluated like validation over the
        first train.train_eval_tokens training tokens (all when null)."""
        n = self.cfg.train.get("train_eval_tokens")
        tokens = self.corpus.train if n is None else self.corpus.train[:n]
        return evaluate(self.model, tokens, self.cfg.train.eval_batch_size)[1]

    def fit(self):
        cfg = self.cfg
        limit = 2 * math.log(len(self.corpus.vocab))  # a mean NLL above this has exploded
        while self.epoch < cfg.train.max_epochs and self.bad_epochs < cfg.train.patience:
            self.epoch_t0 = time.perf_counter() - (self.pos or {}).get("elapsed", 0.0)
            try:
                stats = self.train_epoch()
            except torch.cuda.OutOfMemoryError as e:
                return "failed", f"out of memory: {e}".splitlines()[0]
            seconds = time.perf_counter() - self.epoch_t0
            valid_nll, valid_ppl = evaluate(self.model, self.corpus.valid, cfg.train.eval_batch_size)
            self.epoch += 1
            self.wall += seconds
            row = {"epoch": self.epoch, "train_ppl": self.train_ppl(),
                   "valid_ppl": valid_ppl, "lr": self.theta.opt.param_groups[0]["lr"],
                   "tokens_per_s": stats.pop("tokens") / seconds, "seconds": seconds}
            if "lam" in self.state:
                row["lam"] = self.state["lam"]
            row.update(stats)
            self.history.append(row)
            if self.lead:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            loss = stats.get("running_nll", stats.get("ce"))  # the method's own objective
            if not math.isfinite(valid_nll) or not (loss < limit):
                self.checkpoint()  # run() writes the metrics
                return "diverged", None
            if valid_ppl < self.best:
                self.best, self.bad_epochs = valid_ppl, 0
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            else:
                self.bad_epochs += 1
            self.sched.step(valid_nll)
            self.core.end_epoch(self.state, cfg)
            if self.lead:
                records.write_metrics(self.run_dir, self.history)
            self.checkpoint()
        return "completed", None

    def result(self, status, prov):
        cfg, corpus = self.cfg, self.corpus
        test_ppl = None
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            test_ppl = evaluate(self.model, corpus.test, cfg.train.eval_batch_size)[1]
        best_row = min(self.history, key=lambda r: r["valid_ppl"], default=None)
        tokens = sum(r["tokens_per_s"] * r["seconds"] for r in self.history)
        return {
            "status": status,
            "best_valid_ppl": None if best_row is None else best_row["valid_ppl"],
            "test_ppl": test_ppl,
            "train_ppl": None if best_row is None else best_row["train_ppl"],
            "epochs": self.epoch,
            "wall_s": self.wall,  # seconds of training, evaluation not included
            "train_tokens_per_s": tokens / self.wall if self.wall else None,
            "config": self.config,
            **prov,
        }


def to_device(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
