"""A battery of bad inputs and faults through the real command line (issue 23).

Every case runs `python -m tprop_exp ...` in a fresh folder and checks the run
contract (README "Run folders, resuming, failures"):

- bad input: exit status 2, one line on stderr (`tprop_exp: error: ...`)
  naming the key or file, the value and the cause, no traceback, and nothing
  written: the case's folder holds exactly what it held before;
- faults (signals, a full disk, duplicate sweep cells, a folder in use):
  one line, the stated exit status, no half-written folder, records that
  agree with what the sweep's summary says.

    python scripts/battery.py [-k WORD] [--list]     (make battery)

Prints one line per case and `battery: N/N pass`; exits 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
TINY = ["arch.hidden_size=8", "train.train_tokens=2000", "train.max_epochs=1", "train.eval_batch_size=4",
        "dataset=sample_chars"]
LONG = ["arch.hidden_size=8", "train.train_tokens=20000", "train.max_epochs=50", "train.eval_batch_size=4",
        "dataset=sample_chars", "train.patience=50"]
DATA = Path(tempfile.gettempdir()) / "tprop_battery_data"  # shared cache: the sample is built once


def env(**extra: str) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TPROP_EXP_DATA=str(DATA), **extra)
    e.pop("HYDRA_FULL_ERROR", None)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return e


def cli(args: list[str], cwd: Path, timeout: float = 300, prefix: Optional[list[str]] = None):
    cmd = prefix or [sys.executable, "-m", "tprop_exp"]
    return subprocess.run([*cmd, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size if p.is_file() else -1)
            for p in sorted(d.rglob("*")) if not p.is_symlink()}


def lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


class Fail(Exception):
    pass


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise Fail(what)


def one_line(p, words: tuple[str, ...], status: int = 2) -> str:
    err = lines(p.stderr)
    expect(p.returncode == status, f"exit {p.returncode}, not {status}: {p.stderr[-600:]}")
    expect("Traceback" not in p.stderr, f"a traceback: {p.stderr[-600:]}")
    expect(len(err) == 1, f"{len(err)} stderr lines: {err[:4]}")
    expect(err[0].startswith("tprop_exp: "), f"not our line: {err[0]}")
    for w in words:
        expect(w in err[0], f"{w!r} not in: {err[0]}")
    return err[0]


@dataclass
class Case:
    cls: str
    name: str
    run: Callable[[Path], Optional[str]]  # raises Fail; returns a note (the line)


CASES: list[Case] = []


def refused(cls: str, name: str, args, words: tuple[str, ...] = (), setup: Optional[Callable] = None,
            base: Optional[list] = None, no: tuple[str, ...] = ()) -> None:
    """A bad input: one line naming `words`, exit 2, the folder unchanged."""
    def run(tmp: Path) -> str:
        extra = setup(tmp) if setup else []
        argv = args(tmp) if callable(args) else list(args)  # files made here are the case's input
        before = snapshot(tmp)
        p = cli((TINY if base is None else base) + extra + argv, tmp)
        line = one_line(p, words)
        for w in no:
            expect(w not in line, f"{w!r} should not be in: {line}")
        expect(snapshot(tmp) == before, f"written: {set(snapshot(tmp)) - set(before)}")
        return line
    CASES.append(Case(cls, name, run))


# ------------------------------------------------------------------ files

def local_files(tmp: Path, train: bytes = b"a b c\nd e f\n" * 50, valid: bytes = b"a b c d\n" * 20,
                test: bytes = b"c d e f\n" * 20) -> dict:
    d = tmp / "data"
    d.mkdir(exist_ok=True)
    out = {}
    for split, content in (("train", train), ("valid", valid), ("test", test)):
        (d / f"{split}.txt").write_bytes(content)
        out[split] = d / f"{split}.txt"
    return out


def local(tmp: Path, **replace) -> list[str]:
    files = {k: str(v) for k, v in local_files(tmp).items()}
    files.update({k: str(v) for k, v in replace.items()})
    return ["dataset=local", "train.batch_size=2", "method.block_size=5"] + [f"dataset.{s}={p}" for s, p in files.items()]


LOCAL_BASE = ["arch.hidden_size=8", "train.max_epochs=1", "train.eval_batch_size=2"]


def with_file(make: Callable[[Path], Path], split: str = "valid") -> Callable:
    return lambda tmp: local(tmp, **{split: make(tmp)})


def loop(tmp: Path) -> Path:
    (tmp / "loop").symlink_to(tmp / "loop")
    return tmp / "loop"


def dangling(tmp: Path) -> Path:
    (tmp / "dangling").symlink_to(tmp / "nowhere.txt")
    return tmp / "dangling"


def write(name: str, content: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(content)
        return tmp / name
    return make


# ------------------------------------------------------------- item 2: the machine

def define_machine() -> None:
    import torch
    has_cuda = torch.cuda.is_available()
    n = torch.cuda.device_count() if has_cuda else 0
    refused("machine", "device mps not present", ["train.device=mps"], ("train.device", "mps"))
    if not has_cuda:
        refused("machine", "device cuda not present", ["train.device=cuda"], ("train.device", "'cuda'", "no CUDA"))
    refused("machine", "device cuda:N beyond the GPUs", [f"train.device=cuda:{n + 7}"], ("train.device", f"cuda:{n + 7}"))
    if not has_cuda:
        refused("machine", "fp16 on a CPU (LSTM kernel)", ["train.precision=fp16"],
                ("train.precision", "fp16", "cpu", "LSTM"))
        refused("machine", "fp16 on a CPU, 2 layers", ["train.precision=fp16", "arch.num_layers=2"],
                ("train.precision", "fp16"))
        refused("machine", "fp16 on a CPU, BTPROP batch", ["train.precision=fp16", "method=admm", "method.mode=batch"],
                ("train.precision", "fp16"))
        refused("machine", "fp16 on an explicit cpu", ["train.precision=fp16", "train.device=cpu"],
                ("train.precision", "fp16"))
    refused("machine", "seed -1", ["train.seed=-1"], ("train.seed", "-1", "2**64"))
    refused("machine", "seed 2**64", [f"train.seed={2 ** 64}"], ("train.seed", str(2 ** 64)))
    refused("machine", "seed of 20 digits", ["train.seed=99999999999999999999"], ("train.seed",))
    refused("machine", "hidden size 1e9: memory", ["arch.hidden_size=1000000000"],
            ("arch.hidden_size", "1000000000", "bytes", "available"))
    refused("machine", "hidden size 300000: memory", ["arch.hidden_size=300000"], ("arch.hidden_size", "bytes"))
    refused("machine", "deep and wide: memory", ["arch.hidden_size=20000", "arch.num_layers=400", "train.optimizer=adam"],
            ("arch.hidden_size", "bytes"))
    refused("machine", "GRU 1e6 wide: memory", ["arch=gru", "arch.hidden_size=1000000"], ("arch.hidden_size",))
    refused("machine", "batch-mode ALM 1e6 wide: memory", ["method=alm", "method.mode=batch", "arch.hidden_size=1000000"],
            ("arch.hidden_size",))
    CASES.append(Case("machine", "checkpoint that does not fit the model", checkpoint_mismatch))


def finished_run(tmp: Path, extra: tuple = ()) -> tuple[Path, list[str]]:
    run = tmp / "run"
    args = TINY + list(extra) + [f"hydra.run.dir={run}"]
    p = cli(args, tmp)
    expect(p.returncode == 0, f"the setup run failed: {p.stderr[-600:]}")
    return run, args


def checkpoint_mismatch(tmp: Path) -> str:
    import torch
    run, args = finished_run(tmp)
    result = json.loads((run / "result.json").read_text())
    model = torch.load(run / "model.pt", weights_only=False)["state_dict"]
    model["decoder.weight"] = torch.zeros(3, 3)  # another vocabulary, say
    torch.save({"config": result["config"], "epoch": 0, "history": [], "model": model, "theta": {}, "sched": {}},
               run / "checkpoint.pt")
    (run / "result.json").unlink()
    (run / "model.pt").unlink()
    before = snapshot(run)
    line = one_line(cli(args, tmp), ("checkpoint.pt", "does not fit", "delete it"))
    after = snapshot(run)
    expect("checkpoint.pt" in after and "result.json" not in after, "the checkpoint was replaced or a result written")
    expect({k for k in after if not k.startswith(".hydra") and not k.endswith(".log")}
           == {k for k in before if not k.startswith(".hydra") and not k.endswith(".log")}, "records written")
    return line


# ------------------------------------------------------------- item 3: group keys

def define_keys() -> None:
    refused("keys", "dataset.tokens=bytes", ["dataset.tokens=bytes"], ("dataset.tokens", "bytes"))
    refused("keys", "dataset.train on the sample", ["dataset.train=/tmp/x.txt"], ("dataset.train", "not read"))
    refused("keys", "dataset.member on the sample", ["dataset.member=foo"], ("dataset.member",))
    refused("keys", "dataset.urls on the sample", ["dataset.urls=[http://x]"], ("dataset.urls",))
    refused("keys", "dataset.train_frac on local", lambda t: local(t) + ["dataset.train_frac=0.5"],
            ("dataset.train_frac",), base=LOCAL_BASE)
    refused("keys", "dataset.foo", ["dataset.foo=1"], ("dataset.foo",))
    refused("keys", "+dataset.foo", ["+dataset.foo=1"], ("dataset.foo",))
    refused("keys", "dataset.source=ftp", ["dataset.source=ftp"], ("dataset.source", "ftp"))
    refused("keys", "dataset.eos=maybe", ["dataset.eos=maybe"], ("dataset.eos", "maybe"))
    refused("keys", "logger.foo", ["logger.foo=1"], ("logger.foo",))
    refused("keys", "+logger.foo", ["+logger.foo=1"], ("logger.foo",))
    refused("keys", "profile.foo (profile null)", ["profile.foo=1"], ("profile.foo", "profile=NAME"))
    refused("keys", "+profile.foo (profile null)", ["+profile.foo=1"], ("profile",))
    refused("keys", "row.foo (row null)", ["row.foo=1"], ("row.foo",))
    refused("keys", "profile=sample profile.foo", ["profile=sample", "profile.foo=1"], ("profile.foo",))
    refused("keys", "arch.foo", ["arch.foo=1"], ("arch.foo",))
    refused("keys", "+arch.foo", ["+arch.foo=1"], ("arch.foo",))
    refused("keys", "method.foo", ["method.foo=1"], ("method.foo",))
    refused("keys", "+method.foo", ["+method.foo=1"], ("method.foo",))
    refused("keys", "method=admm method.nope", ["method=admm", "method.nope=2"], ("method.nope",))
    refused("keys", "train.foo", ["train.foo=1"], ("train.foo",))
    refused("keys", "hydra.foo", ["hydra.foo=1"], ("hydra.foo",))


# ------------------------------------------------------------- item 4: flags

def define_flags() -> None:
    refused("flags", "--foo", ["--foo"], ("--foo", "unknown flag"))
    refused("flags", "-x", ["-x"], ("-x",))
    refused("flags", "--cfgg job", ["--cfgg", "job"], ("--cfgg",))
    refused("flags", "--config-dir after the overrides", lambda t: ["--config-dir", str(t), "train.lr=2"],
            ("--config-dir", "after the overrides"))
    refused("flags", "-m between the overrides", ["-m", "train.lr=2"], ("-m", "after the overrides"))
    refused("flags", "--config-dir with no value", ["--config-dir"], ("--config-dir", "needs a value"))
    refused("flags", "--config-dir taking an override", ["--config-dir", "train.lr=2"], ("--config-dir", "needs a value"),
            base=[])
    refused("flags", "--info bogus", ["--info", "bogus"], ("--info", "bogus"), base=[])
    refused("flags", "--cfg bogus", ["--cfg", "bogus"], ("--cfg", "bogus"), base=[])
    refused("flags", "--config-name nope", ["--config-name", "nope"], ("nope",), base=[])


# ------------------------------------------------------------- item 5: messages

def define_messages() -> None:
    def file_case(name, make, words, split="valid", no=()):
        refused("messages", name, with_file(make, split), words, base=LOCAL_BASE, no=no)
    file_case("unreadable /proc/self/mem", lambda t: Path("/proc/self/mem"),
              ("dataset.valid", "/proc/self/mem", "cannot read"), no=("data_dir",))
    file_case("symlink loop", loop, ("dataset.valid", "symbolic links"), no=("no such file",))
    file_case("dangling symlink", dangling, ("dataset.valid", "no such file"))
    file_case("only newlines (words)", write("nl.txt", b"\n\n\n\n"), ("dataset.train", "no symbols"), split="train",
              no=("''",))
    file_case("only spaces (words)", write("sp.txt", b"   \n \t \n"), ("dataset.train", "no symbols"), split="train")
    refused("messages", "one symbol", lambda t: local(t, **{s: write(f"one{s}.txt", b"a a a a\n" * 10)(t)
                                                            for s in ("train", "valid", "test")})
            + ["dataset.eos=false"], ("dataset.train", "one distinct symbol", "'a'"), base=LOCAL_BASE)
    file_case("a folder as a file", lambda t: t, ("dataset.valid", "not a file"))
    file_case("empty file", write("empty.txt", b""), ("dataset.test", "empty"), split="test")
    file_case("missing file", lambda t: t / "nope.txt", ("dataset.train", "no such file"), split="train")
    refused("messages", "~train.lr", ["~train.lr"], ("~train.lr", "cannot be removed"), no=("Error merging",))
    refused("messages", "~arch.hidden_size", ["~arch.hidden_size"], ("arch.hidden_size", "cannot be removed"))
    refused("messages", "dataset.path missing folder", lambda t: ["dataset=local", f"dataset.path={t / 'nope'}"],
            ("dataset.path", "no such file"), base=LOCAL_BASE)
    CASES.append(Case("messages", "a non-empty /proc file is not called empty", proc_not_empty))


def proc_not_empty(tmp: Path) -> str:
    p = cli(LOCAL_BASE + local(tmp, valid="/proc/version") + [f"hydra.run.dir={tmp / 'run'}"], tmp)
    expect("empty" not in p.stderr, f"called empty: {p.stderr[-400:]}")
    expect(p.returncode in (0, 2) and "Traceback" not in p.stderr, f"exit {p.returncode}: {p.stderr[-400:]}")
    return f"exit {p.returncode}"


# ------------------------------------------------------------- item 6: signals and disk

def signal_at(delay: float, signum: int = signal.SIGTERM) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        run_dir = tmp / "run"
        proc = subprocess.Popen([sys.executable, "-m", "tprop_exp", *LONG, f"hydra.run.dir={run_dir}"], cwd=tmp,
                                env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=300)
        name = signal.Signals(signum).name
        expect(proc.returncode == 128 + signum, f"exit {proc.returncode}: {err[-600:]}")
        expect("Traceback" not in err, f"a traceback: {err[-600:]}")
        err_lines = lines(err)
        expect(len(err_lines) == 1 and f"stopped by {name}" in err_lines[0], f"stderr: {err_lines[:4]}")
        if run_dir.exists():  # kept only if it resumes: a checkpoint in it
            names = {p.name for p in run_dir.iterdir()}
            expect("checkpoint.pt" in names, f"a half-made folder: {sorted(names)}")
        return err_lines[0]
    return run


def sigterm_in_training(tmp: Path) -> str:
    run_dir = tmp / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tprop_exp", *LONG, f"hydra.run.dir={run_dir}"], cwd=tmp,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "INFO epoch 1/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    expect(proc.returncode == 143, f"exit {proc.returncode}: {err[-600:]}")
    err_lines = lines(err)
    expect(len(err_lines) == 1 and "checkpoint saved, the run resumes" in err_lines[0], f"stderr: {err_lines[:4]}")
    expect((run_dir / "checkpoint.pt").is_file(), "no checkpoint")
    return err_lines[0]


def enospc_in_hydra(tmp: Path) -> str:
    """Hydra's own .hydra/config.yaml write hits a full disk (simulated in the process)."""
    code = ("import errno, sys, hydra.core.utils as u\n"
            "def full(cfg, filename, output_dir):\n"
            "    output_dir.mkdir(parents=True, exist_ok=True)\n"
            "    (output_dir / filename).write_text('')\n"  # as a full disk leaves it: 0 bytes
            "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "u._save_config = full\n"
            "sys.argv = ['tprop_exp', *sys.argv[1:]]\n"
            "from tprop_exp.cli import cli\ncli()\n")
    p = cli(TINY, tmp, prefix=[sys.executable, "-c", code])
    line = one_line(p, ("disk is full",))
    expect(not (tmp / "runs").exists(), f"left: {list(tmp.rglob('*'))[:5]}")
    return line


