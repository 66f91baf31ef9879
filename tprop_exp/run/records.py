"""Run records (SPEC §3): metrics.jsonl, result.json, checkpoints, model.pt, provenance.

Everything is written atomically (a temporary file, then os.replace), so a
killed run never leaves half a file behind. A run's folder is named by a hash
of its identity (schema.identity: the resolved config less the keys that do
not change what it computes), so asking for the same run twice finds the same
folder, which resumes or returns at once. The temporary files of a kill
during a write are removed when the run starts again (`remove_partial`).

Non-finite floats are written as null (every JSON reader accepts them);
configs are compared after the same mapping, so a config holding inf is the
same run when it comes back from result.json.

Failures to read or write a record (disk full, a read-only folder, a damaged
file) become one UserError line naming the file and the cause.
"""
from __future__ import annotations

import errno
import json
import math
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Optional, Sequence

import hydra
from omegaconf import OmegaConf

from tprop_exp import UserError, __version__

from . import schema

if TYPE_CHECKING:
    import filelock
    import torch
    from omegaconf import DictConfig

    from tprop_exp.core.distributed import Comm

# What result.json reports of a run's training (SPEC §3), beside config and provenance.
RESULT_FIELDS = ("best_valid_ppl", "test_ppl", "train_ppl", "epochs", "wall_s", "train_tokens_per_s")

# The files a run writes atomically; `.NAME.*` beside them are left-overs of a kill.
RECORDS = ("checkpoint.pt", "model.pt", "result.json", "metrics.jsonl")
CHECKPOINT_KEYS = ("config", "epoch", "history", "model", "theta", "sched")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call write(file_object) on a temporary file, then move it into place."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; records are for everyone to read
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) or isinstance(e.__cause__, OSError):  # torch.save wraps OSError
            raise write_error(path, e if isinstance(e, OSError) else e.__cause__) from None
        raise


def write_error(path: str | Path, e: OSError) -> UserError:
    cause = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return UserError(f"cannot write {path}: {cause}")


def remove_partial(run_dir: str | Path) -> None:
    """Delete the temporary files that a kill during a write left behind."""
    for name in RECORDS:
        for tmp in Path(run_dir).glob(f".{name}.*"):
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    atomic_write(path, lambda f: f.write(text.encode()))
    return Path(path)


def finite(obj: Any) -> Any:
    """Non-finite floats become null, so that every JSON reader accepts the records."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")


def write_metrics(run_dir: str | Path, history: list[dict]) -> None:
    lines = "".join(json.dumps(finite(row), allow_nan=False) + "\n" for row in history)
    write_text_atomic(Path(run_dir) / "metrics.jsonl", lines)


def save_checkpoint(run_dir: str | Path, ckpt: dict) -> None:
    import torch  # imported here: validation and --help answer without torch
    atomic_write(Path(run_dir) / "checkpoint.pt", lambda f: torch.save(ckpt, f))


def load_checkpoint(run_dir: str | Path, config: dict) -> Optional[dict]:
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        return None
    ckpt = read_checkpoint(path)
    check_same_config(ckpt["config"], config, path)
    return ckpt


def read_checkpoint(path: str | Path) -> dict:
    ckpt = load_torch(path, "checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing or not isinstance(ckpt["config"], dict):
        raise UserError(f"checkpoint {path} has no {', '.join(missing) or 'config'}; "
                        "delete it to start the run afresh")
    return ckpt


def load_torch(path: str | Path, what: str) -> dict:
    """A torch file that must hold a dict; anything else is one clear line."""
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        cause = (e.strerror if isinstance(e, OSError) else str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise UserError(f"{what} {path} is unreadable ({cause}); delete it to start the run afresh") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path} is not a {what} (a {type(obj).__name__}, not a dict); "
                        "delete it to start the run afresh")
    return obj


def save_model(run_dir: str | Path, state_dict: dict, vocab_size: int, config: dict) -> None:
    """The run's best model as a plain state_dict, with what rebuilds it."""
    import torch
    atomic_write(Path(run_dir) / "model.pt", lambda f: torch.save(
        {"state_dict": state_dict, "vocab_size": vocab_size, "config": config}, f))


def lock_run(run_dir: str | Path) -> filelock.FileLock:
    """Take the run folder's lock (released by the caller), or refuse in one line."""
    import filelock

    lock = filelock.FileLock(Path(run_dir) / ".lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise in_use(run_dir, lock.lock_file) from None
    except OSError as e:
        raise write_error(Path(run_dir) / ".lock", e) from None
    return lock


class InUse(UserError):
    """Another process owns the run folder: nothing of this one is written there."""


def in_use(run_dir: str | Path, lock_file: str | Path) -> UserError:
    return InUse(f"{run_dir} is in use by another run (it holds {lock_file}); wait for that run to end")


def check_unlocked(run_dir: str | Path) -> None:
    """Refuse a folder whose lock another run holds, without writing into it."""
    import fcntl

    path = Path(run_dir) / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)  # no lock file: no run has held the folder
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # filelock's own lock on Unix
    except OSError:
        raise in_use(run_dir, path) from None
    finally:
        os.close(fd)  # closing releases the test lock


def drop_checkpoint(run_dir: str | Path) -> None:
    """A finished run needs no optimizer or mid-run state."""
    (Path(run_dir) / "checkpoint.pt").unlink(missing_ok=True)


