"""experiment=ablation: which of the authors' rules (SPEC §6) moves the numbers.

Runs are grouped by dataset, mode and method; in each group every rule set
(`rules`: only_<rule>, or tprnn for all of them) is compared with textbook:

    Δ = mean valid ppl (rule) − mean valid ppl (textbook),
    SE = √(s²_rule/n_rule + s²_textbook/n_textbook),

and the verdict is "moves the result" when |Δ| > 2·SE, "within the noise"
otherwise ("too few seeds" with fewer than two a side). The measurement rule
(train.zero_weight_first_type) is paired within runs: for every run that
reports both, d = valid_ppl_tprnn_weighting − valid_ppl of the same model,
Δ = mean d, SE = sd(d)/√n.
"""
import math

import pandas as pd

from .stats import fmt_num

Z = 2.0
GROUP = ["dataset", "mode", "method"]
VALID, WEIGHTED = "best_valid_ppl", "best_valid_ppl_tprnn_weighting"


def _verdict(delta, se):
    if pd.isna(se):
        return "too few seeds"
    return "moves the result" if abs(delta) > Z * se else "within the noise"


def _row(keys, rule, delta, se, n_rule, n_base, what):
    return {**keys, "rule": rule, "compared": what, "delta_valid_ppl": delta, "se": se,
            "low": delta - Z * se, "high": delta + Z * se, "n_rule": n_rule, "n_textbook": n_base,
            "verdict": _verdict(delta, se)}


def ablation_summary(runs):
    """One row per (dataset, mode, method, rule): Δ, SE, the 2·SE interval, the verdict."""
    ok = runs[runs["status"] == "completed"].copy()
    ok[VALID] = pd.to_numeric(ok[VALID], errors="coerce")
    rows = []
    for key, g in ok.groupby(GROUP, dropna=False, sort=True):
        keys = dict(zip(GROUP, key))
        cells = g.groupby("rules")[VALID].agg(["mean", "std", "count"])
        if "textbook" in cells.index:
            base = cells.loc["textbook"]
            for rule, c in cells.drop(index="textbook").iterrows():
                se = math.sqrt(c["std"] ** 2 / c["count"] + base["std"] ** 2 / base["count"]) \
                    if c["count"] > 1 and base["count"] > 1 else float("nan")
                rows.append(_row(keys, rule, c["mean"] - base["mean"], se, int(c["count"]),
                                 int(base["count"]), "valid_ppl: rule vs textbook"))
        if WEIGHTED in g:
            paired = g.assign(d=pd.to_numeric(g[WEIGHTED], errors="coerce") - g[VALID]).dropna(subset=["d"])
            for rule, p in paired.groupby("rules"):
                n = len(p)
                se = p["d"].std() / math.sqrt(n) if n > 1 else float("nan")
                rows.append(_row(keys, f"measurement ({rule})", p["d"].mean(), se, n, n,
                                 "valid_ppl_tprnn_weighting vs valid_ppl, same runs"))
    return pd.DataFrame(rows)


def ablation_markdown(summary, provenance):
    parts = ["# Ablation: which of the authors' rules moves the numbers", "",
             "From `variant=textbook` (SPEC §1), one of the authors' rules at a time "
             "(`variant=only_<rule>`) and all of them (`variant=tprnn`); SPEC §6. "
             f"Δ = mean valid perplexity under the rule − under textbook, ± {Z:g}·SE "
             "(SE of a difference of two means over seeds); the verdict says whether |Δ| "
             f"exceeds {Z:g}·SE. The measurement rule compares, within the same runs, the "
             "authors' number (token type 1 weighted 0, the mean still over every token) "
             "with the true valid perplexity.", "", "## Provenance", "", provenance, ""]
    if summary.empty:
        return "\n".join(parts + ["No group has both textbook and rule runs.", ""])
    for key, g in summary.groupby(GROUP, sort=True):
        parts += [f"## {' · '.join(map(str, key))}", ""]
        t = pd.DataFrame({
            "rule": g["rule"],
            "Δ valid ppl": [fmt_num(d, d) for d in g["delta_valid_ppl"]],
            f"{Z:g}·SE interval": [f"[{fmt_num(lo, lo)}, {fmt_num(hi, hi)}]" if not pd.isna(lo) else "–"
                                   for lo, hi in zip(g["low"], g["high"])],
            "seeds (rule/textbook)": [f"{a}/{b}" for a, b in zip(g["n_rule"], g["n_textbook"])],
            "verdict": g["verdict"]})
        parts += [t.to_markdown(index=False, disable_numparse=True), ""]
    parts += ["![Δ valid perplexity per rule](ablation.png)", ""]
    return "\n".join(parts)


def ablation_figure(summary):
    """Δ per rule with its 2·SE interval: a row of panels per dataset, a
    panel per (mode, method); red where the rule moves the result."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    if summary.empty:
        return None
    datasets = sorted(summary["dataset"].unique())
    columns = sorted(set(zip(summary["mode"], summary["method"])))
    rows = summary.groupby(["dataset", "mode", "method"])["rule"].nunique().max()
    fig, axes = plt.subplots(len(datasets), len(columns), squeeze=False, layout="constrained",
                             figsize=(4.2 * len(columns), len(datasets) * (0.3 * rows + 1.6)))
    for ax_row, d in zip(axes, datasets):
        for ax, (mode, method) in zip(ax_row, columns):
            g = summary[(summary["dataset"] == d) & (summary["mode"] == mode) & (summary["method"] == method)]
            ax.set_title(f"{d} · {mode} · {method}", fontsize=9)
            if g.empty:
                ax.set_axis_off()
                continue
            y = list(range(len(g)))
            colors = ["tab:red" if v == "moves the result" else "tab:gray" for v in g["verdict"]]
            ax.barh(y, g["delta_valid_ppl"], xerr=(Z * g["se"]).fillna(0), color=colors, capsize=3)
            ax.set_yticks(y, g["rule"], fontsize=7)
            ax.axvline(0, color="black", lw=0.8)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_xlabel(f"Δ valid ppl vs textbook (± {Z:g}·SE)", fontsize=8)
    fig.legend(handles=[Patch(color="tab:red", label=f"moves the result (|Δ| > {Z:g}·SE)"),
                        Patch(color="tab:gray", label="within the noise")],
               loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle("Which of the authors' rules moves the numbers (measurement: the authors' "
                 "number − the true one, same runs)", fontsize=10)
    return fig
