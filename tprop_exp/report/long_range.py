"""experiment=long_range (SPEC §7): how much of a lag-D dependency each method
learns, against D/K; and claim 5 judged directly from it.

Cells are (mode, D, method row); the metric is `lag_learned` =
(ln V − NLL)/(ln V − H*) on validation (at the best epoch) and on test.
K is the experiment's block size: the smallest unroll among its runs, so
that the long-unroll BPTT reference is placed by D/K like every other row.
"""

import pandas as pd

from .stats import FAILS, HOLDS, UNSURE, Z, Cell, exceeds, fmt_stat

NAME = "long_range"
HALF = 0.5      # "learns at least half the dependency"
MARGIN = 0.25   # claim 5 (direct): BTPROP learns at least a quarter more of the lag than BPTT(K)
MODES = {"minibatch": "mini-batch", "batch": "batch"}

RULE = (
    f"For each mode and each lag D > K at which the long-unroll BPTT reference learns at least "
    f"half the dependency (mean validation lag_learned ≥ {HALF:g}), compare best BTPROP (the "
    f"BTPROP row, any method and h-step count, with the highest mean) with BPTT(K): BTPROP "
    f"learns the lag where BPTT(K) does not when mean(BTPROP) − mean(BPTT(K)) exceeds "
    f"{MARGIN:g} by more than {Z:g}·SE; it does not at that D when the difference is below "
    f"{MARGIN:g} by more than {Z:g}·SE; else that D is inconclusive. The statement holds when "
    f"it does at some such D; it does not hold when it does not at every such D; else it is "
    f"inconclusive (also when no D qualifies).")


def base_k(summary):
    return int(summary["K"].min())


def label(row, k):
    if row["method"] == "bptt":
        return f"BPTT({int(row['K'])})" + (", reference" if row["K"] > k else "")
    return f"BTPROP {row['method']} n_h={int(row['h_steps'])}"


def decorate(summary):
    """Add D_over_K and the row labels; order rows BPTT(K), reference, BTPROP."""
    s = summary.copy()
    if s.empty:
        return s
    k = base_k(s)
    s["D_over_K"] = s["D"] / k
    s["label"] = [label(r, k) for _, r in s.iterrows()]
    order = [(r["method"] != "bptt", r["K"] if r["method"] == "bptt" else 0, r["method"],
              -1 if pd.isna(r["h_steps"]) else r["h_steps"]) for _, r in s.iterrows()]
    return s.assign(_o=order).sort_values(["mode", "_o", "D"]).drop(columns="_o").reset_index(drop=True)


def _cell(row, metric):
    text = fmt_stat(row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"])
    return text + (" †" if row.get("n_diverged") else "") + (" ‡" if row.get("n_failed") else "")


def largest_half(s):
    """{(mode, label): largest D/K with mean validation lag_learned ≥ HALF, or None}."""
    out = {}
    for (mode, lab), g in s.groupby(["mode", "label"], sort=False):
        ok = g[g["lag_valid_mean"] >= HALF]
        out[(mode, lab)] = None if ok.empty else float(ok["D_over_K"].max())
    return out


def tables(summary):
    """{heading: DataFrame}: lag_learned (valid, test) and valid perplexity against D/K,
    per mode, then the largest D/K each row learns at least half of."""
    s = decorate(summary)
    out = {}
    for mode, g in s.groupby("mode", sort=False):
        for metric, what in (("lag_valid", "lag_learned, validation"), ("lag_test", "lag_learned, test"),
                             ("valid", "validation perplexity")):
            t = g.assign(cell=g.apply(_cell, axis=1, metric=metric))
            t = t.pivot(index="label", columns="D_over_K", values="cell")
            t = t.reindex(list(dict.fromkeys(g["label"]))).fillna("–")
            t.columns = [f"D/K={c:g} (D={int(c * base_k(s))})" for c in t.columns]
            out[f"{MODES.get(mode, mode)}: {what}"] = t.rename_axis(index="method")
    half = largest_half(s)
    rows = [{"mode": MODES.get(m, m), "method": lab,
             f"largest D/K with lag_learned ≥ {HALF:g}": "none" if v is None else f"{v:g}"}
            for (m, lab), v in half.items()]
    out[f"Largest D/K learned at least half (mean validation lag_learned ≥ {HALF:g})"] = \
        pd.DataFrame(rows).set_index("mode")
    return out


def figure(summary, title, plt):
    """lag_learned (validation) against D/K, one line per row, ± std over seeds."""
    s = decorate(summary)
    if s.empty:
        return None
    modes = list(dict.fromkeys(s["mode"]))
    # One style per row across panels: BPTT(K) red, the reference black dashed, BTPROP rows
    # from a palette without red or black.
    palette = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
                    "tab:olive", "tab:cyan", "tab:gray"] * 4)
    styles = {lab: dict(ls="--", color="black") if lab.endswith("reference") else
              dict(ls="-", color="tab:red") if lab.startswith("BPTT") else dict(ls="-", color=next(palette))
              for lab in dict.fromkeys(s["label"])}
    fig, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.4), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes):
        g = s[s["mode"] == mode]
        for lab, line in g.groupby("label", sort=False):
            line = line.sort_values("D_over_K")
            ax.errorbar(line["D_over_K"], line["lag_valid_mean"], yerr=line["lag_valid_std"].fillna(0),
                        marker="o", capsize=3, label=lab, **styles[lab])
        ax.axhline(HALF, color="grey", lw=0.8, ls=":")
        ax.axvline(1, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"D/K (K = {base_k(s)})")
        ax.set_title(MODES.get(mode, mode))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel("lag_learned (validation, best epoch)")
    fig.suptitle(f"{title}: 0 = lag unused (ppl V), 1 = floor H* reached; mean ± std over seeds")
    fig.tight_layout()
    return fig


def claim5_direct(summary):
    """(verdict on "BTPROP learns dependencies longer than K that BPTT(K) does not", lines)."""
    s = decorate(summary)
    if s.empty or "lag_valid_mean" not in s:
        return UNSURE, ["no long_range runs"]
    k = base_k(s)
    conds, lines = [], []
    for mode, g in s.groupby("mode", sort=False):
        for d, at in g[g["D"] > k].groupby("D"):
            ref = at[(at["method"] == "bptt") & (at["K"] > k)]
            bk = at[(at["method"] == "bptt") & (at["K"] == k)]
            bt = at[at["method"] != "bptt"].dropna(subset=["lag_valid_mean"])
            if ref.empty or bk.empty or bt.empty:
                continue
            cells = [Cell(r["label"], float(r["lag_valid_mean"]), float(r["lag_valid_std"]),
                          int(r["lag_valid_n"])) for r in (ref.iloc[0], bk.iloc[0],
                                                            bt.loc[bt["lag_valid_mean"].idxmax()])]
            r, b, a = cells
            where = f"{MODES.get(mode, mode)} D={int(d)} (D/K={d / k:g})"
            if not r.mean >= HALF:
                lines.append(f"{where}: reference {r} learns less than half: not counted")
                continue
            more, how = exceeds(a, b, MARGIN)
            less, _ = exceeds(b, a, -MARGIN)
            c = True if more else False if less else None
            conds.append(c)
            lines.append(f"{where}: reference {r}; {a} vs {b}: {how} → " + (
                "BTPROP learns it, BPTT(K) does not" if c else "no such gain" if c is False
                else "inconclusive"))
    if not conds:
        return UNSURE, lines + ["no D > K at which the reference learns at least half"]
    verdict = HOLDS if True in conds else FAILS if all(c is False for c in conds) else UNSURE
    return verdict, lines
