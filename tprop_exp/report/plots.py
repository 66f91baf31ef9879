"""The report's figures (matplotlib, Agg): learning curves, BTPROP
diagnostics, perplexity against hidden size and against mini-batch size.

Each `*_figure` function returns a matplotlib Figure (or None when there is
nothing to draw); `save` writes it atomically as a world-readable PNG.
Curves are means over the seeds of a cell's completed runs, with a band of
± one standard deviation over seeds where there are two or more (the
figure says so). Perplexity axes are always on a log scale, and say so; a
diagnostics panel that shows nothing (a constant, or values at rounding
noise) is left out.
"""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from tprop_exp.run.records import atomic_write  # noqa: E402

from .runs import NUMERIC, load_history, unique  # noqa: E402

# BTPROP's own per-epoch terms (metrics.jsonl), with axis labels; log scale for the norms.
DIAGNOSTICS = [("penalty", "penalty term", True), ("residual", r"residual $\|F_b - H_{b+1}\|$", True),
               ("dual_norm", r"dual norm $\|u\|$", True), ("h_steps", "h-steps taken per update", False),
               ("lam", r"penalty weight $\lambda$", False)]
MAX_COLS = 4
NOISE = 1e-12  # diagnostics at or below this are float rounding, not a value
BAND = "lines: mean over seeds; bands and error bars: ± 1 standard deviation over seeds (where n ≥ 2)"


def log_y(ax, values):
    """A log y-axis with at least a few labelled ticks, whatever its span."""
    ax.set_yscale("log")
    lo, hi = float(values.min()), float(values.max())
    span = hi / lo if lo > 0 else math.inf
    if span < 10:  # less than a decade: evenly spaced round numbers
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    elif span < 1e4:  # 1, 2, 5 per decade
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _shows_something(values):
    """False for a constant, or values that are all float rounding noise."""
    v = values.dropna()
    v = v.where(v.abs() > NOISE, 0.0)
    if v.empty:
        return False
    return bool(v.max() - v.min() > 1e-9 * max(abs(v.max()), abs(v.min())))


def _xlabel(modes):
    """What one epoch is, where the panel's runs share a mode."""
    modes = set(modes.dropna()) if modes is not None else set()
    if modes == {"batch"}:
        return "epoch (batch mode: one update per epoch)"
    if modes == {"minibatch"}:
        return "epoch (mini-batch mode: a pass over the data)"
    return "epoch"


