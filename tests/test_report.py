"""The report stage: synthetic run folders with known numbers in, known tables out."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from tprop_exp.report import write as report  # noqa: E402
from tprop_exp.report import plots
from tprop_exp.report import tables  # noqa: E402
from tprop_exp.report.claims import Cell, across, comparable, evaluate_claims, worse  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

BASE = {
    "name": "table1_main", "profile": {"name": "sample"},
    "dataset": {"name": "sample_chars", "level": "char"},
    "arch": {"cell": "lstm", "hidden_size": 64, "num_layers": 1, "init_range": 0.1},
    "method": {"name": "bptt", "mode": "minibatch", "block_size": 10, "h_steps": 1,
               "theta_steps": 1, "h_lr": 1.0, "h_optimizer": "adagrad", "lam": 1.0,
               "lam_mult": 1.0, "u_lr": 0.1, "u_start_epoch": 3, "init": "forward"},
    "train": {"batch_size": 32, "optimizer": "sgd", "lr": 1.0, "clip": 0.5, "max_epochs": 5,
              "patience": 5, "seed": 1, "device": "cpu", "eval_batch_size": 32},
}


def make_run(sweep, valid, status="completed", test=None, train=None, finished=True, history=None,
             **keys):
    """A run folder; keys like method__name="admm" set config entries;
    history: the per-epoch rows of metrics.jsonl (default: one epoch)."""
    cfg = copy.deepcopy(BASE)
    for key, value in keys.items():
        *parents, leaf = key.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    run = Path(sweep) / "_".join(f"{k}={v}" for k, v in sorted(keys.items()))
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([]))
    if not finished:
        return run
    history = history or [{"epoch": 1, "train_ppl": 1.0, "valid_ppl": valid}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    result = {"status": status, "best_valid_ppl": valid, "test_ppl": test, "train_ppl": train,
              "epochs": 3, "wall_s": 1.0, "train_tokens_per_s": 1000.0, "config": cfg,
              "commit": "abc123", "torch": "2.5", "device": "cpu (test)",
              "command": "python -m tprop_exp -m experiment=x", "date": "2025-01-02T03:04:05+00:00"}
    if status == "failed":
        result["error"] = "boom"
    (run / "result.json").write_text(json.dumps(result))
    return run


def table1_sweep(root):
    sweep = root / "sweeps" / "table1_main" / "sample"
    for seed, v in [(1, 100.0), (2, 102.0), (3, 104.0)]:
        make_run(sweep, v, method__mode="batch", train__seed=seed)
    for seed, v in [(1, 90.0), (2, 92.0)]:
        make_run(sweep, v, train__seed=seed)
    make_run(sweep, 98.0, method__mode="batch", method__block_size=20)
    for seed, v in [(1, 101.0), (2, 103.0)]:
        make_run(sweep, v, method__name="admm", method__mode="batch", train__seed=seed)
    make_run(sweep, 95.0, method__name="admm", method__h_steps=5, method__block_size=20)
    make_run(sweep, 3.5, dataset__name="sample_words")
    return sweep


def test_table1_layout_and_numbers(tmp_path):
    runs = report.load_runs([table1_sweep(tmp_path)])
    summary = report.summarise(runs, "table1_main")
    tables = report.make_table(summary, "table1_main")
    assert list(tables) == ["sample_chars", "sample_words"]
    t = tables["sample_chars"]
    assert list(t.index) == ["BPTT", "BTPROP (n_h=1)", "BTPROP (n_h=5)"]
    assert list(t.columns.names) == ["mode", "K"]
    assert list(t.columns) == [("batch", 10), ("batch", 20), ("minibatch", 10), ("minibatch", 20)]
    assert t.loc["BPTT", ("batch", 10)] == "102.0 ± 2.0 (3)"
    assert t.loc["BPTT", ("minibatch", 10)] == "91.0 ± 1.4 (2)"
    assert t.loc["BPTT", ("batch", 20)] == "98.0"  # one seed: just the mean
    assert t.loc["BTPROP (n_h=1)", ("batch", 10)] == "102.0 ± 1.4 (2)"
    assert t.loc["BTPROP (n_h=5)", ("minibatch", 20)] == "95.0"
    assert t.loc["BTPROP (n_h=5)", ("batch", 10)] == "–"
    assert tables["sample_words"].loc["BPTT", ("minibatch", 10)] == "3.50"

    row = summary[(summary["dataset"] == "sample_chars") & (summary["method"] == "bptt")
                  & (summary["mode"] == "batch") & (summary["K"] == 10)].iloc[0]
    assert (row["valid_mean"], row["valid_std"], row["valid_n"], row["seeds"]) == (102.0, 2.0, 3, "1 2 3")


def test_written_files_and_csv_round_trip(tmp_path):
    runs = report.load_runs([table1_sweep(tmp_path)])
    out = tmp_path / "out"
    paths = report.write_report(runs, out, "python -m tprop_exp.report X")
    assert sorted(p.name for p in paths) == ["claims.md", "table1_main.csv", "table1_main.md",
                                             "table1_main.tex", "table1_main_curves.png"]
    tex = (out / "table1_main.tex").read_text()  # LaTeX of every table: one tabular per dataset
    assert tex.count(r"\begin{tabular}") == 2 and r"\toprule" in tex
    assert r"102.0 $\pm$ 2.0 (3)" in tex and "K=10" in tex and "sample\\_words" in tex
    csv = pd.read_csv(out / "table1_main.csv")
    cell = csv[(csv["label"] == "BTPROP (n_h=1)") & (csv["mode"] == "batch")].iloc[0]
    assert (cell["valid_mean"], cell["valid_n"], cell["K"]) == (102.0, 2, 10)
    md = (out / "table1_main.md").read_text()
    assert md.startswith("# Table 1: main results")
    assert "python -m tprop_exp.report X" in md and "abc123" in md and "cpu (test)" in md
    assert "| BPTT " in md and "batch K=10" in md and "minibatch K=20" in md
    assert "## sample_words" in md
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_diverged_and_failed_runs_are_marked_not_averaged(tmp_path):
    sweep = tmp_path / "s"
    make_run(sweep, 100.0, train__seed=1)
    make_run(sweep, 110.0, train__seed=2)
    make_run(sweep, 5.0, status="diverged", train__seed=3)  # would pull the mean down
    make_run(sweep, None, status="diverged", method__block_size=20)
    make_run(sweep, None, status="failed", method__block_size=40)
    runs = report.load_runs([sweep])
    summary = report.summarise(runs, "table1_main")
    t = report.make_table(summary, "table1_main")["sample_chars"]
    assert t.loc["BPTT", ("minibatch", 10)] == "105.0 ± 7.1 (2) †"
    assert t.loc["BPTT", ("minibatch", 20)] == "diverged"
    assert t.loc["BPTT", ("minibatch", 40)] == "failed"
    k10 = summary[summary["K"] == 10].iloc[0]
    assert (k10["valid_mean"], k10["n_diverged"], k10["n_runs"]) == (105.0, 1, 3)
    report.write_report(runs, tmp_path / "out", "cmd")
    md = (tmp_path / "out" / "table1_main.md").read_text()
    assert "† some seeds diverged" in md and "‡" not in md


def test_unfinished_run_is_counted_not_tabulated(tmp_path):
    sweep = tmp_path / "s"
    make_run(sweep, 100.0)
    make_run(sweep, None, finished=False, method__block_size=20)
    runs = report.load_runs([sweep])
    assert sorted(runs["status"]) == ["completed", "unfinished"]
    summary = report.summarise(runs, "table1_main")
    assert list(summary["K"]) == [10]
    report.write_report(runs, tmp_path / "out", "cmd")
    md = (tmp_path / "out" / "table1_main.md").read_text()
    assert "1 unfinished (not tabulated)" in md and "K=20" not in md


def test_runs_differing_beyond_the_keys_are_flagged(tmp_path):
    sweep = tmp_path / "s"
    make_run(sweep, 100.0, train__lr=1.0, train__seed=1)
    make_run(sweep, 110.0, train__lr=2.0, train__seed=2)
    runs = report.load_runs([sweep])
    report.write_report(runs, tmp_path / "out", "cmd")
    md = (tmp_path / "out" / "table1_main.md").read_text()
    assert "runs that differ in config.train.lr share a cell" in md
    assert "105.0 ± 7.1 (2)" in md


def test_table3_layout(tmp_path):
    sweep = tmp_path / "s"
    for d, scale in [("sample_chars", 1.0), ("sample_words", 100.0)]:
        for b in (16, 64):
            for seed in (1, 2):
                make_run(sweep, scale * b / 10 + seed, train=scale * b / 20 + seed,
                         test=scale * b / 5 + seed, name="table3_minibatch", dataset__name=d,
                         train__batch_size=b, train__seed=seed)
    make_run(sweep, 1.0, name="table3_minibatch", method__name="admm")  # not BPTT: left out
    runs = report.load_runs([sweep])
    used, note = report.select(runs, "table3_minibatch")
    assert len(used) == 8 and "1 run(s) left out" in note
    t = report.make_table(report.summarise(used, "table3_minibatch"), "table3_minibatch")[""]
    assert list(t.index) == [16, 64]
    assert list(t.columns) == [(d, m) for d in ("sample_chars", "sample_words")
                               for m in ("train ppl", "test ppl", "valid ppl")]
    assert t.loc[16, ("sample_chars", "train ppl")] == "2.30 ± 0.71 (2)"
    assert t.loc[64, ("sample_words", "test ppl")] == "1281.5 ± 0.7 (2)"
    assert t.loc[64, ("sample_chars", "valid ppl")] == "7.90 ± 0.71 (2)"


def test_figure_hidden_png_and_table(tmp_path):
    sweep = tmp_path / "s"
    for h, (bp, bt) in {32: (120.0, 110.0), 64: (100.0, 97.0), 128: (90.0, 89.0)}.items():
        for seed in (1, 2):
            make_run(sweep, bp + seed, name="figure_hidden", arch__hidden_size=h, train__seed=seed)
            make_run(sweep, bt + seed, name="figure_hidden", arch__hidden_size=h, train__seed=seed,
                     method__name="admm")
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    png = out / "figure_hidden.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = plt.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    t = report.make_table(pd.read_csv(out / "figure_hidden.csv"), "figure_hidden")[""]
    assert list(t.index) == [32, 64, 128]
    assert list(t.columns) == [("sample_chars", "BPTT"), ("sample_chars", "BTPROP (n_h=1)")]
    assert t.loc[32, ("sample_chars", "BPTT")] == "121.5 ± 0.7 (2)"
    # the ratio 121.5/111.5 > 1 falls as hidden grows: claim 6 holds
    assert "- **sample_chars: holds**" in (out / "claims.md").read_text().split("## Claim 6")[1]


def test_empty_dir_exits_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "tprop_exp.report", "empty"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip() == "report: no runs (result.json) under empty"
    assert p.stdout == "" and not (tmp_path / "results").exists()


def test_cli_all_sweeps_default_outdirs_and_demo(tmp_path):
    table1_sweep(tmp_path)
    demo = tmp_path / "sweeps" / "demo" / "sample"
    make_run(demo, 50.0, test=51.0, train=40.0, name="demo", train__lr=0.5)
    make_run(demo, 60.0, test=61.0, train=45.0, name="demo", train__lr=2.0)
    make_run(tmp_path / "sweeps" / "methods" / "paper", 70.0, name="methods", profile__name="paper",
             method__name="alm")
    dirs = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "sweeps").glob("*/*"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "tprop_exp.report", *dirs], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    res = tmp_path / "results"
    assert {f.name for f in res.iterdir()} >= {"table1_main.md", "table1_main.csv", "demo.md",
                                              "demo.csv", "claims.md", "paper"}
    assert (res / "paper" / "methods.md").exists() and (res / "paper" / "claims.md").exists()
    # the demo table: the varying key (lr) and the metrics, printed to stdout too
    assert "| train.lr" in p.stdout and "| 0.5 " in p.stdout and "| 60.0 " in p.stdout
    assert "# Table 1: main results" in p.stdout


def test_demo_only_gets_generic_table_and_no_claims(tmp_path, capsys):
    sweep = tmp_path / "demo"
    make_run(sweep, 50.0, test=51.0, train=40.0, name="demo", train__seed=1)
    make_run(sweep, 52.0, test=53.0, train=42.0, name="demo", train__seed=2)
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    assert sorted(f.name for f in out.iterdir()) == ["demo.csv", "demo.md", "demo.tex", "demo_curves.png"]
    printed = capsys.readouterr().out
    assert "| 51.0 ± 1.4 (2) " in printed and "| 2 completed " in printed


def test_own_sweep_without_profile_goes_to_results(tmp_path, monkeypatch, capsys):
    # a user's sweep (no profile): results/<name>.*, not results/unknown/; the key is named
    sweep = tmp_path / "sweeps" / "small_gru"
    for k, v in ((10, 50.0), (20, 52.0)):
        make_run(sweep, v, test=v, train=v, name="small_gru", profile=None, method__block_size=k)
    monkeypatch.chdir(tmp_path)
    assert report.main(["sweeps/small_gru"]) == 0
    assert sorted(f.name for f in (tmp_path / "results").iterdir()) == [
        "small_gru.csv", "small_gru.md", "small_gru.tex", "small_gru_curves.png"]
    assert "- Profile: none" in capsys.readouterr().out
    assert plots._fmt("config.method.block_size", 10) == "K=10"  # legend entry: a short name
    assert plots._fmt("config.method.name", "admm") == "admm"


def summ(rows, **common):
    """A tidy summary as the CSVs hold it, from (method, h_steps, mean, std, n) rows."""
    recs = [{**common, "method": m, "h_steps": h, "valid_mean": mean, "valid_std": std,
             "valid_n": n} for m, h, mean, std, n in rows]
    return pd.DataFrame(recs)


def verdict(results, claim, dataset="d"):
    return results[(results["claim"] == claim) & (results["dataset"] == dataset)].iloc[0]


def test_claims_hold_fail_and_inconclusive():
    holds = pd.concat([
        summ([("bptt", None, 100.0, 1.0, 3), ("admm", 1, 102.0, 1.0, 3), ("admm", 5, 101.5, 1.0, 3)],
             dataset="d", mode="batch", K=20),
        summ([("bptt", None, 80.0, 1.0, 3), ("admm", 1, 79.0, 1.0, 3), ("admm", 5, 79.5, 1.0, 3)],
             dataset="d", mode="minibatch", K=20)])
    r = evaluate_claims({"table1_main": holds})
    assert verdict(r, 1)["verdict"] == "holds"     # 101.5 vs 100: within 5%
    assert verdict(r, 2)["verdict"] == "holds"     # n_h=5 never better by > pooled std 1.0
    assert verdict(r, 3)["verdict"] == "holds"     # batch 100/101.5 vs mini-batch 80/79
    assert verdict(r, 4)["verdict"] == "holds"     # gain 1.25% < 5%
    assert verdict(r, 8)["verdict"] == "inconclusive" and verdict(r, 8)["evidence"] == ["no runs"]

    fails = holds.copy()
    fails.loc[(fails["mode"] == "batch") & (fails["h_steps"] == 5), "valid_mean"] = 90.0
    fails.loc[(fails["mode"] == "minibatch") & (fails["method"] == "admm"), "valid_mean"] = 70.0
    r = evaluate_claims({"table1_main": fails})
    assert verdict(r, 1)["verdict"] == "does not hold"  # 90 vs 100: 10% apart
    assert verdict(r, 2)["verdict"] == "does not hold"  # n_h=5 90 beats n_h=1 102
    assert verdict(r, 4)["verdict"] == "does not hold"  # gain 12.5%

    single = summ([("admm", 1, 120.0, None, 1), ("alm", 1, 100.0, None, 1), ("penalty", 1, 104.0, None, 1)],
                  dataset="d", mode="minibatch", K=10)
    r8 = verdict(evaluate_claims({"methods": single}), 8)  # 20% apart, but one seed each
    assert r8["verdict"] == "inconclusive" and "single seed" in r8["evidence"][0]

    # admm 1 above alm with std 2 over 3 seeds: 2·SE = 3.27, within the noise
    seeds = summ([("admm", 1, 101.0, 2.0, 3), ("alm", 1, 100.0, 2.0, 3), ("penalty", 1, 104.0, 2.0, 3)],
                 dataset="d", mode="minibatch", K=10)
    assert verdict(evaluate_claims({"methods": seeds}), 8)["verdict"] == "holds"
    seeds.loc[0, "valid_mean"] = 105.0  # now 5 above alm: more than 2·SE
    r8 = verdict(evaluate_claims({"methods": seeds}), 8)
    assert r8["verdict"] == "does not hold" and "(admm worse)" in r8["evidence"][0]


def test_claims_5_and_6():
    t2 = summ([("bptt", None, 100.0, 1.0, 3), ("penalty", 0, 97.0, 1.0, 3), ("admm", 1, 96.5, 1.0, 3)],
              dataset="d", K=10)
    assert verdict(evaluate_claims({"table2_regularization": t2}), 5)["verdict"] == "holds"
    t2.loc[2, "valid_mean"] = 94.0  # h-steps now add 3 > pooled std 1 beyond the penalty's gain
    assert verdict(evaluate_claims({"table2_regularization": t2}), 5)["verdict"] == "does not hold"

    fig = pd.concat([summ([("bptt", None, bp, 1.0, 2), ("admm", 1, bt, 1.0, 2)], dataset="d", hidden=h)
                     for h, bp, bt in [(32, 120.0, 110.0), (64, 100.0, 95.0), (128, 90.0, 89.0)]])
    assert verdict(evaluate_claims({"figure_hidden": fig}), 6)["verdict"] == "holds"
    fig.loc[(fig["hidden"] == 128) & (fig["method"] == "bptt"), "valid_mean"] = 110.0  # ratio rises
    assert verdict(evaluate_claims({"figure_hidden": fig}), 6)["verdict"] == "does not hold"
    one = fig[fig["hidden"] == 32]
    assert verdict(evaluate_claims({"figure_hidden": one}), 6)["verdict"] == "inconclusive"


def test_claims_accumulate_from_csvs_across_reports(tmp_path):
    sweep3 = tmp_path / "t3"
    # words: test rises overall (3 -> 4) but not monotonically, so the claim fails
    for d, test_32 in [("sample_chars", 4.0), ("sample_words", 6.0)]:
        for b, train, test in [(16, 2.0, 3.0), (32, 2.5, test_32), (64, 3.0, 5.0 if d == "sample_chars" else 4.0)]:
            for seed in (1, 2):  # a small spread over two seeds
                make_run(sweep3, 5.0, train=train + 0.01 * seed, test=test + 0.01 * seed,
                         name="table3_minibatch", dataset__name=d, train__batch_size=b,
                         train__seed=seed)
    out = tmp_path / "out"
    assert report.main([str(sweep3), "--out", str(out)]) == 0
    assert report.main([str(table1_sweep(tmp_path)), "--out", str(out)]) == 0
    claims = (out / "claims.md").read_text()
    c7 = claims.split("## Claim 7")[1].split("## Claim 8")[0]
    assert "- **sample_chars: holds**" in c7 and "- **sample_words: does not hold**" in c7
    c1 = claims.split("## Claim 1")[1].split("## Claim 2")[0]
    assert "no runs" not in c1.split("sample_chars")[1].split("\n")[0]  # table 1 was read too
    c8 = claims.split("## Claim 8")[1]
    assert "inconclusive**" in c8 and "no runs" in c8


def test_worse_and_comparable_use_the_spread_over_seeds():
    b = Cell("b", 100.0, 2.0, 2)
    # SE = sqrt(4/2 + 4/2) = 2, so "worse" needs a difference above 4
    assert worse(Cell("a", 103.0, 2.0, 2), b)[0] is False  # above the pooled std 2, below 2·SE
    assert worse(Cell("a", 104.5, 2.0, 2), b)[0] is True
    assert worse(Cell("a", 95.0, 2.0, 2), b)[0] is False   # better is not worse
    assert worse(Cell("a", 150.0, None, 1), b)[0] is None   # single seed: inconclusive
    assert worse(Cell("a", 150.0, float("nan"), 1), Cell("b", 100.0, float("nan"), 1))[0] is None
    # comparable: d ± 2·SE within ±5% of b's mean
    assert comparable(Cell("a", 101.0, 0.5, 2), b)[0] is True    # 1 ± 4.1 within ±5
    assert comparable(Cell("a", 102.0, 2.0, 2), b)[0] is None    # 2 ± 4 reaches 6: unsure
    assert comparable(Cell("a", 110.0, 2.0, 2), b)[0] is False   # 10 ± 4 wholly above 5
    assert comparable(Cell("a", 101.0, None, 1), b)[0] is None


def test_across_datasets_line():
    assert across({"x": "holds", "y": "holds"}) == "holds on both datasets"
    assert across({"x": "holds", "y": "does not hold"}) == \
        "holds on one dataset (x); does not hold on y"
    assert across({"x": "inconclusive", "y": "does not hold"}) == \
        "holds on neither dataset; does not hold on y; inconclusive on x"
    assert across({"x": "holds", "y": "holds", "z": "inconclusive"}) == \
        "holds on 2 of 3 datasets (x, y); inconclusive on z"
    assert across({"all": "inconclusive"}) == "no runs"


def epochs(valid, n=3, btprop=True, dual=True):
    """metrics.jsonl rows: perplexities falling with the epoch, BTPROP's own terms."""
    rows = []
    for e in range(1, n + 1):
        row = {"epoch": e, "train_ppl": valid * (1.2 - 0.05 * e), "valid_ppl": valid * (1.1 - 0.03 * e),
               "lr": 1.0, "tokens_per_s": 1e4, "seconds": 1.0}
        if btprop:
            row.update(ce=5.0 / e, penalty=0.1 / e, residual=0.3 / e, h_steps=1.0, lam=1.0)
            if dual:
                row["dual_norm"] = 0.01 * e
        rows.append(row)
    return rows


