"""SPEC §7 in the report: time to quality (computed by hand from metrics.jsonl
rows), the constrained-hypothesis verdict and the sensitivity verdicts."""
import json

import pandas as pd

from tprop_exp.report import beyond, timing
from tprop_exp.report import tables
from tprop_exp.report.runs import load_runs
from tprop_exp.report.stats import FAILS, HOLDS, UNSURE

from test_report import make_run


def hist(valids, seconds, tps):
    return [{"epoch": e + 1, "train_ppl": 1.0, "valid_ppl": v, "seconds": s, "tokens_per_s": t}
            for e, (v, s, t) in enumerate(zip(valids, seconds, tps))]


def test_time_to_quality_by_hand(tmp_path):
    sweep = tmp_path / "s"
    # BPTT: best 10.0 (seed 1) and 12.0 (seed 2): the target is the cell mean, 11.0
    make_run(sweep, 10.0, train__seed=1, history=hist([14, 12, 10], [2, 2, 2], [100, 100, 100]))
    make_run(sweep, 12.0, train__seed=2, history=hist([15, 13, 12], [2, 2, 2], [100, 100, 100]))
    # ADMM: seed 1 reaches 11.0 at epoch 2 (3 + 4 s; 3·50 + 4·50 tokens), seed 2 never
    make_run(sweep, 10.5, method__name="admm", train__seed=1, history=hist([13, 10.5], [3, 4], [50, 50]))
    make_run(sweep, 11.5, method__name="admm", train__seed=2, history=hist([13, 11.5], [3, 4], [50, 50]))
    # ADMM over 2 processes: its own cell; never reaches
    run = make_run(sweep, 12.5, method__name="admm", method__h_steps=5, history=hist([12.5], [1], [10]))
    rec = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**rec, "world": 2}))
    runs = load_runs([sweep])
    summary = tables.summarise(runs, "table1_main")
    t = timing.time_table(runs, summary, tables.cell_keys(runs, "table1_main")).set_index("method")
    assert t.loc["BTPROP (n_h=1)", "BPTT best valid ppl"] == "11.00"
    assert t.loc["BTPROP (n_h=1)", "seeds reaching"] == "1/2"
    assert t.loc["BTPROP (n_h=1)", "seconds"] == "7.0"
    assert t.loc["BTPROP (n_h=1)", "tokens"] == "350"
    assert t.loc["BPTT", "seeds reaching"] == "1/2" and t.loc["BPTT", "seconds"] == "6.0"
    two = t.loc["BTPROP (n_h=5) (2 processes)"]
    assert two["processes"] == 2 and two["seconds"] == "not reached"
    assert timing.time_figure(runs, summary, tables.cell_keys(runs, "table1_main"), "t") is not None


def srow(method, h, mean, std=0.1, n=3, **kw):
    return {"dataset": "d", "K": 5, "method": method, "h_steps": h, "valid_mean": mean,
            "valid_std": std, "valid_n": n, **kw}


def test_sensitivity_verdicts_per_grid_point():
    rows = [srow("bptt", None, 100.0), srow("admm", 0, 99.0)]
    for lr in (0.1, 1.0, 10.0):
        # at lr 10, 5 h-steps clearly beat 1 (claim 2 fails there); elsewhere equal
        rows += [srow("admm", 1, 99.0, h_optimizer="sgd", h_lr=lr),
                 srow("admm", 5, 90.0 if lr == 10.0 else 99.0, h_optimizer="sgd", h_lr=lr)]
    s = pd.DataFrame(rows)
    v, lines, summary = beyond.sensitivity_check(s, 2)
    assert v == FAILS and "holds only at sgd 0.1, sgd 1" in summary and "does not hold at sgd 10" in summary
    assert len(lines) == 3
    v, _, summary = beyond.sensitivity_check(s[s["h_lr"].fillna(1.0) != 10.0], 2)
    assert v == HOLDS and summary == "holds at every step size"
    # a point whose n_h = 5 row has a single seed cannot be judged: named as inconclusive
    one = s.copy()
    one.loc[(one["h_lr"] == 0.1) & (one["h_steps"] == 5), ["valid_n", "valid_std"]] = [1, float("nan")]
    v, _, summary = beyond.sensitivity_check(one, 2)
    assert v == FAILS and summary == "holds only at sgd 1; does not hold at sgd 10; inconclusive at sgd 0.1"
    v, _, summary = beyond.sensitivity_check(s[s["method"] != "bptt"], 4)  # claim 4 without BPTT
    assert v == UNSURE and summary == "inconclusive at every step size"


def test_constrained_verdict():
    base = [srow("bptt", None, 100.0, hidden=16), srow("bptt", None, 100.0, hidden=128),
            srow("admm", 1, 90.0, hidden=16, h_param="free", penalty="l2"),
            srow("admm", 1, 120.0, hidden=128, h_param="free", penalty="l2")]
    closes = srow("admm", 1, 100.05, hidden=128, h_param="tanh", penalty="l2")
    not_ = srow("admm", 1, 115.0, hidden=128, h_param="free", penalty="l2+kl")
    assert beyond.constrained_check(pd.DataFrame(base + [closes]))[0] == HOLDS
    assert beyond.constrained_check(pd.DataFrame(base + [closes, not_]))[0] == FAILS
    no_gap = [r if r["method"] == "bptt" or r["hidden"] == 16 else {**r, "valid_mean": 99.0} for r in base]
    assert beyond.constrained_check(pd.DataFrame(no_gap + [closes]))[0] == UNSURE


def test_time_dist_keeps_processes_apart(tmp_path):
    """experiment=time_dist: one and two processes of the same config are
    columns of their own, never averaged together, and rows of their own in
    the time table (BPTT's target from one process)."""
    root = tmp_path / "time_dist"
    for world, bptt, admm in ((1, 10.0, 12.0), (2, 20.0, 30.0)):  # unequal on purpose: averaging shows
        for method, valid in (("bptt", bptt), ("admm", admm)):
            run = make_run(root / f"processes{world}", valid, name="time_dist", method__name=method,
                           method__mode="batch", history=hist([valid], [world], [100]))
            rec = json.loads((run / "result.json").read_text())
            (run / "result.json").write_text(json.dumps({**rec, "world": world}))
    runs = load_runs([root])
    summary = tables.summarise(runs, "time_dist")
    assert sorted(summary["world"]) == [1, 1, 2, 2]
    t = tables.make_table(summary, "time_dist")["sample_chars"]
    assert t.columns.name == "processes" and list(t.columns) == [1, 2]
    assert t.loc["BPTT", 1].startswith("10.0") and t.loc["BPTT", 2].startswith("20.0")
    assert t.loc["BTPROP (n_h=1)", 2].startswith("30.0")
    tt = timing.time_table(runs, summary, tables.cell_keys(runs, "time_dist")).set_index("method")
    assert set(tt["BPTT best valid ppl"]) == {"10.00"}  # one process's BPTT sets the target
    assert tt.loc["BPTT", "seconds"] == "1.0" and tt.loc["BPTT (2 processes)", "seconds"] == "not reached"
