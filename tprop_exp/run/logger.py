"""What a run tells the people watching it: log lines, a progress bar, metric loggers.

Log lines go through stdlib logging, configured by Hydra's job logging
(conf/hydra/job_logging/tprop.yaml): the console and `<run dir>/<job>.log`,
each line labelled with the run (`Formatter`), so the lines of parallel runs
can be told apart.

`Progress` follows the updates of one epoch: a tqdm bar on a terminal, a log
line every `train.log_interval_s` seconds elsewhere (SLURM, joblib, a pipe).
The cores hand back device tensors; the running loss is read (a host sync)
only when the interval has passed, never at every update.

Metric loggers (`logger=` config group): none, csv, tensorboard, wandb,
mlflow. Each gets the per-epoch rows of metrics.jsonl and the per-interval
training scalars; the optional ones are imported only when chosen.
"""
from __future__ import annotations

import csv
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tqdm import tqdm

from tprop_exp import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("tprop_exp")


class Formatter(logging.Formatter):
    """Adds `run_label` to every record: the run folder's name (shortened),
    after the job's number in a sweep."""

    def __init__(self, fmt: Optional[str] = None, datefmt: Optional[str] = None) -> None:
        super().__init__(fmt, datefmt)
        self.label = run_label()

    def format(self, record: logging.LogRecord) -> str:
        record.run_label = self.label
        return super().format(record)


def run_label() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return "-"
    name = short_name(Path(hc.runtime.output_dir).name)
    return f"{hc.job.num}:{name}" if hc.mode == RunMode.MULTIRUN else name


def short_name(name: str) -> str:
    """A run folder's name with its identity hash cut to 6 characters; the
    settings before it (method, K, h-steps, cell and size, dataset) stay whole."""
    prefix, _, digest = name.rpartition("-")
    if prefix and len(digest) == 10 and all(c in "0123456789abcdef" for c in digest):
        return f"{prefix}-{digest[:6]}"
    return name


def number(v: Any) -> str:
    """Readable numbers: 39,390 rather than 3.939e+04; four significant
    digits, trailing zeros kept (7.000, not 7, for 6.99996)."""
    if isinstance(v, bool) or not isinstance(v, float):
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if v == 0:
        return "0"
    if abs(v) >= 1e-3:
        return f"{v:#.4g}".rstrip(".")
    return f"{v:.2e}"


def fields(row: dict) -> str:
    return "  ".join(f"{k} {number(v)}" for k, v in row.items())


class Progress:
    """One epoch's updates: call `update(pos)` after each (pos from the core).

    `total` is the epoch's number of updates, known from the data layout
    before it starts (trainer.updates_per_epoch), so the bar shows a
    percentage and an ETA from the first epoch on. On a terminal the loss
    after the bar is read every `BAR_S` seconds; off one, a line every
    `interval_s`. Between those reads no update waits on the device.
    """

    BAR_S = 1.0

    def __init__(self, epoch: int, start: int, total: Optional[int], block_size: int, batch_size: int,
                 interval_s: float, metrics: NoLogger, step0: int, loss_name: str = "train NLL") -> None:
        self.epoch, self.update_n, self.total, self.B = epoch, start, total, batch_size
        self.tpu = block_size * batch_size  # tokens per update, BPTT and BTPROP alike
        self.interval, self.metrics, self.step0, self.loss_name = interval_s, metrics, step0, loss_name
        self.t_last = self.t_bar = time.monotonic()
        self.n_last = start
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=start, desc=f"epoch {epoch}", leave=False,
                            unit="upd", dynamic_ncols=True)

    def update(self, pos: dict) -> None:
        self.update_n = pos["update"]
        now = time.monotonic()
        if self.bar is not None:
            self.bar.update(self.update_n - self.bar.n)
            if now - self.t_bar >= min(self.BAR_S, self.interval):
                self.t_bar = now
                self.bar.set_postfix_str(f"{self.loss_name} {running_loss(pos, self.B):.4f} nats", refresh=False)
        if now - self.t_last < self.interval:
            return  # no host sync between intervals
        loss = running_loss(pos, self.B)
        rate = (self.update_n - self.n_last) * self.tpu / (now - self.t_last)
        self.t_last, self.n_last = now, self.update_n
        if self.bar is None:
            of = f" of {self.total:,}" if self.total else ""
            log.info("epoch %d  update %s%s  %s %.4f nats  tokens/s %s", self.epoch,
                     f"{self.update_n:,}", of, self.loss_name, loss, f"{rate:,.0f}")
        # step: training tokens so far, counted across epochs (epoch/* scalars use the epoch)
        self.metrics.log({"loss": loss, "tokens_per_s": rate}, self.step0 + self.update_n * self.tpu, "train")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def running_loss(pos: dict, batch_size: int) -> float:
    """The epoch's running loss so far, from the pos dict a core hands on_update:
    BPTT's NLL summed over windows, BTPROP's CE summed over blocks (B per update)."""
    if "nll_sum" in pos:
        return pos["nll_sum"].item() / pos["update"]
    return float(pos["sums"]["ce"]) / (pos["update"] * batch_size)