def curve_sweep(root):
    """table1-like: 2 datasets x 2 modes (K=10), BPTT and admm n_h=1, 2 seeds, 3 epochs."""
    sweep = root / "curves"
    for d in ("sample_chars", "sample_words"):
        for mode in ("batch", "minibatch"):
            for seed in (1, 2):
                make_run(sweep, 100.0 + seed, dataset__name=d, method__mode=mode, train__seed=seed,
                         history=epochs(100.0 + seed, btprop=False))
                make_run(sweep, 98.0 + seed, dataset__name=d, method__mode=mode, train__seed=seed,
                         method__name="admm", history=epochs(98.0 + seed, dual=mode == "batch"))
    return sweep


def visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_curve_and_diagnostic_figures(tmp_path):
    runs = report.load_runs([curve_sweep(tmp_path)])
    summary = tables.summarise(runs, "table1_main")
    keys = tables.cell_keys(runs, "table1_main")
    fig = plots.curves_figure(runs, summary, keys, "t")
    panels = visible(fig)
    assert sorted(ax.get_title() for ax in panels) == sorted(
        f"{d} · {m} · K=10" for d in ("sample_chars", "sample_words") for m in ("batch", "minibatch"))
    ax = panels[0]
    assert ax.get_ylabel() == "perplexity (log scale)" and ax.get_yscale() == "log"
    mode = ax.get_title().split(" · ")[1]  # each panel holds one mode: its x-axis says what an epoch is
    assert ax.get_xlabel() == {"batch": "epoch (batch mode: one update per epoch)",
                               "minibatch": "epoch (mini-batch mode: a pass over the data)"}[mode]
    assert len([t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]) >= 3  # labelled ticks
    assert len(ax.get_lines()) == 4  # BPTT and BTPROP, train and valid
    bptt_valid = ax.get_lines()[0]
    assert list(bptt_valid.get_xdata()) == [1, 2, 3]
    # the mean over seeds 101 and 102 at epoch 1: 101.5 * 1.07
    assert abs(bptt_valid.get_ydata()[0] - 101.5 * 1.07) < 1e-9
    assert len(ax.collections) == 4  # a band for each line: two seeds
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["BPTT", "BTPROP (n_h=1)", "valid", "train"]
    assert "profile: sample · device: cpu (test)" in fig._suptitle.get_text()
    assert "± 1 standard deviation over seeds" in fig._suptitle.get_text()  # the band, explained
    plt.close(fig)

    fig = plots.diagnostics_figure(runs, summary, keys, "t")
    titles = [ax.get_title() for ax in visible(fig)]
    # datasets x (penalty, residual, dual norm): h-steps and λ are constant here, so not drawn
    assert len(titles) == 2 * 3
    assert r"sample_words: dual norm $\|u\|$" in titles and not any("{" in t and "$" not in t for t in titles)
    plt.close(fig)
    # a residual at float rounding (1e-16) is no value: its panel goes too
    for d in runs.loc[runs["method"] == "admm", "run_dir"]:
        rows = [json.loads(line) for line in (Path(d) / "metrics.jsonl").read_text().splitlines()]
        (Path(d) / "metrics.jsonl").write_text("".join(json.dumps({**r, "residual": 1e-16}) + "\n" for r in rows))
    fig = plots.diagnostics_figure(runs, summary, keys, "t")
    assert not any("residual" in ax.get_title() for ax in visible(fig))
    plt.close(fig)
    # a run without BTPROP columns (today's metrics) draws no diagnostics, and no error
    bptt = runs[runs["method"] == "bptt"]
    assert plots.diagnostics_figure(bptt, tables.summarise(bptt, "table1_main"), keys, "t") is None


