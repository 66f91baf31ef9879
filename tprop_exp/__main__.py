"""Command line: python -m tprop_exp [experiment=NAME] [group=option] [key=value ...] [-m]

Hydra composes conf/ into one config per run; `train.run` does the work.
Bad input (an unknown option, a bad value, a missing data file) ends with one
line on stderr and exit status 2. In a sweep (-m), a run that crashes is
recorded as `failed` and the sweep goes on.
"""
import math
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import UserError, records, train

CONF = str(Path(__file__).resolve().parent / "conf")
# A run's folder is named by its overrides; the run with none is "defaults",
# so that it is never the parent folder of another run.
OmegaConf.register_new_resolver("run_id", lambda overrides: overrides or "defaults", replace=True)
# seeds=N in a sweep: train.seed runs over N seeds from the base seed.
OmegaConf.register_new_resolver("seed_list", lambda n, base=1111: ",".join(str(base + i) for i in range(int(n))), replace=True)


@hydra.main(config_path=CONF, config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        # The objective a sweeper (Optuna) minimises: best validation perplexity.
        return train.objective(train.run(cfg, run_dir, overrides=hc.overrides.task, job_num=hc.job.num if hc.mode == RunMode.MULTIRUN else 0))
    except UserError as e:  # exit here, before Hydra adds lines of its own
        print(f"tprop_exp: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a crash: record it; a sweep goes on with the next run
        try:
            device = train.pick_device(cfg.train.device)
        except UserError:
            device = train.pick_device("cpu")
        records.write_json(run_dir / "result.json", {
            "status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0],
            **dict.fromkeys(records.RESULT_FIELDS),
            "config": records.resolved_config(cfg), **records.provenance(device, hc.overrides.task),
        })
        if hc.mode == RunMode.MULTIRUN:
            traceback.print_exc()
            return math.inf
        raise


def one_line(e):
    """Hydra's multi-line messages folded into one line for the user."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    if not lines:
        return type(e).__name__
    msg = lines[0]
    if "Available options" in str(e):
        i = next(i for i, s in enumerate(lines) if s.startswith("Available options"))
        opts = [s for s in lines[i + 1:] if " " not in s and "=" not in s]
        msg += f" (available: {', '.join(opts)})"
    return msg


def cli():
    # Let Hydra's errors reach us, so that they become one line and status 2.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except (UserError, HydraException, OmegaConfBaseException) as e:
        print(f"tprop_exp: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
