"""The long_range report (report/long_range.py): tables, figure, the largest
D/K learned at least half, and claim 5's direct verdict."""
import json

import pandas as pd
import pytest

from tprop_exp.report import long_range
from tprop_exp.report import write as report
from tprop_exp.report.stats import FAILS, HOLDS, UNSURE

from test_report import make_run


def summary(cells):
    """cells: (mode, D, K, method, h_steps, mean lag_learned, std); 3 seeds each."""
    rows = []
    for mode, D, K, method, h, mean, std in cells:
        rows.append(dict(dataset="lag", mode=mode, D=D, K=K, method=method, h_steps=h,
                         lag_valid_mean=mean, lag_valid_std=std, lag_valid_n=3,
                         lag_test_mean=mean, lag_test_std=std, lag_test_n=3,
                         valid_mean=4.0 - 2 * mean, valid_std=0.01, valid_n=3,
                         n_diverged=0, n_failed=0))
    return pd.DataFrame(rows)


def grid(bptt_k, btprop, ref, Ds=(2, 4, 6, 8), mode="minibatch"):
    """Per D: BPTT(4), ADMM n_h=1, and the BPTT(32) reference, each a function of D."""
    out = []
    for D in Ds:
        out += [(mode, D, 4, "bptt", None, *bptt_k(D)), (mode, D, 4, "admm", 1, *btprop(D)),
                (mode, D, 32, "bptt", None, *ref(D))]
    return summary(out)


def test_largest_d_over_k_learned_at_least_half_and_labels():
    s = long_range.decorate(grid(lambda D: (1.0 - D / 8, 0.02), lambda D: (0.9, 0.02),
                                 lambda D: (0.95, 0.01)))
    assert set(s["label"]) == {"BPTT(4)", "BPTT(32), reference", "BTPROP admm n_h=1"}
    half = long_range.largest_half(s)
    # BPTT(4): 0.75, 0.5, 0.25, 0 at D = 2, 4, 6, 8, so the largest D/K with ≥ 0.5 is 4/4 = 1.
    assert half[("minibatch", "BPTT(4)")] == 1.0
    assert half[("minibatch", "BTPROP admm n_h=1")] == 2.0
    none = long_range.largest_half(long_range.decorate(grid(
        lambda D: (0.1, 0.01), lambda D: (0.1, 0.01), lambda D: (0.1, 0.01))))
    assert none[("minibatch", "BPTT(4)")] is None


def test_claim5_direct_holds_fails_and_is_inconclusive():
    beyond = grid(lambda D: (0.02, 0.02), lambda D: (0.6 if D == 8 else 0.03, 0.03), lambda D: (0.9, 0.02))
    verdict, lines = long_range.claim5_direct(beyond)
    assert verdict == HOLDS, lines
    assert len(lines) == 2  # D = 6 and 8: the D > K
    same = grid(lambda D: (0.02, 0.02), lambda D: (0.05, 0.02), lambda D: (0.9, 0.02))
    assert long_range.claim5_direct(same)[0] == FAILS
    # A clear gain, but smaller than the margin (0.2 < 0.25): not "learns what BPTT(K) does not".
    small = grid(lambda D: (0.0, 0.01), lambda D: (0.2, 0.01), lambda D: (0.9, 0.02))
    assert long_range.claim5_direct(small)[0] == FAILS
    # A gain of 0.3 ± a wide spread: neither beyond the margin nor below it by 2·SE.
    noisy = grid(lambda D: (0.0, 0.02), lambda D: (0.3, 0.3), lambda D: (0.9, 0.02))
    assert long_range.claim5_direct(noisy)[0] == UNSURE
    # The reference does not learn the lag: nothing is measured.
    blind = grid(lambda D: (0.0, 0.02), lambda D: (0.9, 0.02), lambda D: (0.3, 0.02))
    verdict, lines = long_range.claim5_direct(blind)
    assert verdict == UNSURE and "not counted" in lines[0]


def lag_run(sweep, lag_valid, D, K=4, method="bptt", h=None, seed=1):
    keys = dict(name="long_range", dataset__name="lag", dataset__lag=D, method__name=method,
                method__block_size=K, train__seed=seed)
    if h is not None:
        keys["method__h_steps"] = h
    run = make_run(sweep, 4.0 - lag_valid, test=4.0 - lag_valid, **keys)
    res = json.loads((run / "result.json").read_text())
    res.update(best_valid_lag_learned=lag_valid, test_lag_learned=lag_valid, lag_floor_nll=0.59,
               lag_ceiling_nll=1.386)
    (run / "result.json").write_text(json.dumps(res))


def test_report_writes_long_range_files_and_claim5_direct(tmp_path, capsys):
    sweep = tmp_path / "sweeps" / "long_range" / "sample"
    for seed, jitter in ((1, 0.0), (2, 0.02), (3, -0.02)):
        for D in (2, 8):
            lag_run(sweep, 0.9 + jitter, D, K=32, seed=seed)
            lag_run(sweep, (0.8 if D == 2 else 0.01) + jitter, D, seed=seed)
            lag_run(sweep, (0.85 if D == 2 else 0.7) + jitter, D, method="admm", h=1, seed=seed)
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    csv = pd.read_csv(out / "long_range.csv")
    assert {"D", "D_over_K", "label", "lag_valid_mean", "lag_test_mean", "valid_mean"} <= set(csv)
    row = csv[(csv["label"] == "BTPROP admm n_h=1") & (csv["D"] == 8)].iloc[0]
    assert row["D_over_K"] == 2.0 and row["lag_valid_mean"] == pytest.approx(0.7)
    md = (out / "long_range.md").read_text()
    assert "lag_learned, validation" in md and "D/K=2 (D=8)" in md and "long_range.png" in md
    assert (out / "long_range.png").stat().st_size > 1000
    claims = (out / "claims.md").read_text()
    assert "Claim 5, directly" in claims and "**holds**" in claims


def test_figure_gives_a_row_one_colour_in_every_panel():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = pd.concat([grid(lambda D: (0.1, 0.01), lambda D: (0.5, 0.01), lambda D: (0.9, 0.01), mode=m)
                   for m in ("minibatch", "batch")])
    # Mini-batch has rows that batch lacks, sorted before and after the shared one.
    s = pd.concat([s, summary([("minibatch", 6, 4, "admm", 0, 0.1, 0.02), ("minibatch", 6, 4, "admm", 3, 0.7, 0.02),
                               ("minibatch", 6, 4, "penalty", 3, 0.7, 0.02)])])
    fig = long_range.figure(s, "t", plt)
    colours = {}
    for ax in fig.axes:
        for bars in ax.containers:  # one errorbar container per row
            colours.setdefault(bars.get_label(), set()).add(matplotlib.colors.to_hex(bars.lines[0].get_color()))
    plt.close(fig)
    assert len(colours) == 6 and all(len(c) == 1 for c in colours.values()), colours
    flat = [c.pop() for c in colours.values()]
    assert len(set(flat)) == len(flat)  # BPTT(K), the reference and each BTPROP row differ
