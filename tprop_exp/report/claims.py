"""The eight claims of SPEC §4, checked against the report's tables.

Input: the tidy summaries that `tprop_exp.report` writes as CSV (one row per
table cell: its keys such as dataset, mode, K, method, h_steps, hidden,
batch_size, then `<metric>_mean`, `<metric>_std`, `<metric>_n` for metric in
valid, test, train).  `evaluate_claims` gives one verdict per claim and
dataset; `claims_markdown` renders them with the rules and the numbers.
"""

import pandas as pd

from .stats import (COMPARABLE, FAILS, HOLDS, UNSURE, Z, Cell, combine, comparable,  # noqa: F401
                             exceeds, fmt_stat, negate, word, worse)

SMALL_GAIN = 0.05   # claim 4: "gains little" = less than 5% lower perplexity


RULES = f"""\
- Cells are means over seeds of completed runs (diverged and failed runs are
  left out); lower perplexity is better. Unless a claim says otherwise the
  metric is validation perplexity.
- The noise of a difference of two cell means is its standard error,
  SE = √(s_A²/n_A + s_B²/n_B), with s the standard deviation over seeds
  (ddof = 1) and n the number of seeds.
- **worse / better**: A is worse than B when mean(A) − mean(B) > {Z:g}·SE
  (roughly a one-sided test at the 2.5% level under normal noise; with 2 or 3
  seeds per cell it is lenient, as the t quantiles are larger).
- **single seed**: a comparison in which either cell has fewer than 2 seeds
  is **inconclusive (single seed)**: one run says nothing about the spread.
- **comparable**: the interval mean(A) − mean(B) ± {Z:g}·SE lies within
  ±{COMPARABLE:.0%} of mean(B); **not comparable** when it lies wholly
  outside that band; inconclusive otherwise (too few seeds to tell).
- **best BTPROP**: the BTPROP row (any method and h-step count) with the
  lowest mean in that column.
- A claim **does not hold** when any of its comparisons goes against it; else
  it is **inconclusive** when any comparison is; else it **holds**. A claim
  that needs cells that are absent is inconclusive; "no runs" means its table
  has no CSV in this folder, or no row for that dataset.
- **Across datasets**: each claim is judged on each dataset separately; the
  summary says on how many it holds (both / one / neither for two datasets).
"""


def row_name(row):
    if row["method"] == "bptt":
        return "BPTT"
    h = "" if pd.isna(row["h_steps"]) else f" n_h={int(row['h_steps'])}"
    return f"BTPROP {row['method']}{h}"


def cell(row, metric="valid", label=None):
    return Cell(label or row_name(row), float(row[f"{metric}_mean"]),
                float(row[f"{metric}_std"]), int(row[f"{metric}_n"]))


def best(rows, metric="valid"):
    """The row with the lowest mean, as a Cell (None when there is none)."""
    rows = rows.dropna(subset=[f"{metric}_mean"])
    if rows.empty:
        return None
    return cell(rows.loc[rows[f"{metric}_mean"].idxmin()], metric)


def rel(a, b):
    return (a.mean - b.mean) / b.mean


def _split(s):
    return s[s["method"] == "bptt"], s[s["method"] != "bptt"]


# Each check takes one dataset's rows of its table and returns (verdict, lines).