# --- metric loggers ------------------------------------------------------------

class NoLogger:
    def log(self, scalars: dict, step: int, prefix: str) -> None:
        pass

    def final(self, config: dict, result: dict) -> None:
        """At a run's end: its resolved config and result.json's metrics."""

    def close(self) -> None:
        pass


class CSVLogger(NoLogger):
    """`<run dir>/scalars.csv`, one row per value: step, name, value."""

    def __init__(self, run_dir: str | Path) -> None:
        path = Path(run_dir) / "scalars.csv"
        new = not path.exists()
        self.f = open(path, "a", newline="")
        self.w = csv.writer(self.f)
        if new:
            self.w.writerow(["step", "name", "value"])

    def log(self, scalars: dict, step: int, prefix: str) -> None:
        for k, v in scalars.items():
            self.w.writerow([step, f"{prefix}/{k}", v])
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class TensorBoardLogger(NoLogger):
    """Event files in `<run dir>/tensorboard`."""

    def __init__(self, run_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.w = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, scalars: dict, step: int, prefix: str) -> None:
        for k, v in scalars.items():
            self.w.add_scalar(f"{prefix}/{k}", v, step)

    def final(self, config: dict, result: dict) -> None:
        """The run's keys and final metrics in TensorBoard's HParams tab (one
        row per run, so runs of a sweep compare side by side)."""
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in flat(config).items() if v is not None}
        metrics = {f"hparam/{k}": math.nan if v is None else float(v) for k, v in result.items()}
        self.w.add_hparams(hparams, metrics, run_name=".")

    def close(self) -> None:
        self.w.close()


class WandbLogger(NoLogger):
    def __init__(self, run_dir: str | Path, cfg: DictConfig, config: dict) -> None:
        import wandb
        self.wandb = wandb
        self.run = wandb.init(project=cfg.get("project"), entity=cfg.get("entity"), mode=cfg.get("mode"),
                              name=Path(run_dir).name, dir=str(run_dir), config=config,
                              id=cfg.get("id"), resume="allow")

    def log(self, scalars: dict, step: int, prefix: str) -> None:
        self.run.log({f"{prefix}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowLogger(NoLogger):
    def __init__(self, run_dir: str | Path, cfg: DictConfig, config: dict) -> None:
        import mlflow
        self.mlflow = mlflow
        if cfg.get("tracking_uri"):
            mlflow.set_tracking_uri(cfg.tracking_uri)
        mlflow.set_experiment(cfg.get("experiment") or "tprop_exp")
        mlflow.start_run(run_name=Path(run_dir).name)
        mlflow.log_params(flat(config))

    def log(self, scalars: dict, step: int, prefix: str) -> None:
        self.mlflow.log_metrics({f"{prefix}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def build(cfg: Optional[DictConfig], run_dir: str | Path, config: dict) -> NoLogger:
    """The metric logger that `logger.name` names (cfg: the logger group, or None)."""
    name = "none" if cfg is None else cfg.name
    try:
        if name == "none":
            return NoLogger()
        if name == "csv":
            return CSVLogger(run_dir)
        if name == "tensorboard":
            return TensorBoardLogger(run_dir)
        if name == "wandb":
            return WandbLogger(run_dir, cfg, config)
        if name == "mlflow":
            return MLflowLogger(run_dir, cfg, config)
    except ImportError:
        raise UserError(f"logger={name} needs the {EXTRAS[name]} package: "
                        f"pip install 'tprop_exp[{EXTRAS[name]}]'") from None
    raise UserError(f"logger.name must be one of none, csv, tensorboard, wandb, mlflow, got {name!r}")
