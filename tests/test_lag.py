"""dataset=lag (SPEC §7): deterministic generation, the floor H*, lag_learned,
bad keys, and what a run records."""
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from tprop_exp import UserError
from tprop_exp.data import lag
from tprop_exp.data.corpora import load_corpus

from test_cli import cli, env  # noqa: F401  (the command line as the other CLI tests run it)


def keys(**kw):
    base = dict(lag=3, symbols=5, copy_prob=0.7, length=400, seed=7)
    base.update(kw)
    return base


def test_same_keys_same_tokens_and_a_fixed_checksum():
    a, b = lag.generate(**keys()), lag.generate(**keys())
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert [len(a[s]) for s in ("train", "valid", "test")] == [400, 40, 40]
    assert not np.array_equal(a["train"], lag.generate(**keys(seed=8))["train"])
    # Fixed by PCG64's raw stream and the rule in data/lag.py: the same on any machine.
    raw = b"".join(a[s].astype("<i8").tobytes() for s in ("train", "valid", "test"))
    assert hashlib.sha256(raw).hexdigest() == \
        "4f3e89ddee7c8e459d19c79106d49029a54c3a35efe526fb2695082b6cb18723"


def test_the_corpus_is_cached_and_read_back(tmp_path):
    cfg = {"name": "lag", "source": "lag", "level": "char", **keys()}
    first = load_corpus(cfg, tmp_path)
    cached = list((tmp_path / "cache").glob("lag-*[!k]"))
    assert len(cached) == 1 and (cached[0] / "train.npy").is_file()
    again = load_corpus(cfg, tmp_path)
    assert torch.equal(first.train, again.train) and again.vocab == ["0", "1", "2", "3", "4"]
    assert torch.equal(first.valid, torch.from_numpy(lag.generate(**keys())["valid"]))
    other = load_corpus({**cfg, "lag": 4}, tmp_path)  # another key, another cache entry
    assert len(list((tmp_path / "cache").glob("lag-*[!k]"))) == 2 and not torch.equal(other.train, first.train)


