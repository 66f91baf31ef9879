"""SPEC §7's experiments in the report: constrained h-optimisation (the
paper's hypothesis under claim 6) and step-size sensitivity (claims 2, 4, 5
re-judged at every point of the h_lr × h_optimizer grid). Verdicts use the
claims' machinery (claims.py, stats.py); the sections go at the end of
claims.md, after the eight claims."""

from .claims import cell, claim2, claim4, claim5
from .plots import plt, suptitle
from .stats import FAILS, HOLDS, UNSURE, combine, negate, word, worse

TABLES = ("constrained", "h_sensitivity")


def variant(row):
    """A constrained row's name: free, tanh, l2+kl, tanh, l2+kl."""
    parts = [p for p in (row.get("h_param"), row.get("penalty")) if isinstance(p, str) and p not in ("free", "l2")]
    return ", ".join(parts) or "free"


# -------------------------------------------------------------- constrained

def constrained_check(s):
    """One dataset's rows: at each hidden size of the larger half, where free
    BTPROP is worse than BPTT, does each constrained variant close the gap?"""
    s = s.dropna(subset=["valid_mean"])
    bptt, bt = s[s["method"] == "bptt"], s[s["method"] != "bptt"]
    sizes = sorted(set(bptt["hidden"]) & set(bt["hidden"]))
    if not sizes:
        return UNSURE, ["no hidden size with both BPTT and BTPROP runs"]
    conds, lines = [], []
    for h in sizes[len(sizes) // 2:]:  # the larger half of the hidden sizes
        ref = bptt[bptt["hidden"] == h]
        rows = bt[bt["hidden"] == h]
        free = rows[rows.apply(variant, axis=1) == "free"]
        if ref.empty or free.empty:
            continue
        b, f = cell(ref.iloc[0]), cell(free.iloc[0], label="BTPROP free")
        gap, how = worse(f, b)
        if gap is not True:
            lines.append(f"hidden={h}: {f} vs {b}: {how} → no gap to close")
            conds.append(None)
            continue
        for _, r in rows.iterrows():
            v = variant(r)
            if v == "free":
                continue
            c = cell(r, label=f"BTPROP {v}")
            still, how_c = worse(c, b)
            closes = negate(still)
            conds.append(closes)
            lines.append(f"hidden={h}: gap {f} vs {b}; {c} vs BPTT: {how_c} → "
                         + word(closes, "closes the gap", "does not close it"))
    if not lines:
        return UNSURE, ["no hidden size of the larger half with BPTT and free BTPROP"]
    return combine(conds), lines


CONSTRAINED_RULE = (
    "For each hidden size in the larger half of the sizes with both BPTT and BTPROP: when "
    "free BTPROP (ADMM, one h-step) is worse than BPTT (by 2·SE), each constrained variant "
    "(tanh; l2+kl; both) closes the gap when it is not worse than BPTT (2·SE). Holds when every "
    "variant does at every such size; does not hold when one does not; inconclusive when there "
    "is no gap to close or the seeds cannot tell.")


# -------------------------------------------------------------- sensitivity

CHECKS = {2: ("More h-steps do not improve BTPROP.", claim2),
          4: ("Mini-batch BTPROP gains little over BPTT.", claim4),
          5: ("That small gain comes from the penalty's regularisation, not from longer dependencies.",
              claim5)}


def grid_points(s):
    bt = s[(s["method"] != "bptt") & (s["h_steps"] > 0)]
    return sorted({(o, float(lr)) for o, lr in zip(bt["h_optimizer"], bt["h_lr"]) if isinstance(o, str)})


def at_point(s, opt, lr, h0=True):
    """The rows of one grid point: its n_h > 0 rows, and the references (BPTT,
    and n_h = 0 unless h0 is False: claim 4 asks what h-steps at this step size
    gain over BPTT, so its best BTPROP must not be the grid-free n_h = 0 row)."""
    ref = (s["method"] == "bptt") | ((s["h_steps"] == 0) & h0)
    here = (s["h_optimizer"] == opt) & (s["h_lr"].astype(float) == lr)
    return s[ref | here].assign(mode="minibatch")


def sensitivity_check(s, number):
    """Claim `number` judged at every grid point of one dataset's rows."""
    check = CHECKS[number][1]
    verdicts, lines = {}, []
    for opt, lr in grid_points(s):
        v, ev = check(at_point(s, opt, lr, h0=number != 4))
        verdicts[(opt, lr)] = v
        lines.append(f"{opt} h_lr={lr:g}: **{v}** — " + " | ".join(ev))
    if not verdicts:
        return UNSURE, ["no grid point with n_h > 0 runs"], ""
    holds = [p for p, v in verdicts.items() if v == HOLDS]
    fails = [p for p, v in verdicts.items() if v == FAILS]
    unsure = [p for p in verdicts if p not in holds + fails]

    def name(points):
        return ", ".join(f"{o} {lr:g}" for o, lr in points)

    if len(holds) == len(verdicts):
        summary = "holds at every step size"
    elif holds:
        summary = "holds only at " + name(holds)
    elif fails:
        summary = "holds at no step size"
    else:  # nothing decided: not "holds at no step size"
        summary = "inconclusive at every step size"
    if fails:
        summary += "; does not hold at " + name(fails)
    if unsure and (holds or fails):
        summary += "; inconclusive at " + name(unsure)
    overall = HOLDS if len(holds) == len(verdicts) else FAILS if fails else UNSURE
    return overall, lines, summary


def sensitivity_figure(summary, runs, title):
    """valid ppl against h_lr (log), one line per (n_h, h_optimizer); BPTT and
    n_h = 0 as bands (mean ± std); one panel per dataset and K."""
    s = summary.dropna(subset=["valid_mean"])
    panels = sorted({(d, k) for d, k in zip(s["dataset"], s["K"])})
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), squeeze=False,
                             layout="constrained")
    for ax, (d, k) in zip(axes[0], panels):
        g = s[(s["dataset"] == d) & (s["K"] == k)]
        lines = g[(g["method"] != "bptt") & (g["h_steps"] > 0)]
        for (h, opt), line in lines.groupby(["h_steps", "h_optimizer"]):
            line = line.sort_values("h_lr")
            ax.errorbar(line["h_lr"].astype(float), line["valid_mean"], yerr=line["valid_std"].fillna(0),
                        marker="o", capsize=3, label=f"n_h={int(h)} {opt}")
        for name, rows, colour in (("BPTT", g[g["method"] == "bptt"], "black"),
                                   ("n_h=0", g[(g["method"] != "bptt") & (g["h_steps"] == 0)], "grey")):
            if rows.empty:
                continue
            m, sd = rows["valid_mean"].iloc[0], rows["valid_std"].fillna(0).iloc[0]
            ax.axhline(m, color=colour, lw=1, label=f"{name} (mean ± std)")
            ax.axhspan(m - sd, m + sd, color=colour, alpha=0.15)
        ax.set_xscale("log")
        ax.set(title=f"{d} K={k}", xlabel="method.h_lr", ylabel="validation perplexity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    suptitle(fig, title, runs, band=False, fontsize=11)
    return fig


# -------------------------------------------------------------- claims.md

def markdown(summaries):
    """The sections for the SPEC §7 tables present in `summaries` ({name: DataFrame})."""
    parts = []
    s = summaries.get("constrained")
    if s is not None:
        parts += ["## Hypothesis under claim 6: a constraint closes BTPROP's gap at larger hidden sizes",
                  "", f"Table: `constrained`. Rule: {CONSTRAINED_RULE}", ""]
        for d in sorted(s["dataset"].dropna().unique()):
            v, ev = constrained_check(s[s["dataset"] == d])
            parts.append(f"- **{d}: {v}**")
            parts += [f"  - {line}" for line in ev]
        parts.append("")
    s = summaries.get("h_sensitivity")
    if s is not None:
        for number, (text, _) in CHECKS.items():
            parts += [f"## Claim {number} at every step size: {text}", "",
                      f"Table: `h_sensitivity`. Rule: claim {number}'s rule (above), applied at each "
                      "point of the h_lr × h_optimizer grid to that point's n_h > 0 rows with the "
                      "shared references (BPTT, and n_h = 0 for claims 2 and 5; claim 4's best "
                      "BTPROP is that point's best n_h > 0 row); the claim holds at every step size only "
                      "if it holds at each point.", ""]
            for d in sorted(s["dataset"].dropna().unique()):
                v, ev, summary = sensitivity_check(s[s["dataset"] == d], number)
                parts.append(f"- **{d}: {summary or v}**")
                parts += [f"  - {line}" for line in ev]
            parts.append("")
    return parts