def enospc_tmpfs(tmp: Path) -> str:
    """A real full disk: a 64 KiB tmpfs (needs root; otherwise this case is skipped)."""
    mnt = tmp / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        return "skipped (cannot mount a tmpfs here)"
    try:
        (mnt / "fill").write_bytes(b"\0" * (56 << 10))
        before = snapshot(mnt)
        line = one_line(cli(TINY + [f"hydra.run.dir={mnt / 'run'}"], tmp), ("disk is full",))
        expect(snapshot(mnt) == before, f"left: {set(snapshot(mnt)) - set(before)}")
        return line
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def define_faults() -> None:
    CASES.append(Case("faults", "SIGTERM at 0.3 s (loading)", signal_at(0.3)))
    CASES.append(Case("faults", "SIGTERM at 1.5 s", signal_at(1.5)))
    CASES.append(Case("faults", "SIGTERM at 4 s", signal_at(4.0)))
    CASES.append(Case("faults", "SIGINT at 2 s", signal_at(2.0, signal.SIGINT)))
    CASES.append(Case("faults", "SIGTERM in training: notice on stderr", sigterm_in_training))
    CASES.append(Case("faults", "ENOSPC in Hydra's config write", enospc_in_hydra))
    CASES.append(Case("faults", "a full tmpfs as the run folder", enospc_tmpfs))


