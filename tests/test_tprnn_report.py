"""The report under the authors' rules (SPEC §6): the ablation's Δ, 2·SE and
verdicts, the measurement rule beside the true numbers, and claims under both
rule sets. Synthetic run records (test_report.make_run)."""
import json
import math

import pandas as pd

from tprop_exp.report import write as report

from test_report import make_run


def ablation_sweep(root):
    sweep = root / "sweeps" / "ablation" / "sample"
    common = dict(name="ablation", method__name="admm", method__h_steps=5)
    for seed, v in [(1, 100.0), (2, 102.0), (3, 104.0)]:
        make_run(sweep, v, rules="textbook", train__seed=seed, **common)
    for seed, v in [(1, 120.0), (2, 121.0), (3, 122.0)]:  # far beyond the noise
        make_run(sweep, v, rules="only_dual", train__seed=seed, **common)
    for seed, v in [(1, 101.0), (2, 103.0), (3, 105.0)]:  # within it
        make_run(sweep, v, rules="only_slots", train__seed=seed, **common)
    for seed, (v, w) in enumerate([(110.0, 50.0), (111.0, 52.0), (112.0, 51.0)], 1):
        run = make_run(sweep, v, rules="only_weights", train__seed=seed, **common)
        r = json.loads((run / "result.json").read_text())
        r["best_valid_ppl_tprnn_weighting"] = w
        (run / "result.json").write_text(json.dumps(r))
    return sweep


def test_ablation_delta_interval_and_verdict(tmp_path):
    out = tmp_path / "results"
    report.write_report(report.load_runs([ablation_sweep(tmp_path)]), out, "cmd")
    s = pd.read_csv(out / "ablation.csv").set_index("rule")
    se = math.sqrt(1 / 3 + 4 / 3)  # std 1 (rule) and 2 (textbook), 3 seeds each
    assert s.loc["only_dual", "delta_valid_ppl"] == 19.0
    assert math.isclose(s.loc["only_dual", "se"], se)
    assert math.isclose(s.loc["only_dual", "low"], 19.0 - 2 * se)
    assert s.loc["only_dual", "verdict"] == "moves the result"
    assert s.loc["only_slots", "delta_valid_ppl"] == 1.0
    assert s.loc["only_slots", "verdict"] == "within the noise"
    m = s.loc["measurement (only_weights)"]  # paired: 50−110, 52−111, 51−112
    assert math.isclose(m["delta_valid_ppl"], -60.0)
    assert math.isclose(m["se"], pd.Series([-60.0, -59.0, -61.0]).std() / math.sqrt(3))
    assert m["verdict"] == "moves the result"
    md = (out / "ablation.md").read_text()
    assert "only_dual" in md and "moves the result" in md and (out / "ablation.png").exists()


def test_weighted_numbers_beside_true_and_claims_side_by_side(tmp_path):
    sweep = tmp_path / "sweeps" / "methods" / "sample"
    for rules in ("textbook", "tprnn"):
        for seed in (1, 2):
            make_run(sweep, 100.0 + seed, name="methods", rules=rules, train__seed=seed)
            run = make_run(sweep, 90.0 + seed, name="methods", rules=rules, method__name="admm",
                           method__h_steps=5, train__seed=seed)
            if rules == "tprnn":
                r = json.loads((run / "result.json").read_text())
                r["best_valid_ppl_tprnn_weighting"] = 40.0 + seed
                (run / "result.json").write_text(json.dumps(r))
    out = tmp_path / "results"
    report.write_report(report.load_runs([sweep]), out, "cmd")
    md = (out / "methods_tprnn.md").read_text()
    assert "91.5" in md and "41.5" in md and "valid_ppl_tprnn_weighting" in md
    assert "41.5" not in (out / "methods.md").read_text()
    t = pd.read_csv(out / "methods_tprnn.csv")
    assert t.loc[t["method"] == "admm", "valid_mean"].item() == 91.5
    assert t.loc[t["method"] == "admm", "valid_tprnn_mean"].item() == 41.5
    claims = (out / "claims.md").read_text()
    side = claims.split("## Under both rule sets")[1].split("\n## ")[0]
    # claim 8 reads the methods table, run under both; claim 1 reads table 1, run under neither
    assert "| 8       | sample_chars | " in side and "- Claim 8 (" in side
    assert "- Claim 1 (" not in side and "| 1 " not in side


def test_claim_not_run_under_one_rule_set_says_so():
    from tprop_exp.report.claims import both_rule_sets
    v = lambda rows: pd.DataFrame(rows, columns=["claim", "dataset", "verdict", "evidence"])
    textbook = v([(6, "sample_chars", "holds", ["x"]), (8, "sample_chars", "holds", ["y"])])
    tprnn = v([(6, "sample_chars", "inconclusive", ["no runs"]), (8, "sample_chars", "does not hold", ["z"])])
    text = "\n".join(both_rule_sets(textbook, tprnn))
    assert "| 6       | sample_chars | holds      | not run" in text
    assert "figure_hidden not run under tprnn" in text
    assert "- Claim 8 (ADMM ≥ ALM ≥ penalty.): the rule set changes the verdict on sample_chars." in text
