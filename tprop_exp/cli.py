"""The command line, one command with subcommands:

    tprop_exp [experiment=NAME] [group=option] [key=value ...] [-m]   train (a run, or a sweep)
    tprop_exp report DIR ... [--out OUT]     tables, figures and claims from run records
    tprop_exp evaluate RUN_DIR [--split S]   the perplexity of a finished run's model
    tprop_exp plan [overrides] [-m]          a sweep's runs and hours, before running it

(`python -m tprop_exp` and `python -m tprop_exp.<subcommand>` work the same.)

Training: Hydra composes conf/ (on the schema of run/schema.py) into one config
per run; `run.trainer.run` does the work. Bad input (an unknown key or option, a value of the
wrong type or out of range, a missing data file) ends with one line on stderr
and exit status 2, before anything is written (checks.py). In a sweep (-m),
a cell with bad input is recorded as `invalid`, a run that crashes as
`failed`, and the sweep goes on.
"""
import errno
import math
import os
import re
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from tprop_exp import UserError
from tprop_exp.run import checks, schema
from tprop_exp.run.schema import CONF

# train and records (hence torch) are imported where they are used: `--help`,
# shell completion and refused input then answer without loading torch.



def _find_our_sweeper():
    """Hydra finds plugins by listing the folders of the `hydra_plugins`
    namespace; an editable install maps our sweeper without such a folder, so
    name its folder there (a wheel installs it where Hydra looks anyway)."""
    import hydra_plugins
    import hydra_plugins.tprop_sweeper as ours

    folder = str(Path(ours.__file__).resolve().parent.parent)
    if folder not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(folder)


_find_our_sweeper()


@hydra.main(config_path=CONF, config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from tprop_exp.run import records, trainer as train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        schema.validate(cfg)  # checked before already; other launch paths land here too
        result = train.run(cfg, run_dir, overrides=hc.overrides.task, job_num=hc.job.num if multirun else 0)
        return train.objective(result)  # what a sweeper (Optuna) minimises: best validation perplexity
    except checks.Stopped as e:  # SIGTERM/SIGINT before the trainer's handler
        checks.stopped(e)
    except UserError as e:  # exit here, before Hydra adds lines of its own
        if multirun and isinstance(e, records.InUse):  # another process runs it: its folder is not ours
            print(f"{run_dir}: not run: {e}", file=sys.stderr)
            return math.nan  # the sweeper counts it as `in use`
        if multirun:  # e.g. a data file missing for this cell only: the sweep goes on
            print(f"{run_dir}: invalid: {e}", file=sys.stderr)
            record(cfg, run_dir, hc, "invalid", str(e), write=not (run_dir / "result.json").exists())
            return math.inf
        checks.forget(run_dir)  # the folder Hydra made for this run, if that is all it holds
        print(f"tprop_exp: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a crash: record it; a sweep goes on with the next run
        record(cfg, run_dir, hc, "failed", f"{type(e).__name__}: {e}".splitlines()[0])
        if multirun:
            traceback.print_exc()
            return math.inf
        e.tprop_recorded = True  # a crash, recorded: not one of Hydra's folder writes (cli)
        raise


def record(cfg, run_dir, hc, status, error, write=True):
    from tprop_exp.run import records, trainer as train

    try:
        device = train.pick_device(cfg.train.device)
    except UserError:
        device = train.pick_device("cpu")
    result = {"status": status, "error": error, **dict.fromkeys(records.RESULT_FIELDS),
              "config": records.resolved_config(cfg), **records.provenance(device, hc.overrides.task)}
    if write:
        records.write_json(run_dir / "result.json", result)
    return result


# name -> (module, what it does): the subcommands beside training
SUBCOMMANDS = {
    "report": ("tprop_exp.report.write", "tables, figures and claims from run records"),
    "evaluate": ("tprop_exp.run.evaluate", "the perplexity of a finished run's model on a split"),
    "plan": ("tprop_exp.report.plan", "a sweep's runs and estimated hours, before running it"),
}


def subcommand(name, argv):
    """Run `tprop_exp NAME ...`; its main returns an exit status (or exits)."""
    import importlib
    module = importlib.import_module(SUBCOMMANDS[name][0])
    status = module.main(argv, prog=f"tprop_exp {name}")
    sys.exit(status if isinstance(status, int) else 0)


def typed_command():
    """How this command was typed: the `tprop_exp` script, or `python -m tprop_exp`."""
    name = Path(sys.argv[0]).name
    return "python -m tprop_exp" if name in ("__main__.py", "-m", "-c", "") else name


# Groups that --help does not list, not chosen by hand: the paper's experiments pick paper/common.
HIDDEN_GROUPS = ("paper", "schema")  # schema: the built-in methods' keys, a base of conf/method


def _hide_groups():
    """--help's `$APP_CONFIG_GROUPS` lists every group Hydra finds (also in a
    --config-dir) but those in HIDDEN_GROUPS."""
    from hydra._internal.hydra import Hydra

    listed = Hydra.format_config_groups
    if getattr(listed, "hides", False):
        return

    def format_config_groups(self, predicate, compact=True):
        return listed(self, lambda g: predicate(g) and g.split("/")[0] not in HIDDEN_GROUPS, compact)

    format_config_groups.hides = True
    Hydra.format_config_groups = format_config_groups


def cli():
    os.environ.setdefault("TPROP_EXP_COMMAND", typed_command())  # result.json's `command`
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # __main__'s start-up handler is for training
        signal.signal(signal.SIGINT, signal.default_int_handler)
        subcommand(sys.argv[1], sys.argv[2:])
    checks.stop_at_startup()  # a signal before the trainer's handler: one line, no half-made folder
    # Let Hydra's errors reach us, so that they become one line and status 2.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    if not sys.stderr.isatty():  # no colour codes in a pipe or a file (Optuna's lines; colorlog reads this)
        os.environ.setdefault("NO_COLOR", "1")
    _hide_groups()
    try:
        checks.check_flags(sys.argv[1:])
        main()
    except checks.Stopped as e:
        checks.stopped(e)
    except (UserError, HydraException, OmegaConfBaseException) as e:
        line = checks.describe(e)
        if any(re.match(rf"unknown key {g}[ ;]", line) for g in checks.NULL_GROUPS):  # `row.x=1`, row null
            line = checks.null_group_key(sys.argv[1:]) or line
        checks.refuse(UserError(line))
    except ValueError as e:  # Hydra's check of its flags, e.g. --cfg job with -m
        if not str(e).startswith("Only one of"):
            raise
        checks.refuse(UserError("--cfg job prints one run's config: give one run's overrides, without -m"))
    except AssertionError as e:  # OmegaConf's, for `group.key=value` on a null group
        line = checks.null_group_key(sys.argv[1:])
        if line is None:
            raise
        checks.refuse(UserError(line))
    except OSError as e:  # Hydra could not make or write the run (or sweep) folder, or .hydra/
        if getattr(e, "tprop_recorded", False):
            raise
        made = [d for d in checks.FRESH if d.exists()]
        for d in made:
            checks.forget(d)  # a 0-byte .hydra/config.yaml is not a run
        where = e.filename or (made[0] if made else "the run folder")
        cause = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        checks.refuse(UserError(f"cannot write {where}: {cause} (see hydra.run.dir, hydra.sweep.dir)"))


if __name__ == "__main__":
    cli()