def check_same_config(old: dict, new: dict, path: str | Path) -> None:
    diff = schema.differences(finite(old), finite(new))  # as result.json stores them
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise UserError(f"{path} belongs to a run with a different config ({shown}); "
                        "choose another hydra.run.dir or delete that folder")


def read_result(path: str | Path) -> dict:
    """A run's result.json (a JSON object); anything else is one clear line."""
    try:
        result = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise UserError(f"{path} is not a run's result (not JSON: {e}); delete it to run again") from None
    if not isinstance(result, dict) or not isinstance(result.get("config", {}), dict):
        what = f"a JSON {type(result).__name__}" if not isinstance(result, dict) else "its config is no object"
        raise UserError(f"{path} is not a run's result ({what}); delete it to run again")
    return result


def existing_config(run_dir: str | Path) -> Optional[dict]:
    """The config of the run recorded in run_dir (result.json, else checkpoint.pt), or None."""
    run_dir = Path(run_dir)
    if (run_dir / "result.json").exists():
        config = read_result(run_dir / "result.json").get("config")
        if config is not None:
            return config
    if (run_dir / "checkpoint.pt").exists():
        return read_checkpoint(run_dir / "checkpoint.pt")["config"]
    return None


def finished_result(run_dir: str | Path, config: dict) -> Optional[dict]:
    """The run's result if it has already finished with this config, else None."""
    path = Path(run_dir) / "result.json"
    if not path.exists():
        return None
    result = read_result(path)
    check_same_config(result.get("config", {}), config, path)
    if result.get("status") in ("failed", "invalid"):
        # a crash (out of memory, say) is tried again, from its checkpoint; input
        # refused once (a data file missing then) is checked again and run
        return None
    return result


def resolved_config(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


CODE = ("tprop_exp", "hydra_plugins", "pyproject.toml")  # a change here marks a run '+dirty'


def git_commit() -> str:
    """The commit of the code that runs, '+dirty' when that code has local changes.

    Only a git checkout of this project has one: an installed package (even one
    that lies inside some other repository) gives its version instead.
    """
    root = Path(__file__).resolve().parents[2]  # tprop_exp/run/records.py -> the checkout

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        ours = (Path(git("rev-parse", "--show-toplevel")).resolve() == root
                and git("ls-files", "tprop_exp/__init__.py"))
        if ours:
            # only the code that runs counts: a report rewriting results/ between
            # the sweeps of `make all-tables` must not mark the later runs dirty
            dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE)
            return git("rev-parse", "--short=12", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"unknown (installed package {__version__})"


def device_name(device: torch.device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def command(overrides: Sequence[str]) -> str:
    """This run's command as it was typed: `tprop_exp ...` or `python -m tprop_exp ...`
    (the cli names it in TPROP_EXP_COMMAND, which the workers of a launcher inherit)."""
    return " ".join([os.environ.get("TPROP_EXP_COMMAND", "python -m tprop_exp"), *overrides])


# The installed packages whose versions a run records (tprop_exp's dependencies, and the extras' loggers).
PACKAGES = ("numpy", "omegaconf", "hydra-joblib-launcher", "pandas", "matplotlib", "filelock", "tqdm",
            "hydra-optuna-sweeper", "optuna", "hydra-submitit-launcher", "tensorboard", "wandb", "mlflow")


def package_versions() -> dict:
    """{name: version} of the PACKAGES that are installed."""
    from importlib import metadata
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance(device: torch.device, overrides: Sequence[str]) -> dict:
    """Where a run's numbers come from: code, software versions, machine, command."""
    import torch
    return {
        "commit": git_commit(),
        "tprop_exp": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # None for a CPU-only torch
        "cudnn": torch.backends.cudnn.version(),  # None without cuDNN
        "hydra": hydra.__version__,
        "packages": package_versions(),
        "host": platform.node(),
        "device": device_name(device),
        "command": command(overrides),  # this run alone, also in a sweep
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_shared_checkpoint(comm: Comm, run_dir: str | Path, ckpt: dict) -> None:
    """Rank 0 writes; every process's core state and position go in, by rank."""
    states, pos = comm.gather(ckpt["core_state"]), comm.gather(ckpt["pos"])
    if comm.rank == 0:
        save_checkpoint(run_dir, {**ckpt, "core_state": states, "pos": pos, "world": comm.world})


def load_shared_checkpoint(comm: Optional[Comm], run_dir: str | Path, config: dict) -> Optional[dict]:
    """The run's checkpoint (None if there is none). Rank 0 reads it; the
    others get its common part and their own state."""
    world = 1 if comm is None else comm.world
    ckpt, error = None, None
    if comm is None or comm.rank == 0:
        try:
            ckpt = load_checkpoint(run_dir, config)
            if ckpt is not None and ckpt.get("world", 1) != world:
                raise UserError(f"{run_dir} was run by {ckpt.get('world', 1)} processes, "
                                f"not {world}; resume it with as many")
        except UserError as e:
            if comm is None:
                raise
            ckpt, error = None, str(e)
    if comm is None:
        return ckpt
    common = {k: v for k, v in ckpt.items() if k not in ("core_state", "pos")} if ckpt else None
    error, common = comm.broadcast([error, common])
    if error:
        raise UserError(error)
    if common is None:
        return None
    return {**common, "core_state": comm.scatter(ckpt and ckpt["core_state"]),
            "pos": comm.scatter(ckpt and ckpt["pos"])}