def save(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def note(runs):
    return f"profile: {unique(runs, 'profile')} · device: {unique(runs, 'device')}"


def _key(df, keys):
    """A hashable cell key per row that matches between runs and summary
    (numbers as floats, missing values as None)."""
    def norm(k, v):
        if pd.isna(v):
            return None
        return float(v) if k in NUMERIC else str(v)
    return [tuple(norm(k, v) for k, v in zip(keys, row)) for row in df[keys].itertuples(index=False)]


# Short names of the config keys that vary in a user's sweep ("" : the value alone).
SHORT = {"method.name": "", "method.mode": "", "arch.cell": "", "dataset.name": "",
         "method.block_size": "K", "arch.hidden_size": "hidden", "train.batch_size": "B",
         "method.h_steps": "h-steps", "arch.num_layers": "layers"}


def _fmt(k, v):
    if k.startswith("config."):  # a key that varies in a user's sweep: a short name
        key = k.removeprefix("config.")
        short = SHORT.get(key, key.split(".")[-1])
        return f"{short}={v}" if short else str(v)
    if k in ("K", "D", "hidden", "batch_size"):
        return f"{ {'batch_size': 'B'}.get(k, k)}={int(v)}"
    return str(v)


def _panels_and_lines(summary, keys):
    """Which keys split panels and which name a line, for a summary's layout."""
    panels = [k for k in keys if k not in ("method", "h_steps", "batch_size") and not k.startswith("config.")]
    if "label" in summary:
        return panels, lambda r: r["label"]
    rest = [k for k in keys if k not in panels]
    return panels, lambda r: ", ".join(_fmt(k, r[k]) for k in rest) or "all runs"


def history_by_cell(runs, summary, keys):
    """Per-epoch rows of the completed runs, each with its cell's panel and line
    names (`_panel`, `_line`), in the summary's row order (`_order`)."""
    ok = runs[runs["status"] == "completed"]
    hist = load_history(ok["run_dir"])
    if hist.empty or summary.empty:
        return pd.DataFrame()
    panels, line_name = _panels_and_lines(summary, keys)
    cells = summary.assign(_k=_key(summary, keys), _order=range(len(summary)))
    cells["_line"] = cells.apply(line_name, axis=1)
    cells["_panel"] = cells.apply(lambda r: tuple(r[k] for k in panels), axis=1)
    ok = ok.assign(_k=_key(ok, keys), _mode=ok["mode"] if "mode" in ok else None)[["run_dir", "_k", "_mode"]]
    return hist.merge(ok, on="run_dir").merge(cells[["_k", "_line", "_panel", "_order"]], on="_k")


def _grid(panel_names):
    """Axes for panels, one row per dataset (the first panel key), wrapped at MAX_COLS."""
    by_dataset = {}
    for p in panel_names:
        by_dataset.setdefault(p[0] if p else "", []).append(p)
    groups = list(by_dataset.values())
    if all(len(ps) == 1 for ps in groups):  # one panel per dataset: side by side
        groups = [[p for ps in groups for p in ps]]
    ncols = min(MAX_COLS, max(len(ps) for ps in groups))
    places, r = {}, 0
    for ps in groups:
        for i, p in enumerate(ps):
            places[p] = (r + i // ncols, i % ncols)
        r += math.ceil(len(ps) / ncols)
    fig, axes = plt.subplots(r, ncols, figsize=(4.2 * ncols, 3.4 * r + 1.2), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.set_visible(False)
    return fig, {p: axes[i][j] for p, (i, j) in places.items()}


def _epoch_axis(ax, epochs):
    """Whole-number epoch ticks, also when every run stopped after one epoch."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))  # 300 epochs: labels that do not collide
    if epochs.nunique() == 1:
        ax.set_xlim(epochs.iloc[0] - 1, epochs.iloc[0] + 1)
    else:  # every epoch of the panel, also where a line starts late (duals from u_start_epoch)
        ax.set_xlim(epochs.min() - 0.2, epochs.max() + 0.2)


def _title(panel, keys):
    return " · ".join(_fmt(k, v) for k, v in zip(keys, panel)) or "all runs"


def _band(ax, g, column, log=False, **style):
    """Mean over seeds against epoch, with a ± std band where n ≥ 2 (on a log
    axis the band's lower side is dropped where it would reach zero)."""
    x = g.groupby("epoch")[column].agg(["mean", "std", "count"]).dropna(subset=["mean"])
    if x.empty:
        return None
    # about a dozen markers per line, so that 300 epochs stay a line, not a bar
    line, = ax.plot(x.index, x["mean"], markersize=4, markevery=max(1, len(x) // 12), **style)
    spread = x[x["count"] >= 2]
    if not spread.empty:
        low = spread["mean"] - spread["std"]
        if log:
            low = low.where(low > 0, spread["mean"])
        ax.fill_between(spread.index, low, spread["mean"] + spread["std"],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def _styles(lines):
    """A colour and a marker per line, so that lines drawn on top of each other
    stay visible: ten distinct colours (no pale pairs); past ten, the marker
    and a darker shade tell lines apart."""
    cmap = plt.get_cmap("tab10")
    markers = "os^Dv<>pXh"
    out = {}
    for i, name in enumerate(lines):
        r, g, b, _ = cmap(i % 10)
        shade = 0.6 if (i // 10) % 2 else 1.0
        out[name] = dict(color=(r * shade, g * shade, b * shade), marker=markers[(i + i // 10) % len(markers)])
    return out


def _handles(styles):
    return [Line2D([], [], label=name, markersize=4, **style) for name, style in styles.items()]


def _finish(fig, title, runs, handles):
    suptitle(fig, title, runs)
    # as many legend columns as the figure's width holds (about 1.9 inches each)
    ncol = max(1, min(4, len(handles), int(fig.get_figwidth() / 1.9)))
    # a long legend adds height below the panels instead of squeezing them
    fig.set_figheight(fig.get_figheight() + 0.17 * math.ceil(len(handles) / ncol))
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8,
               frameon=False)
    return fig


def _plain(title):
    """No markdown in a figure's title: `demo` → demo."""
    return title.replace("`", "")


def suptitle(fig, title, runs, band=True, fontsize=10):
    """A figure's title lines: its name (no markdown), the runs' profile and
    device, and (for figures with bands) what a band is."""
    fig.suptitle("\n".join([_plain(title), note(runs)] + ([BAND] if band else [])), fontsize=fontsize)


def curves_figure(runs, summary, keys, title):
    """Train (dashed) and valid (solid) perplexity against epoch, one line per
    cell, one panel per dataset and mode/K/hidden as the layout has them."""
    h = history_by_cell(runs, summary, keys)
    if h.empty or not ({"train_ppl", "valid_ppl"} & set(h)):
        return None
    panel_keys, _ = _panels_and_lines(summary, keys)
    h = h.sort_values(["_order", "epoch"])
    styles = _styles(list(dict.fromkeys(h["_line"])))
    fig, axes = _grid(list(dict.fromkeys(h["_panel"])))
    for panel, ax in axes.items():
        ax.set_visible(True)
        here = h[h["_panel"] == panel]
        top = here[[c for c in ("train_ppl", "valid_ppl") if c in h]].stack()
        top = top[top > 0]
        for name, g in here.groupby("_line", sort=False):
            for col, ls in (("valid_ppl", "-"), ("train_ppl", "--")):
                if col in g:
                    _band(ax, g, col, True, linestyle=ls, **styles[name])
        if not top.empty:  # perplexity on a log scale in every panel
            log_y(ax, top)
        ax.set(title=_title(panel, panel_keys), xlabel=_xlabel(here["_mode"]),
               ylabel="perplexity (log scale)")
        _epoch_axis(ax, h.loc[h["_panel"] == panel, "epoch"])
        ax.grid(alpha=0.3)
    handles = _handles(styles)
    handles += [Line2D([], [], color="k", linestyle="-", label="valid"),
                Line2D([], [], color="k", linestyle="--", label="train")]
    return _finish(fig, title, runs, handles)


def diagnostics_figure(runs, summary, keys, title):
    """BTPROP's penalty, residual, dual norm, h-steps taken and λ against epoch:
    one row per dataset, one column per quantity, one line per BTPROP cell."""
    runs = runs[runs["method"] != "bptt"]
    h = history_by_cell(runs, summary, keys)
    if h.empty:
        return None
    present = [d for d in DIAGNOSTICS if d[0] in h and _shows_something(h[d[0]])]
    if not present:
        return None
    panel_keys, _ = _panels_and_lines(summary, keys)
    # Lines name the whole cell, since the panels no longer split mode/K.
    extra = panel_keys[1:]
    h = h.assign(_line=[" · ".join([*(_fmt(k, v) for k, v in zip(extra, p[1:])), n])
                        for p, n in zip(h["_panel"], h["_line"])], _dataset=[p[0] if p else "all runs" for p in h["_panel"]])
    h = h.sort_values(["_order", "epoch"])
    styles = _styles(list(dict.fromkeys(h["_line"])))
    datasets = list(dict.fromkeys(h["_dataset"]))
    fig, axes = plt.subplots(len(datasets), len(present), squeeze=False, layout="constrained",
                             figsize=(3.6 * len(present), 3.2 * len(datasets) + 1.2))
    for row, d in zip(axes, datasets):
        for ax, (col, label, log) in zip(row, present):
            g = h[h["_dataset"] == d]
            g = g.assign(**{col: g[col].where(g[col].abs() > NOISE, 0.0)})  # rounding noise is zero
            values = g[col].dropna()
            # log only where the values span a decade or more; the label says which
            log_here = bool(log and len(values) and (values > 0).all() and values.max() >= 10 * values.min())
            for name, line in g.groupby("_line", sort=False):
                _band(ax, line, col, log_here, **styles[name])
            if log_here:
                log_y(ax, values)
            elif len(values) and (values >= 0).all():
                ax.set_ylim(bottom=0)  # a linear count or weight from zero: small changes stay small
            ax.set(title=f"{d}: {label}", xlabel=_xlabel(g["_mode"]),
                   ylabel=label + (" (log scale)" if log_here else ""))
            _epoch_axis(ax, g["epoch"])
            ax.grid(alpha=0.3)
    return _finish(fig, title, runs, _handles(styles))


def hidden_figure(summary, runs, title):
    """figure_hidden.png: valid ppl against hidden size, one panel per dataset."""
    datasets = sorted(summary["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.4), squeeze=False,
                             layout="constrained")
    for ax, d in zip(axes[0], datasets):
        g = summary[summary["dataset"] == d].dropna(subset=["valid_mean"])
        for label, line in g.groupby("label", sort=False):
            line = line.sort_values("hidden")
            ax.errorbar(line["hidden"].astype(float), line["valid_mean"], yerr=line["valid_std"].fillna(0),
                        marker="o", capsize=3, label=label)
        log2_panel(ax, g["hidden"], title=d, xlabel="hidden size (log scale)", ylabel="validation perplexity")
    suptitle(fig, title, runs)
    return fig


def log2_panel(ax, sizes, **labels):
    """A panel whose x-axis is a size swept by powers of two, ticked at each size."""
    sizes = sorted(sizes.dropna().astype(int).unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def minibatch_figure(summary, runs, title):
    """Table 3: train and test perplexity against mini-batch size (log x), one panel per dataset."""
    datasets = sorted(summary["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.4), squeeze=False,
                             layout="constrained")
    for ax, d in zip(axes[0], datasets):
        g = summary[summary["dataset"] == d].sort_values("batch_size")
        for metric, marker in (("train", "s"), ("test", "o")):
            ok = g.dropna(subset=[f"{metric}_mean"])
            ax.errorbar(ok["batch_size"].astype(float), ok[f"{metric}_mean"],
                        yerr=ok[f"{metric}_std"].fillna(0), marker=marker, capsize=3,
                        label=f"{metric} perplexity")
        log2_panel(ax, g["batch_size"], title=d, xlabel="mini-batch size B (parallel streams, log scale)",
                   ylabel="perplexity")
    suptitle(fig, title, runs)
    return fig
