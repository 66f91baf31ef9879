"""The lag corpus (SPEC §7): a generated stream with a known floor.

Symbols 0..V−1.  x_t for t ≤ D is uniform; for t > D, x_t = x_{t−D} with
probability p, else uniform (which may also equal x_{t−D}).  Train holds
`dataset.length` tokens, valid and test a tenth each; each split is its own
stream (its first D tokens uniform), drawn in the order train, valid, test.

Determinism on any machine: the draws are the raw 64-bit outputs of NumPy's
PCG64 bit generator seeded with `dataset.seed` (a bit generator's raw stream
is fixed by its algorithm, unlike the derived distributions of
`np.random.Generator`, which NumPy may change between versions).  Position t
takes two raw words: a = copy word (copy when (a >> 11)·2⁻⁵³ < p) and b =
symbol word (symbol b mod V; the modulo bias is below V/2⁶⁴).

The floor: given the past, x_t equals x_{t−D} with probability
q = p + (1−p)/V and any other given symbol with r = (1−p)/V, so the best
possible mean NLL is H* = −q·ln q − (V−1)·r·ln r; a model that ignores the
lag can do no better than ln V.  `lag_learned` = (ln V − NLL)/(ln V − H*).
"""
from __future__ import annotations

import math

import numpy as np

from tprop_exp import UserError

MIN_LAGS = 4  # valid and test (a tenth of the length each) hold at least this many lags


def floor_nll(symbols: int, copy_prob: float) -> float:
    """H*, the least mean NLL any model can reach for t > D (nats)."""
    V, p = symbols, copy_prob
    q, r = p + (1 - p) / V, (1 - p) / V
    return -q * math.log(q) - ((V - 1) * r * math.log(r) if r > 0 else 0.0)


def lag_learned(nll: float, symbols: int, copy_prob: float) -> float | None:
    """(ln V − nll)/(ln V − H*): 0 = the lag unused, 1 = all of it; None when
    there is nothing to learn (p = 0) or no finite NLL."""
    gap = math.log(symbols) - floor_nll(symbols, copy_prob)
    if gap <= 0 or nll is None or not math.isfinite(nll):
        return None
    return (math.log(symbols) - nll) / gap


def split_lengths(length: int) -> dict:
    return {"train": length, "valid": length // 10, "test": length // 10}


def check_keys(lag, symbols, copy_prob, length, seed) -> None:
    """UserError (one line) for keys that make no corpus or nothing to measure."""
    def bad(key, value, allowed):
        raise UserError(f"dataset.{key}: {value!r} is not allowed; it must be {allowed}")

    for key, value in (("lag", lag), ("symbols", symbols), ("copy_prob", copy_prob),
                       ("length", length), ("seed", seed)):
        if value is None:
            bad(key, value, "set (dataset=lag needs lag, symbols, copy_prob, length and seed)")
    if lag < 1:
        bad("lag", lag, "an integer >= 1")
    if symbols < 2:
        bad("symbols", symbols, "an integer >= 2")
    if not (math.isfinite(copy_prob) and 0 <= copy_prob <= 1):
        bad("copy_prob", copy_prob, "a number in [0, 1]")
    if length // 10 < MIN_LAGS * lag:
        bad("length", length, f"at least {10 * MIN_LAGS * lag} ({MIN_LAGS} lags in valid and test, "
                              "which hold a tenth of it each)")
    if seed < 0:
        bad("seed", seed, "an integer >= 0")


def _stream(raw: np.ndarray, n: int, D: int, V: int, p: float) -> np.ndarray:
    """One split of n tokens from 2n raw words (see the module docstring)."""
    copy = (raw[0::2] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 < p
    x = (raw[1::2] % np.uint64(V)).astype(np.int64)
    for start in range(D, n, D):  # lag-D rows: each copies from the finished row before it
        end = min(start + D, n)
        c = copy[start:end]
        x[start:end][c] = x[start - D:end - D][c]
    return x


def generate(lag: int, symbols: int, copy_prob: float, length: int, seed: int) -> dict:
    """{split: int64 token array}, the same for the same keys on any machine."""
    check_keys(lag, symbols, copy_prob, length, seed)
    bits = np.random.PCG64(seed)
    out = {}
    for split, n in split_lengths(length).items():
        out[split] = _stream(bits.random_raw(2 * n), n, lag, symbols, copy_prob)
    return out


def corpus_arrays(cfg) -> tuple[dict, list[str]]:
    """The splits and vocabulary (id i is the symbol "i") of a `dataset=lag` config."""
    keys = ("lag", "symbols", "copy_prob", "length", "seed")
    splits = generate(*(cfg.get(k) for k in keys))
    return splits, [str(i) for i in range(int(cfg.symbols))]


def facts(ds_cfg) -> dict:
    """What result.json records about the corpus: its floor and ceiling (nats)."""
    return {"lag_floor_nll": floor_nll(ds_cfg.symbols, ds_cfg.copy_prob),
            "lag_ceiling_nll": math.log(ds_cfg.symbols)}