def entropy(probs):
    """−Σ p ln p of a distribution, 0·ln 0 = 0 (float64)."""
    p = np.asarray(probs, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("V,p", [(2, 0.5), (4, 0.8), (27, 0.3), (3, 1.0), (5, 0.0)])
def test_floor_is_the_entropy_of_the_next_symbol_given_the_lag(V, p):
    # Given x_{t-D}: that symbol with p + (1-p)/V, each other one with (1-p)/V.
    probs = [p + (1 - p) / V] + [(1 - p) / V] * (V - 1)
    assert lag.floor_nll(V, p) == pytest.approx(entropy(probs), abs=1e-12)
    if (V, p) == (2, 0.5):  # by hand: q = 3/4, r = 1/4
        assert lag.floor_nll(2, 0.5) == pytest.approx(-0.75 * math.log(0.75) - 0.25 * math.log(0.25))


def test_uniform_predictor_learns_nothing():
    """A model whose decoder is zero predicts uniformly: evaluated NLL = ln V, lag_learned = 0."""
    from tprop_exp.core.model import LanguageModel
    from tprop_exp.core.perplexity import evaluate

    V = 4
    model = LanguageModel(V, cell="gru", hidden_size=8, num_layers=1, init_range=0.1).double()
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    tokens = torch.from_numpy(lag.generate(lag=5, symbols=V, copy_prob=0.8, length=2000, seed=1)["valid"])
    nll, _ = evaluate(model, tokens, 4)
    assert nll == pytest.approx(math.log(V), abs=1e-12)
    assert lag.lag_learned(nll, V, 0.8) == pytest.approx(0.0, abs=1e-12)
    assert lag.lag_learned(math.log(V), V, 0.0) is None  # p = 0: nothing to learn


@pytest.mark.parametrize("D,V,p", [(5, 4, 0.8), (1, 2, 0.5), (17, 27, 0.3)])
def test_oracle_that_reads_x_t_minus_D_learns_all_of_it(D, V, p):
    """The oracle predicts q on x_{t-D} and r elsewhere for t > D, uniform for t ≤ D.

    Its NLL is computed here from SPEC §7's words on a corpus regenerated from
    the keys.  Sampling error: for t > D the event x_t = x_{t-D} has probability
    q given any past (a copy, or a uniform draw that hits), so the n = N − D
    indicators are i.i.d. Bernoulli(q) and each token's NLL is −ln q or −ln r:
    its variance is σ² = q(1−q)(ln q − ln r)², and the tail's mean NLL is within
    5σ/√n of H* except with probability < 1e-6.  The first D tokens cost ln V
    each, so the expected fraction is (N − D)/N and the oracle's lag_learned lies
    within (N−D)/N · 5σ/√n / (ln V − H*) of it.
    """
    x = lag.generate(lag=D, symbols=V, copy_prob=p, length=60000, seed=3)["train"].astype(np.int64)
    N, n = len(x), len(x) - D
    q, r = p + (1 - p) / V, (1 - p) / V
    hit = x[D:] == x[:-D]
    nll = (D * math.log(V) + (-math.log(q) * hit.sum() - math.log(r) * (~hit).sum())) / N
    h_star = -q * math.log(q) - (V - 1) * r * math.log(r)
    sigma = math.sqrt(q * (1 - q)) * abs(math.log(q) - math.log(r))
    bound = (n / N) * 5 * sigma / math.sqrt(n) / (math.log(V) - h_star)
    learned = lag.lag_learned(nll, V, p)
    assert abs(learned - n / N) <= bound, (learned, n / N, bound)
    assert abs(learned - 1) <= D / N + bound
    assert lag.lag_learned(h_star, V, p) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("bad,key", [
    (dict(copy_prob=1.5), "dataset.copy_prob"), (dict(copy_prob=-0.1), "dataset.copy_prob"),
    (dict(symbols=1), "dataset.symbols"), (dict(lag=0), "dataset.lag"),
    (dict(length=100, lag=3), "dataset.length"), (dict(seed=None), "dataset.seed"),
])
def test_bad_keys_are_refused(bad, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        lag.check_keys(**keys(**bad))


TINY = ["dataset=lag", "dataset.lag=3", "dataset.symbols=4", "dataset.copy_prob=0.9",
        "dataset.length=2000", "dataset.seed=0", "arch=gru", "arch.hidden_size=8",
        "method.block_size=8", "train.batch_size=4", "train.max_epochs=2",
        "train.eval_batch_size=2", "train.optimizer=adam", "train.lr=0.01"]


def test_bad_key_on_the_command_line_is_one_line_status_2(tmp_path):
    p, _ = cli(TINY + ["dataset.copy_prob=1.2", f"data_dir={tmp_path / 'data'}",
                       f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "dataset.copy_prob" in lines[0], p.stderr[-2000:]
    assert not (tmp_path / "run").exists() and not list(tmp_path.rglob("result.json"))


def test_a_run_records_floor_ceiling_and_lag_learned(tmp_path):
    run = tmp_path / "run"
    p, _ = cli(TINY + [f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}"], tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((run / "result.json").read_text())
    q, r = 0.9 + 0.1 / 4, 0.1 / 4
    h_star = -q * math.log(q) - 3 * r * math.log(r)
    assert res["lag_floor_nll"] == pytest.approx(h_star, abs=1e-12)
    assert res["lag_ceiling_nll"] == pytest.approx(math.log(4), abs=1e-12)

    def frac(ppl):
        return (math.log(4) - math.log(ppl)) / (math.log(4) - h_star)
    assert res["best_valid_lag_learned"] == pytest.approx(frac(res["best_valid_ppl"]), rel=1e-9)
    assert res["test_lag_learned"] == pytest.approx(frac(res["test_ppl"]), rel=1e-9)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["valid_lag_learned"] == pytest.approx(frac(row["valid_ppl"]), rel=1e-9)
