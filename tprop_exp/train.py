"""One run, top to bottom: data, model, epochs, evaluation, records.

    result = run(cfg, run_dir)

Checkpoints (plain state_dicts) are written at the end of every epoch and,
in mini-batch mode, every `train.ckpt_interval_s` seconds within one, so a
killed run started again resumes where it was and ends exactly as one never
interrupted. A finished run returns its result at once.
"""
import math
import time
from pathlib import Path

import torch

from . import UserError, bptt, btprop, optim, records
from .data import load_corpus, resolve_data_dir
from .evaluation import evaluate
from .models import CELLS, PRECISIONS, build_model
from .optim import OPTIMIZERS

# The training core of each method: train_epoch(...) and end_epoch(state, cfg).
CORES = {"bptt": bptt, "penalty": btprop, "admm": btprop, "alm": btprop}
METHODS = tuple(CORES)


def check_config(cfg):
    """Bad values stop the run with one clear line (exit status 2)."""
    positive = {
        "arch.hidden_size": cfg.arch.hidden_size, "arch.num_layers": cfg.arch.num_layers,
        "method.block_size": cfg.method.block_size, "train.batch_size": cfg.train.batch_size,
        "train.eval_batch_size": cfg.train.eval_batch_size, "train.max_epochs": cfg.train.max_epochs,
        "train.lr": cfg.train.lr, "train.patience": cfg.train.patience,
    }
    if cfg.train.train_tokens is not None:
        positive["train.train_tokens"] = cfg.train.train_tokens
    if cfg.method.name != "bptt":
        positive["method.chunk_blocks"] = cfg.method.chunk_blocks
    for key, value in positive.items():
        if not isinstance(value, (int, float)) or value <= 0:
            raise UserError(f"{key} must be positive, got {value!r}")
    for key in ("h_steps", "theta_steps", "lam", "h_lr"):
        value = cfg.method.get(key)
        if value is not None and value < 0:
            raise UserError(f"method.{key} must be non-negative, got {value!r}")
    choices = {"arch.cell": (cfg.arch.cell, tuple(CELLS)),
               "train.dtype": (cfg.train.dtype, ("float32", "float64")),
               "train.precision": (cfg.train.precision, tuple(PRECISIONS))}
    if cfg.method.name != "bptt":
        choices["method.init"] = (cfg.method.init, btprop.INITS)
        choices["method.h_optimizer"] = (cfg.method.h_optimizer, tuple(btprop.H_OPTIMIZERS))
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    if not 0 < cfg.train.lr_decay <= 1:
        raise UserError(f"train.lr_decay must be in (0, 1], got {cfg.train.lr_decay!r}")
    if cfg.method.name in ("penalty", "admm") and cfg.method.theta_steps < 1:
        raise UserError("method.theta_steps must be at least 1, or θ never trains")
    if cfg.method.name == "alm" and cfg.method.h_steps < 1:
        raise UserError("method.h_steps counts ALM's joint steps and must be at least 1")
    if cfg.method.name not in METHODS:
        raise UserError(f"method.name must be one of {', '.join(METHODS)}, got {cfg.method.name!r}")
    if cfg.method.mode not in ("minibatch", "batch"):
        raise UserError(f"method.mode must be minibatch or batch, got {cfg.method.mode!r}")
    if cfg.train.optimizer not in OPTIMIZERS:
        raise UserError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.train.optimizer!r}")


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
    check_config(cfg)
    device = pick_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    corpus = load_corpus(cfg.dataset, resolve_data_dir(cfg.data_dir))
    if cfg.train.train_tokens is not None:
        corpus.train = corpus.train[:cfg.train.train_tokens]
    # The corpus moves to the device once; the cores' .to(device) are then no-ops.
    corpus.train, corpus.valid, corpus.test = (t.to(device) for t in (corpus.train, corpus.valid, corpus.test))
    btprop.compile_terms(bool(cfg.train.get("compile", False)))
    torch.manual_seed(cfg.train.seed)
    dtype = getattr(torch, cfg.train.dtype)
    model = build_model(cfg.arch, len(corpus.vocab)).to(device=device, dtype=dtype)
    model.amp_dtype = PRECISIONS[cfg.train.precision]  # autocast; weights stay in `dtype`
    if device.type == "cuda" and cfg.train.precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    theta = optim.build(model, cfg)
    # Shrink the learning rate when validation stops improving (patience 0).
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(theta.opt, factor=cfg.train.lr_decay, patience=0)
    prov = records.provenance(device, overrides)
    t = Trainer(cfg, model, theta, sched, corpus, run_dir, config)
    t.resume(records.load_checkpoint(run_dir, config))
    status, error = t.fit()
    records.write_metrics(run_dir, t.history)  # final: also a diverged run, or a resumed one with nothing left
    result = t.result(status, prov)
    if error:
        result["error"] = error
    records.write_json(run_dir / "result.json", result)
    return result


class Trainer:
    """The mutable state of one run, so that it can be checkpointed whole."""

    def __init__(self, cfg, model, theta, sched, corpus, run_dir, config):
        self.cfg, self.model, self.theta, self.sched = cfg, model, theta, sched
        self.corpus, self.run_dir, self.config = corpus, run_dir, config
        self.core = CORES[cfg.method.name]
        self.epoch, self.history, self.best, self.bad_epochs = 0, [], math.inf, 0
        self.best_state, self.state, self.pos = None, {}, None  # state: the core's, across epochs
        self.wall = 0.0
        self.last_save = time.monotonic()

    def checkpoint(self, pos=None):
        records.save_checkpoint(self.run_dir, {
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
        print(f"{self.run_dir}: resuming at epoch {self.epoch + 1}"
              + (f", update {self.pos['update']}" if self.pos else ""))

    def on_update(self, pos):
        if time.monotonic() - self.last_save > self.cfg.train.ckpt_interval_s:
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
