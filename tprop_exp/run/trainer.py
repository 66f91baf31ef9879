"""One run, top to bottom: data, model, epochs, evaluation, records.

    result = run(cfg, run_dir)

Checkpoints (plain state_dicts) are written at the end of every epoch and,
in mini-batch mode, every `train.ckpt_interval_s` seconds within one, so a
killed run started again resumes where it was and ends exactly as one never
interrupted. SIGTERM and SIGINT save a checkpoint at the next update and
exit (status 128 + the signal's number). A run that ends keeps its best model
in model.pt and drops the checkpoint; started again, it returns at once.
The run folder is locked (filelock) while a run owns it.
"""
from __future__ import annotations

import functools
import logging
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from tprop_exp import UserError
from tprop_exp.core import btprop, distributed, optim, registry
from tprop_exp.core.model import PRECISIONS, build_model
from tprop_exp.core.perplexity import evaluate_weighted
from tprop_exp.data import lag
from tprop_exp.data.corpora import load_corpus, resolve_data_dir

from . import checks, logger, machine, records

if TYPE_CHECKING:
    from types import FrameType

    from omegaconf import DictConfig

    from tprop_exp.core.distributed import Comm, SharedTheta
    from tprop_exp.core.model import LanguageModel
    from tprop_exp.core.optim import ThetaStep
    from tprop_exp.data.corpora import Corpus

log = logging.getLogger("tprop_exp")


