"""Hydra's basic sweeper, except that a cell with bad input does not stop the sweep.

Before each batch goes to the launcher (any launcher: basic, joblib,
submitit), every cell is composed and checked here. A cell that fails is
recorded as `invalid` (result.json in its own folder, with the message) and
left out; the others run. Cells with the same run identity (they differ only
in keys that do not change what a run computes, such as train.threads) share
one run folder: the first runs, the others are left out and counted, so two
processes never race for one folder. At the end one line counts the
outcomes, and the command exits with status 1 when any run did not complete.

`TpropOptunaSweeper` is Hydra's Optuna sweeper (the optuna extra) with the
same closing line and exit status; conf/hparams_search names it.
"""
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import OmegaConf

STATUSES = ("completed", "diverged", "failed", "invalid")


@dataclass
class TpropSweeperConf:
    _target_: str = "hydra_plugins.tprop_sweeper.tprop_sweeper.TpropSweeper"
    max_batch_size: Optional[int] = None
    params: Dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="tprop", node=TpropSweeperConf,
                             provider="tprop_exp")


def job_status(job):
    """A launched cell's status, from the result.json its run wrote (the task
    function returns a float objective, for sweepers such as Optuna's; NaN
    when another process held the run's folder, which it leaves alone)."""
    try:
        if job.return_value != job.return_value:  # raises what the job raised past the task function
            return "in use"
        path = Path(job.hydra_cfg.hydra.runtime.output_dir) / "result.json"
        return json.loads(path.read_text()).get("status", "failed")
    except Exception:
        return "failed"


def summarise(counts, extra=None):
    """The sweep's closing line; status 1 when any run did not complete.
    `extra`: cells left out as duplicates or in use elsewhere, said when any."""
    extra = extra or {"in use": 0, "duplicate": 0}
    notes = [f"{extra['duplicate']} duplicate cell(s), the same run as another cell, run once" * bool(extra["duplicate"]),
             f"{extra['in use']} not run: in use by another process" * bool(extra["in use"])]
    print("sweep: " + " / ".join(f"{n} {s}" for s, n in counts.items())
          + "".join(f"; {n}" for n in notes if n), flush=True)
    if sum(counts.values()) + extra["in use"] != counts["completed"]:
        sys.exit(1)


class TpropOptunaSweeper(Sweeper):
    """Optuna's sweeper, counting the outcomes of the trials it launches."""

    def __init__(self, **kwargs: Any) -> None:
        from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper  # the optuna extra
        self.inner = OptunaSweeper(**kwargs)
        self.counts = dict.fromkeys(STATUSES, 0)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.inner.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        impl = self.inner.sweeper
        launch = impl.launcher.launch

        def counted(job_overrides: Any, initial_job_idx: int) -> Any:
            results = launch(job_overrides, initial_job_idx=initial_job_idx)
            for r in results:
                status = job_status(r)
                self.counts[status if status in self.counts else "failed"] += 1
            return results

        impl.launcher.launch = counted

    def sweep(self, arguments: List[str]) -> Any:
        out = self.inner.sweep(arguments)
        summarise(self.counts)
        return out


class TpropSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        from tprop_exp.run import checks  # the project, imported only when a sweep runs

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        counts = dict.fromkeys(STATUSES, 0)
        extra = {"in use": 0, "duplicate": 0}  # said only when there are any
        returns, job_idx, folders = [], 0, {}
        while not self.is_done():
            batch = []
            for cell in self.get_job_batch():
                error, folder = checks.check_cell(self.hydra_context.config_loader, self.config, cell)
                if folder in folders:
                    first = folders[folder]
                    print(f"{folder}: the cell {' '.join(o for o in cell if o not in first)} is the same run as "
                          f"{' '.join(o for o in first if o not in cell)} (they differ only in keys that do not "
                          "change what it computes); it runs once", file=sys.stderr, flush=True)
                    extra["duplicate"] += 1
                elif error is None:
                    folders[folder] = cell
                    batch.append(cell)
                else:
                    checks.record_invalid(sweep_dir, cell, error)
                    counts["invalid"] += 1
            if batch:
                results = self.launcher.launch(batch, initial_job_idx=job_idx)
                job_idx += len(batch)
                returns.append(results)
                for r in results:
                    status = job_status(r)
                    if status in extra:
                        extra[status] += 1
                    else:
                        counts[status if status in counts else "failed"] += 1
        summarise(counts, extra)
        return returns