def claim1(s):
    bptt, bt = _split(s[s["mode"] == "batch"])
    ks = sorted(set(bptt["K"]) & set(bt["K"]))
    if not ks:
        return UNSURE, ["no batch-mode K with both BPTT and BTPROP runs"]
    conds, lines = [], []
    for k in ks[len(ks) // 2:]:  # the larger half of the K values
        a, b = best(bt[bt["K"] == k]), best(bptt[bptt["K"] == k])
        if a is None or b is None:
            continue
        c, how = comparable(a, b)
        conds.append(c)
        lines.append(f"K={k}: {a} vs {b}: {how} → {word(c, 'comparable', 'not comparable')}")
    if not lines:
        return UNSURE, ["no completed cells to compare"]
    return combine(conds), lines


def claim2(s):
    _, bt = _split(s.dropna(subset=["valid_mean", "h_steps"]))
    conds, lines = [], []
    for (mode, k, method), g in bt.groupby(["mode", "K", "method"]):
        g = g.sort_values("h_steps")
        if len(g) < 2:
            continue
        cells = [cell(r) for _, r in g.iterrows()]
        notes = []
        for i, a in enumerate(cells):
            for b in cells[i + 1:]:
                helps, how = worse(a, b)  # fewer h-steps worse: more h-steps help
                conds.append(negate(helps))
                if helps is not False:
                    notes.append(f"{b.label} vs {a.label}: {how}"
                                 + (" → improves" if helps else ""))
        lines.append(f"{mode} K={k}: " + ", ".join(map(str, cells)) + " → "
                     + ("; ".join(notes) if notes else "no improvement beyond 2·SE"))
    if not lines:
        return UNSURE, ["no column with two or more h-step counts"]
    return combine(conds), lines


def claim3(s):
    conds, lines, done = [], [], set()
    for family, rows in zip(("BPTT", "BTPROP"), _split(s)):
        ks = set(rows.loc[rows["mode"] == "batch", "K"]) & set(rows.loc[rows["mode"] == "minibatch", "K"])
        for k in sorted(ks):
            a = best(rows[(rows["mode"] == "batch") & (rows["K"] == k)])
            b = best(rows[(rows["mode"] == "minibatch") & (rows["K"] == k)])
            if a is None or b is None:
                continue
            w, how = worse(a, b)
            conds.append(w)
            done.add(family)
            lines.append(f"{family} K={k}: batch {a} vs mini-batch {b}: {how} → "
                         + word(w, "batch worse", "batch not clearly worse"))
    if done != {"BPTT", "BTPROP"}:
        missing = " and ".join(sorted({"BPTT", "BTPROP"} - done))
        lines.append(f"no K with both modes for {missing}")
        conds.append(None)
    return combine(conds), lines


def claim4(s):
    bptt, bt = _split(s[s["mode"] == "minibatch"])
    conds, lines = [], []
    for k in sorted(set(bptt["K"]) & set(bt["K"])):
        a, b = best(bt[bt["K"] == k]), best(bptt[bptt["K"] == k])
        if a is None or b is None:
            continue
        tol = SMALL_GAIN * b.mean
        small, how = exceeds(a, b, -tol)  # a above b − 5%: the gain is below 5%
        large, _ = exceeds(b, a, tol)     # b above a + 5%: the gain is above 5%
        c = True if small else False if large else None
        conds.append(c)
        lines.append(f"K={k}: {a} vs {b}: gain {-rel(a, b):+.1%}; {how} → "
                     + word(c, f"gain below {SMALL_GAIN:.0%}", f"gain above {SMALL_GAIN:.0%}"))
    if not lines:
        return UNSURE, ["no mini-batch K with both BPTT and BTPROP runs"]
    return combine(conds), lines


def claim5(s):
    bptt, bt = _split(s)
    conds, lines = [], []
    for k in sorted(set(bptt["K"]) & set(bt["K"])):
        at_k = bt[bt["K"] == k]
        ref = best(bptt[bptt["K"] == k])
        h0, hn = best(at_k[at_k["h_steps"] == 0]), best(at_k[at_k["h_steps"] > 0])
        if ref is None or h0 is None or hn is None:
            continue
        more, how = worse(h0, hn)  # n_h=0 worse than n_h>0: h-steps add a gain
        conds.append(negate(more))
        lines.append(f"K={k}: {ref}; penalty only {h0} (gain {ref.mean - h0.mean:+.3g}); "
                     f"{hn} (gain {ref.mean - hn.mean:+.3g}); extra gain of h-steps: {how} → "
                     + word(more, "beyond the noise", "none beyond the noise"))
    if not lines:
        return UNSURE, ["no K with BPTT, n_h=0 and n_h>0 runs"]
    return combine(conds), lines


def claim6(s):
    bptt, bt = _split(s)
    pairs = []
    for h in sorted(set(bptt["hidden"]) & set(bt["hidden"])):
        a, b = best(bptt[bptt["hidden"] == h]), best(bt[bt["hidden"] == h])
        if a is not None and b is not None:
            pairs.append((h, a, b, a.mean / b.mean))
    if len(pairs) < 2:
        return UNSURE, ["fewer than two hidden sizes with both BPTT and BTPROP runs"]
    lines = [f"hidden={h}: {a} / {b} = {r:.3f}" for h, a, b, r in pairs]
    w, how = worse(pairs[0][1], pairs[0][2])
    ratios = [r for *_, r in pairs]
    falling = all(y <= x for x, y in zip(ratios, ratios[1:])) and ratios[-1] < ratios[0]
    lines.append(f"smallest hidden size: BPTT {word(w, 'worse', 'not clearly worse')} ({how}); "
                 f"ratio of means {'decreases' if falling else 'does not decrease'} monotonically")
    return combine([w, falling]), lines


def claim7(s):
    conds, lines = [], []
    for metric in ("train", "test"):
        g = s.dropna(subset=[f"{metric}_mean"]).sort_values("batch_size")
        if len(g) < 2:
            conds.append(None)
            lines.append(f"{metric}: fewer than two batch sizes")
            continue
        cells = [cell(r, metric, f"B={int(r['batch_size'])}") for _, r in g.iterrows()]
        means = pd.Series([c.mean for c in cells])
        rho = g["batch_size"].rank().reset_index(drop=True).corr(means.rank())
        w, how = worse(cells[-1], cells[0])
        drops = []
        for i, a in enumerate(cells):
            for b in cells[i + 1:]:
                falls, _ = worse(a, b)  # the larger batch size clearly better
                conds.append(negate(falls))
                if falls:
                    drops.append(f"{b.label} better than {a.label}")
        conds.append(w)
        lines.append(f"{metric}: " + ", ".join(map(str, cells)) + f"; Spearman ρ={rho:+.2f}; "
                     f"largest vs smallest B: {how} → {word(w, 'worse', 'not clearly worse')}; "
                     + ("; ".join(drops) if drops else "no larger B clearly better than a smaller one"))
    return combine(conds), lines


def claim8(s):
    conds, lines = [], []
    for (mode, k), g in s.groupby(["mode", "K"]):
        c = {m: best(g[g["method"] == m]) for m in ("admm", "alm", "penalty")}
        if None in c.values():
            continue
        w1, how1 = worse(c["admm"], c["alm"])
        w2, how2 = worse(c["alm"], c["penalty"])
        conds += [negate(w1), negate(w2)]
        lines.append(f"{mode} K={k}: {c['admm']}, {c['alm']}, {c['penalty']}; "
                     f"admm vs alm: {how1}{' (admm worse)' if w1 else ''}; "
                     f"alm vs penalty: {how2}{' (alm worse)' if w2 else ''}")
    if not lines:
        return UNSURE, ["no column with admm, alm and penalty runs"]
    return combine(conds), lines


# (number, claim, table it reads, rule, check)
CLAIMS = [
    (1, "Batch BTPROP is roughly comparable to batch BPTT for larger K.", "table1_main",
     "Batch mode; for each K in the larger half of the K values with both BPTT and BTPROP "
     "(the largest K when there is one or two), best BTPROP is comparable to BPTT. "
     "Holds when it is at every such K.", claim1),
    (2, "More h-steps do not improve BTPROP.", "table1_main",
     "For each mode, K and BTPROP method with two or more h-step counts, no larger count is "
     "better than a smaller one (by more than 2·SE).", claim2),
    (3, "Batch BTPROP and batch BPTT are both clearly worse than their mini-batch counterparts.",
     "table1_main",
     "For each K run in both modes, batch is worse than mini-batch, for BPTT and for best "
     "BTPROP (by more than 2·SE). Needs a comparison for each of BPTT and BTPROP.",
     claim3),
    (4, "Mini-batch BTPROP gains little over BPTT.", "table1_main",
     f"Mini-batch mode; at every K, best BTPROP's perplexity is less than {SMALL_GAIN:.0%} "
     f"below BPTT's (or above it): mean(BTPROP) − mean(BPTT) > −{SMALL_GAIN:.0%}·mean(BPTT) "
     f"by more than 2·SE. It does not hold where the gain exceeds {SMALL_GAIN:.0%} by more "
     "than 2·SE.", claim4),
    (5, "That small gain comes from the penalty's regularisation, not from longer dependencies.",
     "table2_regularization",
     "At every K, the gain over BPTT of best BTPROP with n_h>0 is no larger than the gain of "
     "n_h=0 (penalty only) plus the noise, i.e. n_h=0 is not worse than best n_h>0 (2·SE).", claim5),
    (6, "BPTT is worse than BTPROP at small hidden sizes and improves relatively as the hidden "
     "size grows.", "figure_hidden",
     "With ratio = BPTT / best BTPROP valid perplexity at each hidden size (two or more sizes): "
     "BPTT is worse at the smallest size (by more than 2·SE), and the ratio of the means never "
     "rises and ends lower than it started (a trend of point estimates).", claim6),
    (7, "Larger BPTT mini-batches raise both train and test perplexity.", "table3_minibatch",
     "Train and test perplexity each: the largest batch size worse than the smallest, and no "
     "larger batch size better than a smaller one (both by 2·SE; Spearman ρ of the means shown "
     "for reference).", claim7),
    (8, "ADMM ≥ ALM ≥ penalty.", "methods",
     "In each column (mode, K) with all three: admm not worse than alm, and alm not worse than "
     "penalty (best over h-step counts). Holds when so in every such column.", claim8),
]

# Columns each table's CSV must have for its claims.
NEEDS = {
    "table1_main": ["dataset", "mode", "K", "method", "h_steps"],
    "table2_regularization": ["dataset", "K", "method", "h_steps"],
    "figure_hidden": ["dataset", "hidden", "method", "h_steps"],
    "table3_minibatch": ["dataset", "batch_size"],
    "methods": ["dataset", "mode", "K", "method", "h_steps"],
}
CLAIM_TABLES = list(NEEDS)


def evaluate_claims(summaries):
    """Verdicts for every claim and dataset.

    summaries: {table name: tidy summary DataFrame} (absent tables may be left
    out).  Returns a DataFrame with columns claim, dataset, verdict, evidence
    (a list of lines); dataset is "all" where the claim's table is missing.
    """
    datasets = sorted({d for s in summaries.values() if "dataset" in s for d in s["dataset"].dropna()})
    out = []
    for number, _, table, _, check in CLAIMS:
        s = summaries.get(table)
        lacking = [] if s is None else [
            c for c in NEEDS[table] + ["valid_mean", "valid_std", "valid_n"] if c not in s]
        if s is None or lacking:
            why = f"{table}.csv lacks columns {', '.join(lacking)}" if lacking else "no runs"
            out += [(number, d, UNSURE, [why]) for d in datasets or ["all"]]
            continue
        stats = [c for c in s if c.endswith(("_mean", "_std", "_n"))]
        s = s.assign(**{c: pd.to_numeric(s[c], errors="coerce") for c in stats})
        for d in datasets:
            rows = s[s["dataset"] == d]
            if rows.empty:
                out.append((number, d, UNSURE, ["no runs"]))
            else:
                out.append((number, d, *check(rows)))
    return pd.DataFrame(out, columns=["claim", "dataset", "verdict", "evidence"])


def across(verdicts):
    """'holds on both datasets' etc., from {dataset: verdict}, naming where it
    does not hold and where it is inconclusive."""
    if not verdicts or "all" in verdicts:
        return "no runs"
    n = len(verdicts)
    by = {v: sorted(d for d, x in verdicts.items() if x == v) for v in (HOLDS, FAILS, UNSURE)}
    k = len(by[HOLDS])
    if n == 2:
        text = "holds on " + ["neither dataset", "one dataset", "both datasets"][k]
    else:
        text = f"holds on {'all' if k == n else 'none' if k == 0 else k} of {n} datasets"
    if 0 < k < n:
        text += f" ({', '.join(by[HOLDS])})"
    for v in (FAILS, UNSURE):
        if by[v]:
            text += f"; {v} on {', '.join(by[v])}"
    return text


def claims_markdown(results, sources, command, tprnn=None, direct=None):
    """claims.md: the rules, a summary grid (claim x dataset, and across the
    datasets), then the evidence.  sources: the tables whose CSVs were read.
    `tprnn`: the verdicts of the same tables run under variant=tprnn (the
    <table>_tprnn.csv files), shown side by side; `direct`: claim 5's
    (verdict, lines) from long_range.csv, or None."""
    grid = results.pivot_table(index="claim", columns="dataset", values="verdict", aggfunc="first")
    overall = {n: across(dict(zip(g["dataset"], g["verdict"]))) for n, g in results.groupby("claim")}
    grid["across datasets"] = grid.index.map(overall)
    grid = grid.fillna("").rename(index={n: f"{n}. {text}" for n, text, *_ in CLAIMS})
    found = ", ".join(f"`{t}.csv`" for t in [*sources, *(["long_range"] if direct else [])]) or "none"
    parts = [
        "# The paper's claims, checked against the runs", "",
        f"Generated by `{command}` from the tables' CSVs in this folder (each claim reads the "
        f"table named below): {found}. A table reported again replaces its CSV, and this file "
        "is rebuilt each time the report runs.", "",
        "## Rules", "", RULES,
        "## Summary", "", grid.to_markdown(disable_numparse=True), "",
    ]
    if tprnn is not None:
        parts += both_rule_sets(results, tprnn)
    if direct:
        parts += [f"Claim 5 measured directly (`long_range`, dataset=lag): \"{DIRECT}\" "
                  f"**{direct[0]}** (see claim 5 below).", ""]
    for number, text, table, rule, _ in CLAIMS:
        parts += [f"## Claim {number}: {text}", "", f"Table: `{table}`. Rule: {rule}", "",
                  f"Across datasets: {overall.get(number, 'no runs')}.", ""]
        for _, r in results[results["claim"] == number].iterrows():
            parts.append(f"- **{r['dataset']}: {r['verdict']}**")
            parts += [f"  - {line}" for line in r["evidence"]]
        parts.append("")
        if number == 5 and direct:
            parts += direct_markdown(*direct)
    return "\n".join(parts)


def both_rule_sets(textbook, tprnn):
    """Each claim's verdict under SPEC §1 (textbook) and under the authors'
    rules (variant=tprnn, SPEC §6) side by side, with one sentence per claim.
    A claim whose table was not run under a rule set is "not run" there, not
    "inconclusive", and its sentence says so."""
    def judged(verdicts, rules):
        return verdicts[verdicts["evidence"].map(lambda e: e != ["no runs"])].assign(rules=rules)
    both = pd.concat([judged(textbook, "textbook"), judged(tprnn, "tprnn")]).pivot_table(
        index=["claim", "dataset"], columns="rules", values="verdict", aggfunc="first")
    both = both.reindex(columns=["textbook", "tprnn"]).fillna("not run")
    parts = ["## Under both rule sets", "",
             "The same tables run under `variant=tprnn` (the authors' code's rules, SPEC §6; their "
             "`<table>_tprnn.csv` here), beside SPEC §1's rules.", "",
             both.reset_index().to_markdown(index=False, disable_numparse=True), ""]
    for number, text, table, *_ in CLAIMS:
        if number not in both.index.get_level_values(0):
            continue
        rows = both.loc[number]
        judged_rows = rows[(rows["tprnn"] != "not run") & (rows["textbook"] != "not run")]
        if judged_rows.empty:
            missing = [r for r in ("textbook", "tprnn") if (rows[r] == "not run").all()]
            line = f"not judged under both rule sets ({table} not run under {' or '.join(missing)})."
        elif (judged_rows["textbook"] == judged_rows["tprnn"]).all():
            line = "the rule set does not change the verdict on " + ", ".join(judged_rows.index) + "."
        else:
            changed = [d for d, r in judged_rows.iterrows() if r["textbook"] != r["tprnn"]]
            line = "the rule set changes the verdict on " + ", ".join(changed) + "."
        parts.append(f"- Claim {number} ({text}): {line}")
    return parts + [""]


DIRECT = "BTPROP learns dependencies longer than K that BPTT(K) does not"


def direct_markdown(verdict, lines):
    """Claim 5's direct verdict from experiment=long_range (report/long_range.py)."""
    from .long_range import RULE
    return ["### Claim 5, directly: long-range dependencies measured (`long_range.csv`)", "",
            "The verdict above is indirect (h-steps against none, table 2). This one tests the "
            f"statement \"{DIRECT}\" on dataset=lag, whose floor is known; if it holds, the "
            "claim's \"not from longer dependencies\" is contradicted there, as far as BTPROP's "
            "ability goes.", "", f"Rule: {RULE}", "", f"- **lag: {verdict}**",
            *[f"  - {line}" for line in lines], ""]