def test_report_writes_every_png_world_readable(tmp_path):
    sweep = curve_sweep(tmp_path)
    for d in ("sample_chars", "sample_words"):
        for b in (4, 16, 64):
            for seed in (1, 2):
                make_run(sweep, 10.0 + b, train=9.0 + b, test=11.0 + b, name="table3_minibatch",
                         dataset__name=d, train__batch_size=b, train__seed=seed,
                         history=epochs(10.0 + b, btprop=False))
    for h in (16, 32):
        make_run(sweep, 50.0 / h, name="figure_hidden", arch__hidden_size=h)
    out = tmp_path / "out"
    old = os.umask(0o077)  # the files must be readable by all even so
    try:
        assert report.main([str(sweep), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    pngs = {"table1_main_curves.png", "table1_main_btprop.png", "table3_minibatch_curves.png",
            "table3_minibatch.png", "figure_hidden_curves.png", "figure_hidden.png",
            "table1_main_time.png", "table3_minibatch_time.png"}  # time to quality: runs with seconds
    assert {f.name for f in out.glob("*.png")} == set(pngs)
    for f in out.iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and plt.imread(out / name).shape[0] > 100
    md = (out / "table1_main.md").read_text()
    assert "![Learning curves" in md and "(table1_main_btprop.png)" in md
    # panel counts of the figures drawn from the written CSV
    t3 = pd.read_csv(out / "table3_minibatch.csv")
    runs = report.load_runs([sweep])
    fig = plots.minibatch_figure(t3, runs, "t")
    assert [ax.get_title() for ax in fig.axes] == ["sample_chars", "sample_words"]
    assert fig.axes[0].get_xscale() == "log"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == \
        ["train perplexity", "test perplexity"]
    plt.close(fig)
