"""Turn run records into the paper's tables, its figure and the claim verdicts.

    python -m tprop_exp.report DIR [DIR ...] [--out OUTDIR] [--table NAME]

Every run under the DIRs is loaded into one DataFrame: a folder holding
`result.json` (found recursively) is a finished run; a folder with
`.hydra/config.yaml` but no `result.json` is unfinished, counted in the
provenance and never tabulated.  Runs are grouped by profile and experiment
(`config.name`, or NAME for every run with --table NAME), and each experiment
writes, atomically:

    OUTDIR/<name>.csv   tidy: one row per table cell (a configuration averaged
                        over seeds): the cell's keys (dataset, mode, K, method,
                        h_steps, hidden, batch_size as the layout needs; for
                        other experiments the config keys that vary), its
                        `label`, then `<m>_mean`, `<m>_std` (ddof=1), `<m>_n`
                        for m in valid (best_valid_ppl), test, train,
                        epochs_mean, tokens_per_s_mean, n_runs, n_completed,
                        n_diverged, n_failed, seeds.  `pd.read_csv` it and
                        pivot as you like.
    OUTDIR/<name>.md    title, what the table shows, provenance, the table(s)
    OUTDIR/figure_hidden.png   for the figure_hidden experiment

OUTDIR defaults to `results` for profile `sample` and `results/<profile>`
otherwise; given --out with runs of several profiles, each goes to OUT/<profile>.
Means are over completed runs only; diverged and failed runs are counted and
marked in the markdown.

`OUTDIR/claims.md` is rebuilt after the tables from the CSVs of the five known
tables that are in OUTDIR at that moment (see `tprop_exp.claims`).  So
reporting all sweeps at once (`sweeps/*/sample`) and reporting them one at a
time give the same claims: each table's newest CSV counts, whichever command
wrote it.  Delete a table's CSV to drop it from the claims.  An OUTDIR with
none of those CSVs (e.g. only the demo) gets no claims.md.
"""

import argparse
import io
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from tprop_exp import UserError  # noqa: E402
from tprop_exp.claims import CLAIM_TABLES, claims_markdown, evaluate_claims, fmt_stat  # noqa: E402

METRICS = {"valid": "best_valid_ppl", "test": "test_ppl", "train": "train_ppl"}

# Short names for the config keys that the layouts use.
SHORT = {
    "experiment": "config.name", "profile": "config.profile.name", "dataset": "config.dataset.name",
    "method": "config.method.name", "mode": "config.method.mode", "K": "config.method.block_size",
    "h_steps": "config.method.h_steps", "hidden": "config.arch.hidden_size",
    "batch_size": "config.train.batch_size", "seed": "config.train.seed",
}
NUMERIC = ["K", "h_steps", "hidden", "batch_size", "seed"]

# The cell keys of each known layout.
KEYS = {
    "table1_main": ["dataset", "mode", "K", "method", "h_steps"],
    "table2_regularization": ["dataset", "K", "method", "h_steps"],
    "table3_minibatch": ["dataset", "batch_size"],
    "figure_hidden": ["dataset", "hidden", "method", "h_steps"],
    "methods": ["dataset", "mode", "K", "method", "h_steps"],
}

ABOUT = {
    "table1_main": (
        "Table 1: main results",
        "BTPROP against BPTT for several block sizes K and several numbers of h-steps n_h. "
        "Columns: batch (full-batch) training, then mini-batch training, each for every K; "
        "rows: BPTT, then BTPROP with each h-step count."),
    "table2_regularization": (
        "Table 2: where the mini-batch gains come from",
        "Mini-batch BTPROP with h-steps, against no h-optimisation (n_h=0: the penalty acts "
        "only as a regulariser on block-final states), and against BPTT. Columns: K."),
    "table3_minibatch": (
        "Appendix table: mini-batch size",
        "BPTT with growing mini-batch size (rows); train and test perplexity, and validation "
        "perplexity, for each dataset (the paper: Wiki-large at word level and text8 at "
        "character level, one-layer LSTM)."),
    "figure_hidden": (
        "Figure: hidden size",
        "Validation perplexity of BTPROP and BPTT as the hidden size grows (rows: hidden size; "
        "plotted in figure_hidden.png)."),
    "methods": (
        "Methods: ADMM, ALM and penalty",
        "ADMM, ALM and the penalty method side by side, with BPTT as reference. Columns: K."),
}
GENERIC = ("Runs of experiment `{name}`",
           "One row per distinct configuration (only the config keys that vary are shown), "
           "averaged over seeds.")