def pick_device(name: str, job_num: int = 0) -> torch.device:
    """`auto`: a GPU if there is one; parallel jobs of a sweep take one GPU each."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        n = torch.cuda.device_count()
        return torch.device(f"cuda:{job_num % n}" if n > 1 else "cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device must be auto, cpu or cuda[:N], got {name!r}")


def objective(result: dict) -> float:
    """What a sweeper minimises: the best validation perplexity; inf when
    the run did not complete or has none."""
    if result.get("status") != "completed" or result.get("best_valid_ppl") is None:
        return math.inf
    return float(result["best_valid_ppl"])


def updates_per_epoch(cfg: DictConfig, method: registry.Method, n_tokens: int, world: int = 1) -> Optional[int]:
    """How many times the core calls on_update in one epoch of this process
    (the lead's, in a distributed run), from the data layout alone: BPTT's
    windows of the batchified stream (data.corpora.windows), BTPROP's
    mini-batches of blocks. None when the layout is the method's own."""
    K, B = cfg.method.block_size, cfg.train.batch_size
    if method.shares == "streams":  # each process has T rows of its own streams
        return max((n_tokens // B - 1) // K, 0)
    if method.shares == "blocks":
        if cfg.method.mode == "batch":
            return None  # one update over every block, with no progress calls inside it
        n, b = (n_tokens // world, B // world) if world > 1 else (n_tokens, B)
        return -(-((n - 1) // K) // b)
    return None


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; the checkpoint is saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run(cfg: DictConfig, run_dir: str | Path, overrides: Sequence[str] = (), job_num: int = 0) -> dict:
    run_dir = Path(run_dir)
    config = records.resolved_config(cfg)
    done = records.finished_result(run_dir, config)
    if done is not None:
        log.info("%s: already %s; nothing to do", run_dir, done["status"])
        return done
    device = pick_device(cfg.train.device, job_num)
    with machine.deterministic(bool(cfg.train.get("deterministic", False))):
        if distributed.environment()[0] != 0:  # the lead process holds the folder for them all
            return run_locked(cfg, run_dir, config, device, overrides)
        lock = records.lock_run(run_dir)
        try:
            records.remove_partial(run_dir)
            return run_locked(cfg, run_dir, config, device, overrides)
        finally:
            lock.release()


def run_locked(cfg: DictConfig, run_dir: Path, config: dict, device: torch.device,
               overrides: Sequence[str]) -> dict:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    corpus = load_corpus(cfg.dataset, resolve_data_dir(cfg.data_dir))
    if cfg.train.train_tokens is not None:
        corpus.train = corpus.train[:cfg.train.train_tokens]
    checks.data_sizes(cfg, corpus)
    distributed.check(cfg, len(corpus.train), distributed.environment()[1])
    comm, device = distributed.init(device)  # (None, device) for a single process
    if comm is not None and comm.rank != 0:
        log.setLevel(logging.WARNING)  # the lead process reports for them all
    # The corpus moves to the device once; the cores' .to(device) are then no-ops.
    corpus.train, corpus.valid, corpus.test = (t.to(device) for t in (corpus.train, corpus.valid, corpus.test))
    btprop.compile_terms(bool(cfg.train.get("compile", False)))
    machine.memory(cfg, len(corpus.vocab), len(corpus.train), device)  # before the model is built: refused, not swapped to death
    machine.seed_everything(cfg.train.seed)
    dtype = getattr(torch, cfg.train.dtype)
    model = build_model(cfg.arch, len(corpus.vocab)).to(device=device, dtype=dtype)
    model.amp_dtype = PRECISIONS[cfg.train.precision]  # autocast; weights stay in `dtype`
    if cfg.train.get("init_from"):
        start_from(model, cfg.train.init_from)
    if cfg.train.get("zero_weight_first_type"):  # SPEC §6: type 1 of the authors' dictionary
        model.zero_type = int(corpus.train[0])
    if device.type == "cuda" and cfg.train.precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    theta = optim.build(model, cfg)
    if comm is not None:
        theta = distributed.SharedTheta(theta, comm)
    sched = optim.plateau(theta.opt, cfg.train.lr_decay)
    prov = records.provenance(device, overrides)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("run %s: method %s (%s), %s %s, %s parameters, on %s; tokens: train %s, valid %s, test %s, vocab %s",
             run_dir, cfg.method.name, cfg.method.mode, cfg.arch.cell, cfg.arch.hidden_size,
             f"{n_params:,}", prov["device"], f"{len(corpus.train):,}", f"{len(corpus.valid):,}",
             f"{len(corpus.test):,}", f"{len(corpus.vocab):,}")
    metrics = logger.build(cfg.get("logger"), run_dir, config) if comm is None or comm.rank == 0 \
        else logger.NoLogger()
    t = Trainer(cfg, model, theta, sched, corpus, run_dir, config, metrics, comm)
    t.resume(records.load_shared_checkpoint(comm, run_dir, config))
    try:
        with stop_on_signals(t), logging_redirect_tqdm():  # log lines above the bar
            status, error = t.fit()
        result = t.result(status, prov)
        metrics.final(config, {k: result[k] for k in records.RESULT_FIELDS})
    except Interrupted as e:
        where = f"epoch {t.epoch + 1}" + (f", update {t.pos['update']:,}" if t.pos else "")
        notice = f"{run_dir}: stopped by {e} in {where}; checkpoint saved, the run resumes when started again"
        log.warning("%s", notice)
        print(f"tprop_exp: {notice}", file=sys.stderr, flush=True)  # a notice: on stderr too
        raise SystemExit(128 + e.signum)
    finally:
        metrics.close()
    if error:
        result["error"] = error
    if t.lead:
        records.write_metrics(run_dir, t.history)  # final: also a diverged run, or a resumed one with nothing left
        if t.best_state is not None and status != "failed":
            records.save_model(run_dir, t.best_state, len(corpus.vocab), config)
        records.write_json(run_dir / "result.json", result)
        if status != "failed":  # a failed run is tried again from its checkpoint
            records.drop_checkpoint(run_dir)
    if comm is not None:
        comm.barrier()  # until the lead's records exist: a sweep under torchrun reads them next
    if not t.lead:
        return result
    log.info("run %s: %s after %s (%s of training); best valid ppl %s, test ppl %s; records in %s",
             run_dir.name, status, f"{t.epoch} epoch" + "s" * (t.epoch != 1), f"{t.wall:,.1f}s",
             logger.number(result["best_valid_ppl"]),
             logger.number(result["test_ppl"]) if result["test_ppl"] is not None else f"not evaluated ({status})",
             run_dir)
    return result


def start_from(model: LanguageModel, path: str) -> None:
    """train.init_from: θ from a state_dict file (a plain state_dict, or a run's
    model.pt), instead of the seed's initialisation."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f"train.init_from: cannot read {path!r} ({str(e).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        why = " ".join(line.strip() for line in str(e).splitlines()[1:])[:300] or str(e)
        raise UserError(f"train.init_from: {path!r} does not fit this model ({why})") from None


@contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGTERM/SIGINT ask the trainer to checkpoint and stop at the next
    update; a second SIGINT stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        if trainer.stop is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Trainer:
    """The mutable state of one run, so that it can be checkpointed whole."""

    def __init__(self, cfg: DictConfig, model: LanguageModel, theta: ThetaStep | SharedTheta,
                 sched: torch.optim.lr_scheduler.ReduceLROnPlateau | optim.NoDecay, corpus: Corpus, run_dir: Path,
                 config: dict, metrics: Optional[logger.NoLogger] = None, comm: Optional[Comm] = None) -> None:
        self.cfg, self.model, self.theta, self.sched = cfg, model, theta, sched
        self.corpus, self.run_dir, self.config = corpus, run_dir, config
        self.metrics = metrics or logger.NoLogger()
        self.status, self.stop = None, None  # status: set once the run has ended (diverged)
        method = registry.method(cfg.method.name, cfg.method.get("_target_"))  # train_epoch, end_epoch
        self.progress = None  # the progress line names BPTT's running NLL, or BTPROP's CE given the free H
        self.loss_name = "train CE given H" if method.shares == "blocks" else "train NLL"
        self.updates_per_epoch = updates_per_epoch(cfg, method, len(corpus.train), comm.world if comm else 1)
        self.core = method if comm is None else distributed.Core(comm, method)
        self.comm, self.lead = comm, comm is None or comm.rank == 0  # the lead process writes records
        self.epoch, self.history, self.best, self.bad_epochs = 0, [], math.inf, 0
        self.best_state, self.state, self.pos = None, {}, None  # state: the core's, across epochs
        self.wall = 0.0
        self.last_save = time.monotonic()
        # read once: on_update runs at every update, and a DictConfig lookup costs microseconds
        self.minibatch = cfg.method.mode == "minibatch"
        self.ckpt_interval_s = float(cfg.train.ckpt_interval_s)

    def checkpoint(self, pos: Optional[dict] = None) -> None:
        save = records.save_checkpoint if self.comm is None else functools.partial(records.save_shared_checkpoint, self.comm)
        save(self.run_dir, {
            "config": self.config, "epoch": self.epoch, "history": self.history,
            "model": self.model.state_dict(), "theta": self.theta.state_dict(),
            "sched": self.sched.state_dict(), "best": self.best, "bad_epochs": self.bad_epochs,
            "best_state": self.best_state, "core_state": self.state,
            "pos": pos, "wall": self.wall, "rng": torch.get_rng_state(), "status": self.status,
        })
        self.last_save = time.monotonic()

    def resume(self, ckpt: Optional[dict]) -> None:
        if ckpt is None:
            return
        device = self.model.decoder.weight.device
        try:
            self.model.load_state_dict(ckpt["model"])
            self.theta.load_state_dict(ckpt["theta"])
            self.sched.load_state_dict(ckpt["sched"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # e.g. the data's vocabulary changed
            cause = str(e).strip().splitlines()
            cause = next((c.strip() for c in cause if "size mismatch" in c), cause[0] if cause else type(e).__name__)
            raise UserError(f"checkpoint {self.run_dir / 'checkpoint.pt'} does not fit this run's model "
                            f"({cause}); delete it to start the run afresh") from None
        torch.set_rng_state(ckpt["rng"])
        self.epoch, self.history = ckpt["epoch"], ckpt["history"]
        self.best, self.bad_epochs, self.best_state = ckpt["best"], ckpt["bad_epochs"], ckpt["best_state"]
        self.wall = ckpt["wall"]
        self.state = distributed.to_device(ckpt["core_state"], device)
        self.pos = distributed.to_device(ckpt["pos"], device)
        self.status = ckpt.get("status")
        log.info("%s: resuming at epoch %d%s", self.run_dir, self.epoch + 1,
                 f", update {self.pos['update']}" if self.pos else "")

    def on_update(self, pos: dict) -> None:
        self.progress.update(pos)
        if not self.minibatch:
            if self.stop is not None:
                raise Interrupted(self.stop)  # the epoch's start is checkpointed
            return
        stop = self.stop is not None
        due = stop or time.monotonic() - self.last_save > self.ckpt_interval_s
        if self.comm is not None:  # every process takes part in a checkpoint, and stops together
            due, stop = self.comm.decide(due), self.comm.decide(stop)
        if due:
            pos["elapsed"] = time.perf_counter() - self.epoch_t0  # this epoch's seconds so far
            self.checkpoint(pos)
            if stop:
                self.pos = pos
                raise Interrupted(self.stop or signal.SIGTERM)

    def train_epoch(self) -> dict:
        pos, self.pos = self.pos, None
        tokens_done = round(sum(r["tokens_per_s"] * r["seconds"] for r in self.history))
        self.progress = logger.Progress(
            self.epoch + 1, pos["update"] if pos else 0, self.updates_per_epoch, self.cfg.method.block_size,
            self.cfg.train.batch_size, self.cfg.train.get("log_interval_s", 30), self.metrics, tokens_done,
            loss_name=self.loss_name)
        try:
            stats = self.core.train_epoch(self.model, self.theta, self.corpus.train, self.cfg, self.state,
                                          epoch=self.epoch + 1, pos=pos, on_update=self.on_update)
        finally:
            self.progress.close()
        return stats

    def train_ppl(self) -> float:
        return self.train_eval()[1]

    def train_eval(self) -> tuple:
        """SPEC's train_ppl: θ frozen, evaluated like validation over the
        first train.train_eval_tokens training tokens (all when null): NLL,
        ppl, and the authors' weighted NLL, ppl (None without their weights)."""
        n = self.cfg.train.get("train_eval_tokens")
        tokens = self.corpus.train if n is None else self.corpus.train[:n]
        return evaluate_weighted(self.model, tokens, self.cfg.train.eval_batch_size, self.model.zero_type)

    def weighted(self) -> bool:
        """train.zero_weight_first_type: the authors' numbers are reported beside the true ones."""
        return self.model.zero_type is not None

    def fit(self) -> tuple[str, Optional[str]]:
        cfg = self.cfg
        limit = 2 * math.log(len(self.corpus.vocab))  # a mean NLL above this has exploded
        if self.status is not None:  # ended before a kill; records not yet written
            return self.status, None
        while self.epoch < cfg.train.max_epochs and self.bad_epochs < cfg.train.patience:
            if self.stop is not None:
                raise Interrupted(self.stop)
            self.epoch_t0 = time.perf_counter() - (self.pos or {}).get("elapsed", 0.0)
            try:
                stats = self.train_epoch()
            except torch.cuda.OutOfMemoryError as e:
                return "failed", f"out of memory: {e}".splitlines()[0]
            seconds = time.perf_counter() - self.epoch_t0
            valid_nll, valid_ppl, _, valid_ppl_w = evaluate_weighted(
                self.model, self.corpus.valid, cfg.train.eval_batch_size, self.model.zero_type)
            self.epoch += 1
            self.wall += seconds
            train = self.train_eval()
            row = {"epoch": self.epoch, "train_ppl": train[1],
                   "valid_ppl": valid_ppl, "lr": self.theta.opt.param_groups[0]["lr"],
                   "tokens_per_s": stats.pop("tokens") / seconds, "seconds": seconds}
            if self.weighted():  # beside the true numbers, under their own names
                row["train_ppl_tprnn_weighting"], row["valid_ppl_tprnn_weighting"] = train[3], valid_ppl_w
            if "lam" in self.state:
                row["lam"] = self.state["lam"]
            row.update(self.lag_learned(valid_nll, "valid"))
            row.update(stats)
            self.history.append(row)
            log.info("epoch %d/%d  %s", self.epoch, cfg.train.max_epochs,
                     logger.fields({k: v for k, v in row.items() if k != "epoch"}))
            self.metrics.log({k: v for k, v in row.items() if k != "epoch"}, self.epoch, "epoch")
            loss = stats.get("running_nll", stats.get("ce"))  # the method's own objective
            if not math.isfinite(valid_nll) or not (loss < limit):
                self.status = "diverged"  # in the checkpoint, so that a kill now keeps it
                self.checkpoint()  # run() writes the metrics
                return "diverged", None
            if valid_ppl < self.best:  # the true number picks the epoch, under any weighting
                self.best, self.bad_epochs = valid_ppl, 0
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            else:
                self.bad_epochs += 1
            self.sched.step(valid_nll)
            self.core.end_epoch(self.state, cfg)
            records.write_metrics(self.run_dir, self.history)
            self.checkpoint()
        return "completed", None

    def on_lag(self) -> bool:
        d = self.cfg.get("dataset")  # a Trainer built by hand may have none
        return d is not None and d.get("source") == "lag"

    def lag_learned(self, nll: Optional[float], split: str) -> dict:
        """`<split>_lag_learned` for a run on dataset=lag (SPEC §7), else nothing."""
        if not self.on_lag():
            return {}
        d = self.cfg.dataset
        return {f"{split}_lag_learned": None if nll is None else lag.lag_learned(nll, d.symbols, d.copy_prob)}

    def result(self, status: str, prov: dict) -> dict:
        cfg, corpus = self.cfg, self.corpus
        test_ppl = test_ppl_w = test_nll = None
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            test_nll, test_ppl, _, test_ppl_w = evaluate_weighted(self.model, corpus.test, cfg.train.eval_batch_size,
                                                                  self.model.zero_type)
        best_row = min(self.history, key=lambda r: r["valid_ppl"], default=None)
        weighting = {}
        if self.weighted():  # the authors' numbers of the same model, never in place of the true ones (SPEC §6)
            weighting = {"best_valid_ppl_tprnn_weighting": None if best_row is None
                         else best_row["valid_ppl_tprnn_weighting"],
                         "test_ppl_tprnn_weighting": test_ppl_w,
                         "tprnn_weighting_type": self.model.zero_type}
        tokens = sum(r["tokens_per_s"] * r["seconds"] for r in self.history)
        if self.on_lag():  # the corpus's floor and ceiling, and how much was learned
            best_nll = None if best_row is None else math.log(best_row["valid_ppl"])
            prov = {**lag.facts(cfg.dataset), **self.lag_learned(best_nll, "best_valid"),
                    **self.lag_learned(test_nll, "test"), **prov}
        return {
            "status": status,
            "best_valid_ppl": None if best_row is None else best_row["valid_ppl"],
            "test_ppl": test_ppl,
            "train_ppl": None if best_row is None else best_row["train_ppl"],
            "epochs": self.epoch,
            "wall_s": self.wall,  # seconds of training, evaluation not included
            "train_tokens_per_s": tokens / self.wall if self.wall else None,
            **weighting,
            "world": 1 if self.comm is None else self.comm.world,  # processes that trained it
            "config": self.config,
            **prov,
        }

