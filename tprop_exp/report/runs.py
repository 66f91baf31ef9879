"""Loading run records for the report: result.json and .hydra/config.yaml of
every run under some folders, and the per-epoch rows of their metrics.jsonl."""

import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from tprop_exp import UserError

# Short names for the config keys that the layouts use.
SHORT = {
    "experiment": "config.name", "profile": "config.profile.name", "dataset": "config.dataset.name",
    "method": "config.method.name", "mode": "config.method.mode", "K": "config.method.block_size",
    "h_steps": "config.method.h_steps", "hidden": "config.arch.hidden_size",
    "batch_size": "config.train.batch_size", "seed": "config.train.seed",
    "rules": "config.rules",  # the variant's label (SPEC §6): textbook, tprnn, only_<rule>
    "h_param": "config.method.h_param", "penalty": "config.method.penalty",
    "h_lr": "config.method.h_lr", "h_optimizer": "config.method.h_optimizer",
    "D": "config.dataset.lag",
    "world": "world",  # result.json: the number of processes that trained the run
}
NUMERIC = ["K", "h_steps", "hidden", "batch_size", "seed", "h_lr", "D", "world"]
# SPEC §7's keys at the values of runs recorded before them (what those runs computed).
ADDED = {"h_param": "free", "penalty": "l2", "world": 1}


def load_runs(dirs):
    """One row per run under `dirs`: result.json fields, `config.*` columns
    (flattened), short key columns (see SHORT), `run_dir`; unfinished runs
    have status "unfinished" and only their .hydra/config.yaml."""
    records, seen = [], set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise UserError(f"report: no such directory: {d}")
        for f in sorted(d.rglob("result.json")):
            if f.parent.resolve() in seen:
                continue
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError) as e:
                print(f"report: skipping unreadable {f}: {e}", file=sys.stderr)
                continue
            seen.add(f.parent.resolve())
            if rec.get("status") == "invalid":  # bad input in a sweep: no run, nothing to tabulate
                print(f"report: skipping {f.parent}: invalid: {rec.get('error')}", file=sys.stderr)
                continue
            records.append({**rec, "run_dir": str(f.parent)})
        for f in sorted(d.rglob("config.yaml")):
            run = f.parent.parent
            if f.parent.name != ".hydra" or run.resolve() in seen or (run / "result.json").exists():
                continue
            seen.add(run.resolve())
            cfg = yaml.safe_load(f.read_text()) or {}
            records.append({"status": "unfinished", "config": cfg, "run_dir": str(run)})
    if not records:
        return pd.DataFrame(columns=["status", "run_dir", *SHORT])
    df = pd.json_normalize(records)
    for c in df.columns:  # lists (e.g. in configs) are unhashable: keep them as text
        if c.startswith("config.") and df[c].map(lambda v: isinstance(v, (list, dict))).any():
            df[c] = df[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    for short, full in SHORT.items():
        df[short] = df[full] if full in df else None
    if "config.profile" in df:  # records written before profile became a config group
        df["profile"] = df["profile"].fillna(df["config.profile"])
    df["profile"] = df["profile"].fillna("none")  # a plain run or sweep: no profile
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["experiment"] = df["experiment"].fillna("unnamed")
    df["rules"] = df["rules"].fillna("textbook")  # records from before the variants
    # BPTT ignores the BTPROP settings: blank them so they neither split nor label cells.
    bptt = df["method"] == "bptt"
    btprop_only = [c for c in df if c.startswith("config.method.")
                   and c.split(".")[-1] not in ("name", "mode", "block_size")]
    for c in btprop_only:  # a bool key (e.g. method.drop_last_block) cannot hold None
        if df[c].dtype == bool:
            df[c] = df[c].astype(object)
    for c, default in ADDED.items():
        df[c] = df[c].fillna(default)
    df.loc[bptt, ["h_steps", *btprop_only, "h_param", "penalty", "h_lr", "h_optimizer"]] = None
    return df


def load_history(run_dirs):
    """The per-epoch rows of each run's metrics.jsonl, one DataFrame with a
    `run_dir` column.  Columns are whatever the runs wrote (a column a run
    lacks is NaN there); unreadable lines and missing files are skipped."""
    rows = []
    for run in run_dirs:
        path = Path(run) / "metrics.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short
            if isinstance(row, dict) and "epoch" in row:
                rows.append({**row, "run_dir": str(run)})
    return pd.DataFrame(rows, columns=None if rows else ["run_dir", "epoch"])


def unique(runs, col):
    """The distinct values of a column, as text ('unknown' when there are none)."""
    values = sorted({str(v) for v in runs[col].dropna()}) if col in runs else []
    return ", ".join(values) or "unknown"


def _ignored(col):
    last = col.split(".")[-1]
    return (col == "config.name" or col.startswith("config.profile.")
            or last in ("seed", "device", "ckpt_interval_s")
            or last.endswith(("dir", "path")))


def varying_keys(runs):
    """Config columns (besides seed, device, paths) whose value differs between runs.

    Missing values do not count: a BTPROP key that BPTT runs lack varies only
    if it differs between the runs that have it.
    """
    cols = [c for c in runs if c.startswith("config.") and not _ignored(c)]
    return [c for c in cols if runs[c].dropna().map(str).nunique() > 1]


def pooled_keys(runs, keys):
    """Varying config columns that differ inside one cell, i.e. get averaged together."""
    full = {SHORT.get(k, k) for k in keys}
    groups = [runs[k].map(str) for k in keys]  # map(str): NaN becomes "nan", a group of its own
    return [c for c in varying_keys(runs) if c not in full
            and runs[c].map(str).groupby(groups).nunique().gt(1).any()]
