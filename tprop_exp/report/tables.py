"""The paper's table layouts: per-cell statistics over seeds (the tidy CSV)
and the formatted tables (DataFrames of 'mean ± std (n)' text)."""

import pandas as pd

from .runs import NUMERIC, varying_keys
from .beyond import variant
from .stats import fmt_stat

METRICS = {"valid": "best_valid_ppl", "test": "test_ppl", "train": "train_ppl",
           # the authors' token weights (SPEC §6), never in place of the true numbers
           "valid_tprnn": "best_valid_ppl_tprnn_weighting", "test_tprnn": "test_ppl_tprnn_weighting"}
WEIGHTED = "valid ppl under the authors' token weights (valid_ppl_tprnn_weighting; not the true perplexity)"
# dataset=lag runs also record how much of the lag they learned (SPEC §7)
LAG_METRICS = {"lag_valid": "best_valid_lag_learned", "lag_test": "test_lag_learned"}

# The cell keys of each known layout.
KEYS = {
    "table1_main": ["dataset", "mode", "K", "method", "h_steps"],
    "table2_regularization": ["dataset", "K", "method", "h_steps"],
    "table3_minibatch": ["dataset", "batch_size"],
    "figure_hidden": ["dataset", "hidden", "method", "h_steps"],
    "methods": ["dataset", "mode", "K", "method", "h_steps"],
    # SPEC §7 (report/beyond.py, report/long_range.py)
    "constrained": ["dataset", "hidden", "method", "h_steps", "h_param", "penalty"],
    "h_sensitivity": ["dataset", "K", "method", "h_steps", "h_optimizer", "h_lr"],
    "long_range": ["dataset", "mode", "D", "K", "method", "h_steps"],
    "time_dist": ["dataset", "mode", "K", "method", "h_steps", "world"],  # world: processes
}


def cell_keys(runs, layout):
    """The keys that make a cell of `layout` (for other experiments: the
    config keys that vary)."""
    return KEYS.get(layout) or varying_keys(runs[runs["status"] != "unfinished"]) or ["experiment"]


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
    if name == "constrained":
        return f"BTPROP {variant(row)}"
    if name == "h_sensitivity":
        return "BTPROP n_h=0" if h == 0 else f"BTPROP n_h={h} {row['h_optimizer']} h_lr={row['h_lr']:g}"
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
    keys = cell_keys(runs, name)
    metrics = {**METRICS, **{m: c for m, c in LAG_METRICS.items() if c in runs}}
    rows = []
    for key, g in runs.groupby(keys, dropna=False, sort=False):
        ok = g[g["status"] == "completed"]
        row = dict(zip(keys, key))
        for m, col in metrics.items():
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
    elif not s.empty:
        s = s.sort_values(keys)
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
    if name == "long_range":
        from .long_range import tables
        return tables(s)
    s["cell"] = s.apply(_cell, axis=1)
    if name == "table3_minibatch":
        metrics = [("train", "train ppl"), ("test", "test ppl"), ("valid", "valid ppl")]
        long = pd.concat([s.assign(metric=label, cell=s.apply(_cell, axis=1, metric=m))
                          for m, label in metrics])
        t = long.pivot(index="batch_size", columns=["dataset", "metric"], values="cell")
        t = t.reindex(columns=pd.MultiIndex.from_product(
            [sorted(s["dataset"].unique()), [label for _, label in metrics]], names=["dataset", "metric"]))
        return {"": t.sort_index().fillna("–")}
    if name == "h_sensitivity":
        return {d: _pivot(g, "label", "K") for d, g in s.groupby("dataset", sort=True)}
    if name == "time_dist":  # one column per number of processes: the same numbers, to rounding
        return {d: _pivot(g, "label", "world").rename_axis(columns="processes")
                for d, g in s.groupby("dataset", sort=True)}
    if name in ("figure_hidden", "constrained"):
        t = s.pivot(index="hidden", columns=["dataset", "label"], values="cell").sort_index()
        order = [(d, lab) for d in sorted(s["dataset"].unique()) for lab in dict.fromkeys(s["label"])
                 if (d, lab) in t.columns]
        return {"": t.reindex(columns=pd.MultiIndex.from_tuples(order, names=t.columns.names)).fillna("–")}
    columns = ["mode", "K"]  # table1_main, and methods when both modes were run
    if name == "table2_regularization" or (name == "methods" and s["mode"].nunique() == 1):
        columns = "K"
    tables = {d: _pivot(g, "label", columns) for d, g in s.groupby("dataset", sort=True)}
    if "valid_tprnn_n" in s and (s["valid_tprnn_n"] > 0).any():  # beside the true tables
        w = s.assign(cell=s.apply(_cell, axis=1, metric="valid_tprnn"))
        tables.update({f"{d}: {WEIGHTED}": _pivot(g, "label", columns) for d, g in w.groupby("dataset", sort=True)})
    return tables


def _generic(s):
    keys = [c for c in s if c.startswith("config.")]
    t = s[keys].rename(columns=lambda c: c.removeprefix("config."))
    for m in METRICS:
        if m.endswith("_tprnn") and not (s.get(f"{m}_n", pd.Series(dtype=float)) > 0).any():
            continue  # the authors' weighting: a column only for runs that used it
        t[f"{m} ppl"] = s.apply(_cell, axis=1, metric=m)
    for m in LAG_METRICS:  # beside the perplexities, for runs on dataset=lag
        if f"{m}_mean" in s:
            t[m.replace("lag_", "lag_learned ")] = s.apply(_cell, axis=1, metric=m)
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


def to_latex(tables, caption=""):
    """LaTeX of an experiment's tables (pandas' to_latex, booktabs rules), one
    tabular per heading, for a paper: `\\input{<name>.tex}`. Needs jinja2."""
    parts = []
    for heading, t in tables.items():
        t = t.copy()
        if isinstance(t.columns, pd.MultiIndex):
            t.columns = t.columns.set_levels([[_level(n, v) for v in lv] for n, lv in
                                              zip(t.columns.names, t.columns.levels)])
        label = (f"{caption}: {heading}" if heading else caption).replace("`", "")
        index = bool(t.index.name)
        text = t.to_latex(escape=True, caption=label.replace("_", r"\_") or None, index=index,
                          column_format="l" * (t.index.nlevels * index) + "r" * len(t.columns),
                          multicolumn_format="c")
        parts.append(text.replace("±", r"$\pm$").replace("–", "--"))
    return "\n".join(parts)


def _level(level, v):
    return f"K={v}" if level == "K" else f"hidden={v}" if level == "hidden" else str(v)