# ------------------------------------------------------------- item 1: sweeps

def sweep_duplicates(launcher: list[str], key: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        sweep = tmp / "sweep"
        p = cli(["-m", *TINY, f"{key}", *launcher, f"hydra.sweep.dir={sweep}"], tmp, timeout=600)
        expect(p.returncode == 0, f"exit {p.returncode}: {p.stderr[-800:]}")
        summary = [x for x in p.stdout.splitlines() if x.startswith("sweep: ")]
        expect(len(summary) == 1 and summary[0].startswith("sweep: 1 completed / 0 diverged / 0 failed / 0 invalid")
               and "1 duplicate" in summary[0], f"summary: {summary}")
        results = [json.loads(f.read_text())["status"] for f in sweep.rglob("result.json")]
        expect(results == ["completed"], f"records: {results}")
        return summary[0]
    return run


def invalid_record_is_retried(tmp: Path) -> str:
    run, args = finished_run(tmp)
    result = json.loads((run / "result.json").read_text())
    result["status"] = "invalid"
    (run / "result.json").write_text(json.dumps(result))
    (run / "model.pt").unlink()
    p = cli(args, tmp)
    expect(p.returncode == 0, f"exit {p.returncode}: {p.stderr[-600:]}")
    expect("nothing to do" not in p.stdout, "still 'already invalid; nothing to do'")
    expect(json.loads((run / "result.json").read_text())["status"] == "completed", "not completed")
    return "trained again: completed"


def folder_in_use(tmp: Path) -> str:
    """A sweep cell whose folder another process holds: nothing written into it, the summary says so."""
    import filelock
    sweep = tmp / "sweep"
    p = cli(["-m", *TINY, "train.lr=1", f"hydra.sweep.dir={sweep}"], tmp)  # the run, then its folder is held
    expect(p.returncode == 0, f"setup: {p.stderr[-400:]}")
    run = next(sweep.glob("bptt-*"))
    (run / "result.json").unlink()
    lock = filelock.FileLock(run / ".lock")
    lock.acquire()
    try:
        before = snapshot(run)
        p = cli(["-m", *TINY, "train.lr=1", f"hydra.sweep.dir={sweep}"], tmp)
    finally:
        lock.release()
    expect(p.returncode == 1, f"exit {p.returncode}: {p.stderr[-400:]}")
    expect(snapshot(run) == before, "written into the held folder")
    summary = [x for x in p.stdout.splitlines() if x.startswith("sweep: ")]
    invalid = [json.loads(f.read_text()) for f in sweep.glob("invalid-*/result.json")]
    expect(summary and ("1 invalid" in summary[0] and len(invalid) == 1 and "in use" in invalid[0]["error"]
                        or "in use by another process" in summary[0]), f"summary {summary}, records {invalid}")
    return summary[0]


def define_sweeps() -> None:
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    CASES.append(Case("sweeps", "joblib: cells differing in train.threads", sweep_duplicates(joblib, "train.threads=1,2")))
    CASES.append(Case("sweeps", "basic: cells differing in log_interval_s",
                      sweep_duplicates([], "train.log_interval_s=10,20")))
    CASES.append(Case("sweeps", "an `invalid` record is checked again and run", invalid_record_is_retried))
    CASES.append(Case("sweeps", "a sweep cell whose folder is in use", folder_in_use))


# ------------------------------------------------------------- items 7, 8 (in this process)

def alm_fp16_overflow(tmp: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_contract import alm_after_overflow
    H, theta_moved, H0 = alm_after_overflow(scale=2.0 ** 100)
    expect(bool(H.isfinite().all()) and not theta_moved and bool((H == H0).all()),
           "H non-finite, or θ or H moved after an overflow")
    return "H finite, θ and H unchanged"


def eval_mode(tmp: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_contract import modes_during_evaluation
    modes = modes_during_evaluation()
    expect(modes == {False}, f"forward passes in training mode: {modes}")
    return "eval() in every evaluation forward"


def define_numeric() -> None:
    CASES.append(Case("fp16", "ALM: an overflow skips θ's and H's step", alm_fp16_overflow))
    CASES.append(Case("eval", "evaluation runs in eval() mode", eval_mode))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only the cases whose class or name holds one of these (comma-separated)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()
    for define in (define_machine, define_keys, define_flags, define_messages, define_faults, define_sweeps,
                   define_numeric):
        define()
    words = [w.strip().lower() for w in args.k.split(",")]
    cases = [c for c in CASES if any(w in f"{c.cls} {c.name}".lower() for w in words)]
    if args.list:
        for c in cases:
            print(f"{c.cls:9} {c.name}")
        print(f"{len(cases)} cases")
        return 0
    DATA.mkdir(exist_ok=True)
    passed = 0
    for i, c in enumerate(cases, 1):
        tmp = Path(tempfile.mkdtemp(prefix="battery-"))
        t0 = time.perf_counter()
        try:
            note, ok = c.run(tmp), True
        except Fail as e:
            note, ok = str(e), False
        except Exception as e:  # noqa: BLE001 (a broken case is a failure, not the end)
            note, ok = f"{type(e).__name__}: {e}", False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        passed += ok
        print(f"[{i:2}/{len(cases)}] {'pass' if ok else 'FAIL'}  {c.cls:9} {c.name}  ({time.perf_counter() - t0:.1f} s)"
              f"\n           {note}", flush=True)
    print(f"battery: {passed}/{len(cases)} pass")
    return 0 if passed == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
