"""Turn run records into the paper's tables, its figure and the claim verdicts.

    python -m tprop_exp.report DIR [DIR ...] [--out OUTDIR] [--table NAME]

Every run under the DIRs is loaded into one DataFrame: a folder holding
`result.json` (found recursively) is a finished run; a folder with
`.hydra/config.yaml` but no `result.json` is unfinished, counted in the
provenance and never tabulated.  Runs are grouped by profile and experiment
(`config.name`, or NAME for every run with --table NAME), and each experiment
writes, atomically and world-readable:

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
    OUTDIR/<name>.tex   the same table(s) in LaTeX (booktabs), for a paper
    OUTDIR/<name>_curves.png   train and valid perplexity against epoch, per cell
                        (mean over seeds ± std), one panel per dataset and
                        mode/K/hidden as the layout has them
    OUTDIR/<name>_btprop.png   BTPROP's penalty, residual, dual norm, h-steps
                        taken and λ against epoch (experiments with BTPROP runs)
    OUTDIR/figure_hidden.png   valid perplexity against hidden size
    OUTDIR/table3_minibatch.png   train and test perplexity against mini-batch size

OUTDIR defaults to `results` for profile `sample` and for runs without a
profile, and to `results/<profile>` otherwise; given --out with runs of several profiles, each goes to OUT/<profile>.
Means are over completed runs only; diverged and failed runs are counted and
marked in the markdown.

`OUTDIR/claims.md` is rebuilt after the tables from the CSVs of the five known
tables that are in OUTDIR at that moment (see `tprop_exp.claims`), and claim 5
also directly from `long_range.csv` when it is there (report/long_range.py).  So
reporting all sweeps at once (`sweeps/*/sample`) and reporting them one at a
time give the same claims: each table's newest CSV counts, whichever command
wrote it.  Delete a table's CSV to drop it from the claims.  An OUTDIR with
none of those CSVs (e.g. only the demo) gets no claims.md.
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

import pandas as pd

from tprop_exp import UserError
from tprop_exp.run.records import write_text_atomic

from . import long_range
from .ablation import ablation_figure, ablation_markdown, ablation_summary
from .beyond import TABLES as BEYOND, markdown as beyond_markdown, sensitivity_figure
from .claims import CLAIM_TABLES, claims_markdown, evaluate_claims
from .plots import curves_figure, diagnostics_figure, hidden_figure, minibatch_figure, save
from .runs import load_runs, pooled_keys, unique, varying_keys
from .tables import KEYS, cell_keys, make_table, select, summarise, to_latex, to_markdown
from .timing import time_figure, time_table

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
    "constrained": (
        "Constrained h-optimisation: hidden size",
        "Validation perplexity of mini-batch BTPROP (ADMM, one h-step) with free states, "
        "tanh-bounded states (H = tanh(Z), method.h_param=tanh), the KL term added to the "
        "penalty (method.penalty=l2+kl), and both, against BPTT, as the hidden size grows "
        "(SPEC §7; plotted in constrained_hidden.png)."),
    "h_sensitivity": (
        "Step-size sensitivity of the h-steps",
        "Mini-batch ADMM with 1 and 5 h-steps over a grid of method.h_lr and "
        "method.h_optimizer, against 0 h-steps and BPTT (SPEC §7; plotted in "
        "h_sensitivity.png). Columns: K."),
    "time_dist": (
        "Time to quality over processes",
        "Batch BTPROP (ADMM, 0 and 1 h-steps) and BPTT trained by one process and by several "
        "(torchrun, `make time-dist`; SPEC §7). An epoch over P processes computes what one "
        "process computes, so the perplexities agree to rounding and the time to quality "
        "below is what changes. Columns: processes."),
    "long_range": (
        "Long-range dependencies, measured directly",
        "How much of a lag-D dependency each method learns on dataset=lag (SPEC §7): "
        "lag_learned = (ln V − NLL)/(ln V − H*), 0 = the lag unused (perplexity V), 1 = the "
        "floor H* reached; columns: D/K. Rows: BPTT(K), BPTT with a long unroll (the "
        "reference), BTPROP with each method and h-step count. Cells of the lag_learned "
        "tables are lag_learned, not perplexity."),
}
ABLATIONS = ("ablation", "ablation_batch")  # experiment=ablation[_batch]: report/ablation.py
GENERIC = ("Runs of experiment `{name}`",
           "One row per distinct configuration (only the config keys that vary are shown), "
           "averaged over seeds.")
CELLS = ("Cells: perplexity, mean ± std over seeds (number of seeds; just the mean for a "
         "single seed), validation perplexity unless the column says otherwise.")
FOOTNOTES = {"†": "† some seeds diverged; they are left out of the mean (see n_diverged in the CSV).",
             "‡": "‡ some seeds failed; they are left out of the mean (see n_failed in the CSV)."}


# ---------------------------------------------------------------- writing

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
        f"- Profile: {unique(done, 'profile')}",
        f"- Datasets: {unique(done, 'dataset')}",
        f"- Runs: {len(done)} finished ({status})"
        + (f", {unfinished} unfinished (not tabulated)" if unfinished else ""),
        f"- Seeds: {', '.join(map(str, seeds)) or 'unknown'}",
        f"- Commits: {unique(done, 'commit')}",
        f"- Devices: {unique(done, 'device')}",
        f"- Torch: {unique(done, 'torch')}",
        "- Run dates: " + (f"{dates.min():%Y-%m-%d %H:%M} to {dates.max():%Y-%m-%d %H:%M} UTC"
                           if len(dates) else "unknown"),
        f"- Sweep folder: `{_common_dir(runs['run_dir'])}`",
        "- Run command(s): " + "; ".join(shown),
        f"- Report command: `{command}`",
    ]
    return "\n".join(lines)


def table_markdown(name, runs, used, layout, tables, command, note="", figures=None, timing=None):
    """The .md of one experiment: `runs` are all its runs (for the provenance),
    `used` those in the `layout`'s tables."""
    title, about = ABOUT.get(name, ABOUT.get(layout, GENERIC))
    if name != layout and layout in ABOUT:  # the same layout under another rule set (SPEC §6)
        title += f", under variant={name[len(layout) + 1:]} (the authors' rules, SPEC §6)"
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
    if timing is not None:
        parts += ["## Time to quality", "",
                  "Per cell: the training seconds (evaluation not included) and tokens, summed "
                  "over epochs from metrics.jsonl, at the first epoch whose validation perplexity "
                  "is at or below BPTT's best (the lowest BPTT cell mean with the same keys of the "
                  "table's first columns: dataset, mode, lag D, K, hidden size, batch size, those "
                  "that vary; over one process where there is one; up to a relative 1e-6 "
                  "of rounding); the mean over the seeds that reached it, or \"not reached\". "
                  "Measured on the devices named in the table; runs over several processes "
                  "(`make dist`) are cells of their own.", "",
                  timing.to_markdown(index=False, disable_numparse=True), ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{about}]({file})" for file, about in figures.items()] + [""]
    return "\n".join(parts)


