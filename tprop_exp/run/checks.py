"""Bad input stops before anything is written (SPEC §3).

- The run folder is named by resolvers (`${run_id:}`, `${sweep_id:}` in
  conf/config.yaml) from the run's identity (schema.identity).
- A single run is checked by the `CheckRun` callback, which Hydra calls
  before it makes the run folder or writes `.hydra/`: the config's ranges,
  and an existing folder's config.
- A sweep's cells are checked one by one by the tprop sweeper
  (hydra_plugins/tprop_sweeper), which records a bad cell as `invalid`.
- `describe` turns any Hydra or OmegaConf error into one line.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oe

from tprop_exp import UserError

from . import machine, records, schema

if TYPE_CHECKING:
    from hydra.core.config_loader import ConfigLoader

    from tprop_exp.data.corpora import Corpus


def task_config(root: DictConfig) -> dict:
    """The resolved run config (the composed config less Hydra's own node)."""
    return {k: OmegaConf.to_container(root[k], resolve=True) if isinstance(root[k], DictConfig)
            else root[k] for k in root if k != "hydra"}


def _run_id(_root_):
    return schema.run_folder_name(task_config(_root_))


def _sweep_id(_root_):
    profile = _root_.get("profile")
    return f"{_root_.name}/{profile.name}" if profile is not None else str(_root_.name)


OmegaConf.register_new_resolver("run_id", _run_id, replace=True)
OmegaConf.register_new_resolver("sweep_id", _sweep_id, replace=True)
# seeds=N in a sweep: train.seed runs over N seeds from the base seed.
OmegaConf.register_new_resolver(
    "seed_list", lambda n, base=1111: ",".join(str(base + i) for i in range(int(n))), replace=True)


# ------------------------------------------------------------- one line

def _a(type_name):
    return {"int": "an integer", "float": "a number", "bool": "true or false",
            "str": "a string"}.get(type_name, type_name)


def describe(e: BaseException) -> str:
    """One line for the user from an exception and its causes."""
    chain, c = [], e
    while c is not None and c not in chain:
        chain.append(c)
        c = c.__cause__ or c.__context__
    for c in chain:
        if isinstance(c, UserError):
            return str(c)
    for c in chain:
        key = getattr(c, "full_key", None)
        msg = str(getattr(c, "msg", "") or c).splitlines()[0] if str(c) else ""
        if isinstance(c, oe.ConfigTypeError) and key and "does not support deletion" in msg:
            return f"~{key}: a key of the schema cannot be removed; set it instead ({key}=VALUE)"
        if isinstance(c, (oe.ConfigKeyError, oe.ConfigAttributeError)) and key:
            return schema.unknown_key(key)
        if isinstance(c, oe.ValidationError) and key:
            m = re.search(r"Value '(.*?)' (?:of type '\w+' )?could not be converted to (\w+)", msg)
            if m:
                want = {"Integer": "int", "Float": "float", "Boolean": "bool"}.get(m[2], m[2])
                return f"{key}: {m[1]!r} is not {_a(want)}"
            m = re.search(r"Incompatible value '(.*?)' for field of type '(\w+)'", msg)
            if m:
                return f"{key}: {m[1]!r} is not {_a(m[2])}"
            m = re.search(r"field '[\w.]+' is not Optional", msg)
            if m:
                return f"{key}: null is not allowed"
            return f"{key}: {msg}"
    text = str(e)
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    msg = lines[0] if lines else type(e).__name__
    if "Available options" in text:
        i = next(i for i, s in enumerate(lines) if s.startswith("Available options"))
        opts = [s for s in lines[i + 1:] if " " not in s and "=" not in s and ":" not in s]
        msg += f" (available: {', '.join(opts)})"
    return msg


def null_group_key(argv: Sequence[str]) -> Optional[str]:
    """One line for `group.key=value` when that group is null in the config
    (OmegaConf then fails an assertion instead of naming the key)."""
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        group = key.split(".")[0]
        chosen = any(a.split("=", 1)[0].lstrip("+~") == group for a in argv)
        if "=" in arg and "." in key and group in NULL_GROUPS and not chosen:
            return (f"{key}: {group} is null here, so it has no keys to set; "
                    f"choose one first ({group}=NAME)")
    return None


NULL_GROUPS = ("profile", "row", "experiment", "hparams_search", "debug")  # conf/config.yaml: null


def refuse(e: BaseException) -> NoReturn:
    print(f"tprop_exp: error: {describe(e)}", file=sys.stderr, flush=True)
    sys.exit(2)


class Stopped(BaseException):
    """SIGTERM or SIGINT before the trainer's own handler is set (start-up):
    a BaseException, so that no `except Exception` records it as a crash."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_at_startup() -> None:
    """Until the trainer sets its handler, SIGTERM/SIGINT raise Stopped."""
    def handler(signum: int, frame: Any) -> None:
        raise Stopped(signum)
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, handler)


def stopped(e: Stopped) -> NoReturn:
    """Remove the folder this command made (if it holds only Hydra's files) and exit 128 + signal."""
    for d in list(FRESH):
        forget(d)
    kept = [d for d in [*FRESH, *RESUMING] if d.is_dir()]
    then = (f"{kept[0]} is kept; the run resumes when started again" if kept
            else "nothing was written; the run starts afresh when started again")
    print(f"tprop_exp: stopped by {e} before training began; {then}", file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)


def check_flags(argv: Sequence[str]) -> None:
    """Unknown or misplaced flags: one line instead of argparse's usage (SPEC §3)."""
    from hydra._internal.utils import get_args_parser
    parser = get_args_parser()
    known = {o: a for a in parser._actions for o in a.option_strings}
    if any(a.split("=")[0] in ("-h", "--help", "--hydra-help", "--version", "-sc", "--shell-completion")
           for a in argv):
        return  # they print and exit: Hydra's own
    first_override, misplaced, i = None, None, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and len(a) > 1:
            name = a.split("=", 1)[0]
            action = known.get(name) or _abbreviation(name, known)
            if action is None:
                raise UserError(f"unknown flag {a!r}; the flags are -m, --cfg job, --config-dir DIR, "
                                "--config-name NAME, --info, --help (see tprop_exp --help)")
            if first_override is not None and misplaced is None:
                misplaced = name
            takes = action.nargs is None or (action.nargs == "?" and i + 1 < len(argv)
                                             and "=" not in argv[i + 1] and not argv[i + 1].startswith("-"))
            if takes and "=" not in a:
                if i + 1 >= len(argv) or (action.nargs is None and "=" in argv[i + 1]
                                          and not argv[i + 1].startswith(("/", ".", "~"))):
                    given = f", not the override {argv[i + 1]!r}" if i + 1 < len(argv) else ""
                    raise UserError(f"flag {name} needs a value{given} (e.g. {name} "
                                    f"{'job' if action.dest == 'cfg' else 'DIR' if 'dir' in name or 'path' in name else 'NAME'}); flags go "
                                    "before the overrides")
                i += 1
        elif first_override is None:
            first_override = a
        i += 1

    class Refused(Exception):
        pass

    def error(message: str) -> NoReturn:
        raise Refused(message)
    parser.error = error  # type: ignore[method-assign]
    try:
        parser.parse_args(list(argv))
    except Refused as e:
        if misplaced is None:
            raise UserError(f"{e} (see tprop_exp --help)") from None
        raise UserError(f"flag {misplaced} comes after the overrides (after {first_override!r}); "
                        f"flags go first: tprop_exp {misplaced} ... key=value ... ({e})") from None


def _abbreviation(name: str, known: dict) -> Any:
    """argparse takes an unambiguous prefix of a long flag."""
    hits = {a for o, a in known.items() if name.startswith("--") and o.startswith(name)}
    return hits.pop() if len(hits) == 1 else None


# ------------------------------------------------------------ the checks

def check(root: DictConfig, run_dir: Optional[Path] = None) -> None:
    """Validate a composed config; if run_dir holds a run, it must be this one."""
    schema.validate(root)
    machine.check(root)
    if root.get("data_dir") is not None:
        _placeable(Path(str(root.data_dir)).expanduser(), "data_dir")
    if root.dataset.source == "local":
        from tprop_exp.data.corpora import _local_paths
        _local_paths(root.dataset)  # the user's files exist and are not empty
    if run_dir is None:
        return
    _placeable(run_dir, "hydra.run.dir")
    if run_dir.is_dir():
        if os.environ.get("RANK", "0") == "0":  # a distributed run's lead holds the lock for all
            records.check_unlocked(run_dir)  # refused here, before Hydra rewrites .hydra/
        old = records.existing_config(run_dir)
        if old is not None:
            records.check_same_config(old, task_config(root), run_dir)


def _placeable(path, key):
    """A folder at path can be made: its nearest existing ancestor is a folder."""
    above = _ancestor(path)
    if not above.is_dir():
        raise UserError(f"{key}: {path} cannot be a folder, {above} is a file")


def data_sizes(cfg: DictConfig, corpus: Corpus) -> None:
    """The loaded corpus is long enough for the batch sizes (the key at fault named)."""
    t = cfg.train
    n = len(corpus.train)
    cut = f" (train.train_tokens={t.train_tokens})" if t.train_tokens is not None else ""
    if n < 2:
        raise UserError(f"train.train_tokens: {t.train_tokens} leaves {n} training token; at least 2 are needed")
    if cfg.method.name == "bptt" and n // t.batch_size < 2:
        raise UserError(f"train.batch_size: {t.batch_size} streams are too many for {n} training tokens"
                        f"{cut}; at most {n // 2}")
    train_eval = min(n, t.train_eval_tokens or n)
    for split, size in (("validation", len(corpus.valid)), ("test", len(corpus.test)), ("training", train_eval)):
        if size // t.eval_batch_size < 2:
            raise UserError(f"train.eval_batch_size: {t.eval_batch_size} streams are too many for the {split} "
                            f"split's {size} evaluated tokens; at most {size // 2}")


def _ancestor(path):
    """The nearest existing folder at or above path."""
    above = path.absolute()
    while not above.exists() and above != above.parent:
        above = above.parent
    return above


# A single run's folder that this command is about to make, with the nearest
# folder above it that existed: `forget` may remove what lies between.
FRESH = {}
RESUMING = []  # an existing single-run folder this command is about to resume


def forget(run_dir: str | Path) -> None:
    """Remove a run folder that this command made and that holds only Hydra's
    files (.hydra/, the log, the lock), and the empty folders made above it:
    bad input found while loading the data leaves nothing behind."""
    run_dir = Path(run_dir).absolute()
    above = FRESH.get(run_dir)
    if above is None or not run_dir.is_dir():
        return
    if any(p.name not in (".hydra", ".lock") and p.suffix != ".log" for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.parents:
        if parent == above:
            break
        try:
            parent.rmdir()  # only an empty one, made for this run
        except OSError:
            break


class CheckRun(Callback):
    """Hydra calls on_run_start before it makes the run folder (single runs)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning, so refuse here.
        try:
            run_dir = Path(str(config.hydra.run.dir))
            if not run_dir.exists():
                FRESH[run_dir.absolute()] = _ancestor(run_dir)
            else:
                RESUMING.append(run_dir.absolute())
            check(config, run_dir)
        except Exception as e:  # noqa: BLE001 (any error: one line, status 2)
            refuse(e)


def check_cell(config_loader: ConfigLoader, master: DictConfig,
               cell: Sequence[str]) -> tuple[Optional[str], Optional[Path]]:
    """(None, the cell's run folder) if a sweep cell composes and passes the
    checks, else (one line, None)."""
    try:
        cfg = config_loader.load_sweep_config(master_config=master, sweep_overrides=list(cell))
        folder = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        check(cfg, folder)
        return None, folder.absolute()
    except Exception as e:  # noqa: BLE001
        return describe(e), None


def record_invalid(sweep_dir: str | Path, cell: Sequence[str], error: str) -> None:
    """`invalid-<hash of the cell's overrides>/result.json` in the sweep folder."""
    digest = hashlib.sha1("\n".join(sorted(cell)).encode()).hexdigest()[:10]
    run_dir = Path(sweep_dir) / f"invalid-{digest}"
    run_dir.mkdir(parents=True, exist_ok=True)
    records.write_json(run_dir / "result.json", {
        "status": "invalid", "error": error, **dict.fromkeys(records.RESULT_FIELDS),
        "overrides": list(cell), "command": records.command(cell)})
    print(f"{run_dir}: invalid: {error}", file=sys.stderr, flush=True)