CELLS = ("Cells: perplexity, mean ± std over seeds (number of seeds; just the mean for a "
         "single seed), validation perplexity unless the column says otherwise.")
FOOTNOTES = {"†": "† some seeds diverged; they are left out of the mean (see n_diverged in the CSV).",
             "‡": "‡ some seeds failed; they are left out of the mean (see n_failed in the CSV)."}


# ---------------------------------------------------------------- loading

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
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["experiment"] = df["experiment"].fillna("unnamed")
    # BPTT ignores the BTPROP settings: blank them so they neither split nor label cells.
    bptt = df["method"] == "bptt"
    btprop_only = [c for c in df if c.startswith("config.method.")
                   and c.split(".")[-1] not in ("name", "mode", "block_size")]
    df.loc[bptt, ["h_steps", *btprop_only]] = None
    return df


def _ignored(col):
    last = col.split(".")[-1]
    return (col == "config.name" or col.startswith("config.profile.") or last in ("seed", "device", "ckpt_interval_s")
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


# ---------------------------------------------------------------- tables

def select(runs, name):
    """The runs a layout uses, and a note on those it leaves out."""
    if name == "table2_regularization":
        keep = runs["mode"] == "minibatch"
        why = "not mini-batch mode"
    elif name == "table3_minibatch":
        keep = runs["method"] == "bptt"
        why = "not BPTT"
    else:
        return runs, ""
    left = (~keep & (runs["status"] != "unfinished")).sum()
    return runs[keep], (f"{left} run(s) left out of this layout ({why})." if left else "")


def _label(row, name, several_methods, several_h):
    """Row label of a method row: BPTT, or BTPROP with its h-step count (and
    its method when the table has several)."""
    if row["method"] == "bptt":
        return "BPTT (reference)" if name == "methods" else "BPTT"
    h = None if pd.isna(row["h_steps"]) else int(row["h_steps"])
    if name == "methods":
        return row["method"] + (f" (n_h={h})" if several_h.get(row["method"], 0) > 1 else "")
    m = f" {row['method']}" if several_methods else ""
    if name == "table2_regularization":
        return f"BTPROP{m} n_h=0 (penalty only)" if h == 0 else f"BTPROP{m} n_h={h}"
    return f"BTPROP{m} (n_h={h})"


def _row_order(s, name):
    """Sort key of method rows: BPTT first, then by n_h (in `methods`: by
    method, ADMM first and BPTT last)."""
    h = s["h_steps"].fillna(-1)
    if name == "methods":
        rank = {"admm": 0, "alm": 1, "penalty": 2, "bptt": 9}
        return list(zip(s["method"].map(lambda m: rank.get(m, 3)), s["method"], h))
    return list(zip(s["method"] != "bptt", h, s["method"]))


def summarise(runs, name):
    """Tidy per-cell statistics of the finished runs (what the CSV holds)."""
    runs = runs[runs["status"] != "unfinished"]
    keys = KEYS.get(name) or varying_keys(runs) or ["experiment"]
    rows = []
    for key, g in runs.groupby(keys, dropna=False, sort=False):
        ok = g[g["status"] == "completed"]
        row = dict(zip(keys, key))
        for m, col in METRICS.items():
            x = pd.to_numeric(ok[col], errors="coerce").dropna() if col in ok else pd.Series(dtype=float)
            row.update({f"{m}_mean": x.mean(), f"{m}_std": x.std(), f"{m}_n": len(x)})
        row.update(
            epochs_mean=pd.to_numeric(ok.get("epochs"), errors="coerce").mean(),
            tokens_per_s_mean=pd.to_numeric(ok.get("train_tokens_per_s"), errors="coerce").mean(),
            n_runs=len(g), n_completed=len(ok), n_diverged=int((g["status"] == "diverged").sum()),
            n_failed=int((g["status"] == "failed").sum()),
            seeds=" ".join(str(int(seed)) for seed in sorted(g["seed"].dropna().unique())))
        rows.append(row)
    s = pd.DataFrame(rows)
    for c in set(keys) & set(NUMERIC):  # keep integer keys integer (K=10, not 10.0)
        if (s[c].dropna() % 1 == 0).all():
            s[c] = s[c].astype("Int64")
    if "method" in keys and not s.empty:
        bt = s[s["method"] != "bptt"]
        several_h = bt.groupby("method")["h_steps"].nunique()
        # Name the method when there are several (table 2's n_h=0 row says "penalty only").
        penalty_only = (name == "table2_regularization") & bt["h_steps"].eq(0).fillna(False)
        plain = bt[~penalty_only.astype(bool)]
        labels = [_label(r, name, plain["method"].nunique() > 1, several_h) for _, r in s.iterrows()]
        s.insert(len(keys), "label", labels)
        if s.duplicated(["dataset", "label", *[k for k in keys if k not in ("method", "h_steps")]]).any():
            s["label"] = [_label(r, name, True, several_h) for _, r in s.iterrows()]
        rest = [k for k in keys if k not in ("dataset", "method", "h_steps")]
        s = s.assign(_order=_row_order(s, name)).sort_values(["dataset", "_order", *rest])
        s = s.drop(columns="_order")
    return s.reset_index(drop=True)


def _cell(row, metric="valid"):
    n = row[f"{metric}_n"]
    if n == 0 and (row["n_diverged"] or row["n_failed"]):
        return "/".join(w for w, k in (("diverged", "n_diverged"), ("failed", "n_failed")) if row[k])
    text = fmt_stat(row[f"{metric}_mean"], row[f"{metric}_std"], n)
    return text + (" †" if row["n_diverged"] else "") + (" ‡" if row["n_failed"] else "")


def _pivot(s, index, columns):
    order = list(dict.fromkeys(s[index]))  # s is already in row order
    t = s.pivot(index=index, columns=columns, values="cell").reindex(order).sort_index(axis=1)
    return t.rename_axis(index="method").fillna("–")


def make_table(summary, name):
    """Formatted tables {heading: DataFrame} in the layout of `name`."""
    s = summary.copy()
    if name not in KEYS:
        return {"": _generic(s)}
    s["cell"] = s.apply(_cell, axis=1)
    if name == "table3_minibatch":
        metrics = [("train", "train ppl"), ("test", "test ppl"), ("valid", "valid ppl")]
        long = pd.concat([s.assign(metric=label, cell=s.apply(_cell, axis=1, metric=m))
                          for m, label in metrics])
        t = long.pivot(index="batch_size", columns=["dataset", "metric"], values="cell")
        t = t.reindex(columns=pd.MultiIndex.from_product(
            [sorted(s["dataset"].unique()), [label for _, label in metrics]], names=["dataset", "metric"]))
        return {"": t.sort_index().fillna("–")}
    if name == "figure_hidden":
        t = s.pivot(index="hidden", columns=["dataset", "label"], values="cell").sort_index()
        order = [(d, lab) for d in sorted(s["dataset"].unique()) for lab in dict.fromkeys(s["label"])
                 if (d, lab) in t.columns]
        return {"": t.reindex(columns=pd.MultiIndex.from_tuples(order, names=t.columns.names)).fillna("–")}
    columns = ["mode", "K"]  # table1_main, and methods when both modes were run
    if name == "table2_regularization" or (name == "methods" and s["mode"].nunique() == 1):
        columns = "K"
    return {d: _pivot(g, "label", columns) for d, g in s.groupby("dataset", sort=True)}


def _generic(s):
    keys = [c for c in s if c.startswith("config.")]
    t = s[keys].rename(columns=lambda c: c.removeprefix("config."))
    for m in METRICS:
        t[f"{m} ppl"] = s.apply(_cell, axis=1, metric=m)
    t["epochs"] = s["epochs_mean"].map(lambda x: "–" if pd.isna(x) else f"{x:g}")
    t["tokens/s"] = s["tokens_per_s_mean"].map(lambda x: "–" if pd.isna(x) else f"{x:,.0f}")
    t["status"] = [", ".join(f"{r[k]} {w}" for w, k in (("completed", "n_completed"),
                   ("diverged", "n_diverged"), ("failed", "n_failed")) if r[k]) for _, r in s.iterrows()]
    return t


def to_markdown(t):
    """Markdown of a table, with MultiIndex columns flattened to 'batch K=10'."""
    def name(level, v):
        return f"K={v}" if level == "K" else f"hidden={v}" if level == "hidden" else str(v)
    t = t.copy()
    cols = t.columns if isinstance(t.columns, pd.MultiIndex) else [(c,) for c in t.columns]
    levels = t.columns.names
    t.columns = [" ".join(name(lv, v) for lv, v in zip(levels, c)) for c in cols]
    return t.to_markdown(disable_numparse=True, index=bool(t.index.name))


# ---------------------------------------------------------------- writing

def write_atomic(path, data):
    """Write text or bytes to a temporary file beside `path`, then rename it:
    a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


def _unique(runs, col):
    """The distinct values of a column, as text ('unknown' when there are none)."""
    values = sorted({str(v) for v in runs[col].dropna()}) if col in runs else []
    return ", ".join(values) or "unknown"


def _common_dir(paths):
    common = os.path.commonpath([os.path.abspath(p) for p in paths])
    rel = os.path.relpath(common)
    return common if rel.startswith("..") else rel


def provenance(runs, command):
    """Markdown bullet list: where the numbers come from."""
    done = runs[runs["status"] != "unfinished"]
    counts = done["status"].value_counts()
    status = ", ".join(f"{counts[k]} {k}" for k in ("completed", "diverged", "failed") if k in counts)
    unfinished = int((runs["status"] == "unfinished").sum())
    dates = pd.to_datetime(done.get("date"), utc=True, errors="coerce", format="ISO8601").dropna()
    commands = sorted(set(done["command"].dropna())) if "command" in done else []
    if len(commands) > 3:  # one per run in a sweep: show one, and where the sweep lives
        shown = [f"`{commands[0]}` (one of {len(commands)} distinct)"]
    else:
        shown = [f"`{c}`" for c in commands] or ["unknown"]
    seeds = sorted(int(s) for s in done["seed"].dropna().unique())
    lines = [
        f"- Profile: {_unique(done, 'profile')}",
        f"- Datasets: {_unique(done, 'dataset')}",
        f"- Runs: {len(done)} finished ({status})"
        + (f", {unfinished} unfinished (not tabulated)" if unfinished else ""),
        f"- Seeds: {', '.join(map(str, seeds)) or 'unknown'}",
        f"- Commits: {_unique(done, 'commit')}",
        f"- Devices: {_unique(done, 'device')}",
        f"- Torch: {_unique(done, 'torch')}",
        "- Run dates: " + (f"{dates.min():%Y-%m-%d %H:%M} to {dates.max():%Y-%m-%d %H:%M} UTC"
                           if len(dates) else "unknown"),
        f"- Sweep folder: `{_common_dir(runs['run_dir'])}`",
        "- Run command(s): " + "; ".join(shown),
        f"- Report command: `{command}`",
    ]
    return "\n".join(lines)


def plot_hidden(summary, path, title):
    """figure_hidden.png: valid ppl against hidden size, one panel per dataset."""
    datasets = sorted(summary["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        g = summary[summary["dataset"] == d].dropna(subset=["valid_mean"])
        for label, line in g.groupby("label", sort=False):
            line = line.sort_values("hidden")
            ax.errorbar(line["hidden"].astype(float), line["valid_mean"], yerr=line["valid_std"].fillna(0),
                        marker="o", capsize=3, label=label)
        sizes = sorted(g["hidden"].dropna().astype(int).unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(h) for h in sizes])
        ax.set(title=d, xlabel="hidden size", ylabel="validation perplexity")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def table_markdown(name, runs, used, layout, tables, command, note=""):
    """The .md of one experiment: `runs` are all its runs (for the provenance),
    `used` those in the `layout`'s tables."""
    title, about = ABOUT.get(name, GENERIC)
    parts = [f"# {title.format(name=name)}", "", f"{about} {CELLS}", "", "## Provenance", "",
             provenance(runs, command), ""]
    used = used[used["status"] != "unfinished"]
    pooled = pooled_keys(used, KEYS.get(layout) or varying_keys(used))
    if pooled:
        parts += [f"Note: runs that differ in {', '.join(pooled)} share a cell and are averaged "
                  "together.", ""]
    if note:
        parts += [f"Note: {note}", ""]
    for heading, t in tables.items():
        parts += ([f"## {heading}", ""] if heading else []) + [to_markdown(t), ""]
    cells = [str(v) for t in tables.values() for v in t.to_numpy().ravel()]
    for mark, footnote in FOOTNOTES.items():
        if any(mark in c for c in cells):
            parts += [footnote, ""]
    return "\n".join(parts)


def load_summaries(outdir):
    """{table: summary} from the known tables' CSVs in outdir."""
    paths = {t: Path(outdir) / f"{t}.csv" for t in CLAIM_TABLES}
    return {t: pd.read_csv(p) for t, p in paths.items() if p.exists()}


def write_report(runs, outdir, command, echo=False):
    """Write every experiment's CSV and markdown (and the figure), then
    claims.md from all table CSVs in outdir.  Returns the paths written."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    finished = runs[runs["status"] != "unfinished"]
    for name in sorted(finished["experiment"].unique()):
        exp = runs[runs["experiment"] == name]
        used, note = select(exp, name)
        layout = name
        if (used["status"] != "unfinished").sum() == 0:  # nothing fits: show the runs plainly
            used, layout, note = exp, "generic", f"no run fits the {name} layout; shown plainly."
        summary = summarise(used, layout)
        tables = make_table(summary, layout)
        md = table_markdown(name, exp, used, layout, tables, command, note)
        written += [write_atomic(outdir / f"{name}.csv", summary.to_csv(index=False)),
                    write_atomic(outdir / f"{name}.md", md)]
        if layout == "figure_hidden":
            title = (f"Validation perplexity vs hidden size "
                     f"({_unique(used, 'profile')}, {_unique(used, 'device')})")
            written.append(plot_hidden(summary, outdir / "figure_hidden.png", title))
        if echo:
            print(md)
    summaries = load_summaries(outdir)
    if summaries:  # a folder of other experiments only (e.g. the demo) gets no claims.md
        text = claims_markdown(evaluate_claims(summaries), list(summaries), command)
        written.append(write_atomic(outdir / "claims.md", text))
        if echo:
            print(text)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m tprop_exp.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", metavar="DIR", help="sweep or run folders")
    p.add_argument("--out", help="output folder (default: results, or results/<profile>)")
    p.add_argument("--table", help="treat every run as this experiment (its layout)")
    args = p.parse_args(argv)
    try:
        runs = load_runs(args.dirs)
        finished = runs[runs["status"] != "unfinished"]
        if finished.empty:
            extra = f" ({len(runs)} unfinished)" if len(runs) else ""
            raise UserError(f"report: no runs (result.json) under {' '.join(args.dirs)}{extra}")
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    if args.table:
        runs["experiment"] = args.table
    command = shlex.join(["python", "-m", "tprop_exp.report", *argv])
    profiles = sorted(finished["profile"].fillna("unknown").unique())
    for profile in profiles:
        if args.out:
            outdir = Path(args.out) / profile if len(profiles) > 1 else Path(args.out)
        else:
            outdir = Path("results") if profile == "sample" else Path("results") / profile
        paths = write_report(runs[runs["profile"].fillna("unknown") == profile], outdir, command, echo=True)
        print("report: wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