def load_summaries(outdir, suffix=""):
    """{table: summary} from the known tables' CSVs in outdir (`suffix`
    "_tprnn": those run under variant=tprnn)."""
    paths = {t: Path(outdir) / f"{t}{suffix}.csv" for t in (*CLAIM_TABLES, *BEYOND)}
    return {t: pd.read_csv(p) for t, p in paths.items() if p.exists()}


def write_figures(name, layout, runs, summary, outdir):
    """The experiment's PNGs: {file name: what it shows}."""
    title = ABOUT.get(name, GENERIC)[0].format(name=name)
    keys = cell_keys(runs, layout)
    figures = {
        f"{name}_curves.png": ("Learning curves: train and valid perplexity against epoch",
                               curves_figure(runs, summary, keys, f"{title}: learning curves")),
        f"{name}_btprop.png": ("BTPROP diagnostics against epoch",
                               diagnostics_figure(runs, summary, keys, f"{title}: BTPROP diagnostics")),
    }
    if layout == "figure_hidden":
        figures["figure_hidden.png"] = ("Validation perplexity against hidden size", hidden_figure(
            summary, runs, "Validation perplexity against hidden size"))
    if layout == "constrained":
        figures["constrained_hidden.png"] = ("Validation perplexity against hidden size, constrained "
                                             "BTPROP", hidden_figure(summary, runs, title))
    if layout == "h_sensitivity":
        figures["h_sensitivity.png"] = ("Validation perplexity against h_lr",
                                        sensitivity_figure(summary, runs, title))
    figures[f"{name}_time.png"] = ("Validation perplexity against training seconds and tokens",
                                   time_figure(runs, summary, keys, f"{title}: time to quality"))
    if layout == "table3_minibatch":
        figures["table3_minibatch.png"] = ("Train and test perplexity against mini-batch size",
                                           minibatch_figure(summary, runs, f"{title}: BPTT"))
    if layout == "long_range":
        import matplotlib.pyplot as plt
        figures["long_range.png"] = ("lag_learned against D/K, one line per method (± std over seeds)",
                                     long_range.figure(summary, title, plt))
    done = {}
    for file, (about, fig) in figures.items():
        if fig is not None:
            save(fig, Path(outdir) / file)
            done[file] = about
    return done


