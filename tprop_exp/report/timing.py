"""Time to quality (SPEC §7): validation perplexity against wall-clock seconds
and against training tokens, from each run's metrics.jsonl (per epoch:
`seconds` of training, evaluation not included, and `tokens_per_s`; both
summed over epochs), and per cell the time and tokens it took to reach BPTT's
best validation perplexity (BPTT's over one process where there is one). Runs
trained by several processes (result.json `world`) are cells of their own."""

import pandas as pd
from matplotlib.ticker import EngFormatter

from .plots import _key, log_y, plt, suptitle
from .runs import load_history

# "At or below the target" up to float rounding: BPTT over processes computes one
# process's numbers to rounding, so it reaches its own target.
RTOL = 1e-6
MARKERS = "o^sDvP*X"
# The keys that set the comparison: BPTT's target is taken among the runs that share them.
CONTEXT = ["dataset", "mode", "D", "K", "hidden", "batch_size"]  # D: dataset=lag's lag


def cumulative(runs):
    """Per run and epoch: valid_ppl, cumulative seconds and tokens (empty when no metrics)."""
    h = load_history(runs["run_dir"])
    if h.empty or "seconds" not in h or "valid_ppl" not in h:
        return pd.DataFrame()
    h = h.sort_values(["run_dir", "epoch"])
    h["tokens"] = h["tokens_per_s"] * h["seconds"]
    g = h.groupby("run_dir")
    h["cum_seconds"], h["cum_tokens"] = g["seconds"].cumsum(), g["tokens"].cumsum()
    return h[["run_dir", "epoch", "valid_ppl", "cum_seconds", "cum_tokens"]]


def _label(runs, summary, keys):
    """Each run's cell label (the summary's), with its number of processes when > 1."""
    labels = dict(zip(_key(summary, keys), summary["label"])) if "label" in summary else {}
    out = []
    for key, (_, r) in zip(_key(runs, keys), runs.iterrows()):
        name = labels.get(key) or (str(key[0]) if len(keys) == 1 else  # one key: its value says it
                                   ", ".join(f"{k.removeprefix('config.')}={v}" for k, v in zip(keys, key)))
        world = int(r.get("world", 1) or 1)
        out.append(str(name) + (f" ({world} processes)" if world > 1 else ""))
    return out


def _runs(runs, summary, keys):
    done = runs[runs["status"] == "completed"].copy()
    if done.empty:
        return done
    done["cell"] = _label(done, summary, keys)
    return done


def time_table(runs, summary, keys):
    """Per cell: BPTT's best valid ppl in its context, and the mean time and
    tokens of the seeds that reached it ("not reached" when none did)."""
    done = _runs(runs, summary, keys)
    hist = cumulative(done)
    if done.empty or hist.empty:
        return None
    ctx = [c for c in CONTEXT if c in done and done[c].notna().any() and c in keys]
    rows = []
    for _, g in done.groupby([*ctx, "cell"], sort=False, dropna=False):
        first, cell = g.iloc[0], g.iloc[0]["cell"]
        same = (done["method"] == "bptt")
        for c in ctx:
            same &= done[c] == first[c]
        bptt = done[same]
        if bptt.empty:
            continue
        if (bptt["world"] == 1).any():  # one process's BPTT sets the target
            bptt = bptt[bptt["world"] == 1]
        target = pd.to_numeric(bptt["best_valid_ppl"]).groupby(bptt["cell"]).mean().min()  # BPTT's best cell, mean over seeds
        reach = []
        for run in g["run_dir"]:
            h = hist[(hist["run_dir"] == run) & (hist["valid_ppl"] <= target * (1 + RTOL))]
            if not h.empty:
                reach.append(h.iloc[0])
        row = {c: first[c] for c in ctx}
        row.update({"method": cell, "processes": int(first.get("world", 1) or 1),
                    "device": first.get("device"), "BPTT best valid ppl": f"{target:.2f}",
                    "seeds reaching": f"{len(reach)}/{len(g)}"})
        if reach:
            row["seconds"] = f"{pd.Series([r['cum_seconds'] for r in reach]).mean():.1f}"
            row["tokens"] = f"{pd.Series([r['cum_tokens'] for r in reach]).mean():,.0f}"
        else:
            row["seconds"] = row["tokens"] = "not reached"
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


def time_figure(runs, summary, keys, title):
    """valid ppl against cumulative seconds (left) and tokens (right), one row
    of panels per dataset, one line per cell (mean over seeds at each epoch)."""
    done = _runs(runs, summary, keys)
    hist = cumulative(done)
    if done.empty or hist.empty:
        return None
    ctx = [c for c in CONTEXT[1:] if c in done and done[c].notna().any() and c in keys]
    if ctx:  # one line per cell and K / hidden size / ...: the label lacks them
        done["cell"] = done["cell"] + done[ctx].apply(
            lambda r: " · " + ", ".join(f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}"
                                        for c, v in r.items()), axis=1)
    hist = hist.merge(done[["run_dir", "cell", "dataset"]], on="run_dir")
    datasets = sorted(hist["dataset"].dropna().unique())
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4 * len(datasets)), squeeze=False,
                             layout="constrained")
    for row, d in zip(axes, datasets):
        g = hist[hist["dataset"] == d].groupby(["cell", "epoch"], sort=False)[
            ["valid_ppl", "cum_seconds", "cum_tokens"]].mean().reset_index()
        for ax, x, xlabel in zip(row, ("cum_seconds", "cum_tokens"),
                                 ("training seconds (cumulative)", "training tokens (cumulative)")):
            for i, (cell, line) in enumerate(g.groupby("cell", sort=False)):
                # ten colours, then the next marker: every line stays distinct
                ax.plot(line[x], line["valid_ppl"], color=plt.cm.tab10(i % 10), marker=MARKERS[i // 10 % len(MARKERS)],
                        markersize=4, label=cell)
            ax.set(title=d, xlabel=xlabel, ylabel="validation perplexity (log scale)")
            log_y(ax, g["valid_ppl"].dropna())
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 300k, not 300000 run into its neighbour
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the panels, not over the lines
    suptitle(fig, title, runs, band=False, fontsize=11)
    return fig