def write_report(runs, outdir, command, echo=False):
    """Write every experiment's CSV, markdown and figures, then claims.md
    from all table CSVs in outdir.  Returns the paths written."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    finished = runs[runs["status"] != "unfinished"]
    ablation = runs["experiment"].isin(ABLATIONS)
    if (ablation & (runs["status"] != "unfinished")).any():  # one report of both sweeps
        written += write_ablation(runs[ablation], outdir, command, echo)
    # One report per experiment and rule set: <name> (textbook), <name>_<rules> (SPEC §6).
    for name, rules in sorted(set(zip(finished["experiment"], finished["rules"]))):
        if name in ABLATIONS:
            continue
        exp = runs[(runs["experiment"] == name) & (runs["rules"] == rules)]
        layout = name
        name = name if rules == "textbook" else f"{name}_{rules}"
        used, note = select(exp, layout)
        if (used["status"] != "unfinished").sum() == 0:  # nothing fits: show the runs plainly
            used, layout, note = exp, "generic", f"no run fits the {layout} layout; shown plainly."
        summary = summarise(used, layout)
        if layout == "long_range":  # D/K and its own row labels, in the CSV too
            summary = long_range.decorate(summary)
        figures = write_figures(name, layout, used, summary, outdir)
        tables = make_table(summary, layout)
        timing = time_table(used, summary, cell_keys(used, layout))
        md = table_markdown(name, exp, used, layout, tables, command, note, figures, timing)
        written += [write_text_atomic(outdir / f"{name}.csv", summary.to_csv(index=False)),
                    write_text_atomic(outdir / f"{name}.md", md),
                    write_text_atomic(outdir / f"{name}.tex", to_latex(tables, ABOUT.get(name, GENERIC)[0]
                                                                        .format(name=name)))] \
            + [outdir / f for f in figures]
        if echo:
            print(md)
    summaries = load_summaries(outdir)
    lag = Path(outdir) / f"{long_range.NAME}.csv"
    direct = long_range.claim5_direct(pd.read_csv(lag)) if lag.exists() else None
    if summaries or direct:  # a folder of other experiments only (e.g. the demo) gets no claims.md
        paper = {t: s for t, s in summaries.items() if t in CLAIM_TABLES}
        tprnn = {t: s for t, s in load_summaries(outdir, "_tprnn").items() if t in CLAIM_TABLES}
        text = claims_markdown(evaluate_claims(paper), list(summaries), command,
                               evaluate_claims(tprnn) if tprnn else None, direct) if paper or direct else (
            f"# Claims, checked against the runs\n\nGenerated by `{command}` from the CSVs in this "
            "folder; none of the paper's tables is here, so only SPEC §7's verdicts follow "
            "(their rules use the paper claims' rules: see a claims.md with the paper's tables).\n")
        text += "\n".join(["", "# Beyond the paper (SPEC §7)", "", *beyond_markdown(summaries)]) \
            if any(t in summaries for t in BEYOND) else ""
        written.append(write_text_atomic(outdir / "claims.md", text))
        if echo:
            print(text)
    return written


def write_ablation(runs, outdir, command, echo=False):
    """results/ablation.csv, .md and .png (report/ablation.py)."""
    summary = ablation_summary(runs[runs["status"] != "unfinished"])
    md = ablation_markdown(summary, provenance(runs, command))
    written = [write_text_atomic(outdir / "ablation.csv", summary.to_csv(index=False)),
               write_text_atomic(outdir / "ablation.md", md)]
    fig = ablation_figure(summary)
    if fig is not None:
        written.append(save(fig, outdir / "ablation.png"))
    if echo:
        print(md)
    return written


def main(argv=None, prog="python -m tprop_exp.report"):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", metavar="DIR", help="sweep or run folders")
    p.add_argument("--out", help="output folder (default: results, or results/<profile> for profile=paper)")
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
    profiles = sorted(finished["profile"].unique())
    for profile in profiles:
        if args.out:
            outdir = Path(args.out) / profile if len(profiles) > 1 else Path(args.out)
        else:
            outdir = Path("results") if profile in ("sample", "none") else Path("results") / profile
        paths = write_report(runs[runs["profile"] == profile], outdir, command, echo=True)
        print("report: wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0

