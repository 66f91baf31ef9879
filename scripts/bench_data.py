"""Time the data layer on a synthetic WikiText-103-sized word corpus.

Writes ~100M Zipf-distributed tokens over ~260k word types as
wiki.train.tokens-style lines (a blank line between paragraphs) into a
temporary folder, then loads them through the `local` dataset twice: the
first load tokenises and writes the cache, the second reads the cache.

    python scripts/bench_data.py [--tokens 100000000] [--vocab 260000]
"""

import argparse
import resource
import string
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from tprop_exp.data.corpora import load_corpus


def words(n: int) -> np.ndarray:
    """n distinct lowercase strings, short for frequent ranks (base 26, >= 3 letters)."""
    letters = np.array(list(string.ascii_lowercase))
    out = []
    for r in range(26 ** 2, 26 ** 2 + n):
        s = []
        while r:
            r, d = divmod(r, 26)
            s.append(letters[d])
        out.append("".join(s))
    return np.array(out, dtype=object)


def write_corpus(path: Path, n_tokens: int, vocab: np.ndarray, rng) -> None:
    cdf = np.cumsum(1.0 / np.arange(1, len(vocab) + 1))  # Zipf, exponent 1
    cdf /= cdf[-1]
    with open(path, "w") as f:
        left = n_tokens
        while left > 0:
            n = min(left, 2_000_000)
            toks = vocab[np.searchsorted(cdf, rng.random(n))]
            lens = rng.integers(20, 160, size=n // 20 + 2)  # tokens per line
            cuts = np.cumsum(lens)
            cuts = cuts[cuts < n]
            lines = [" " + " ".join(part) + " \n \n" for part in np.split(toks, cuts)]
            f.write("".join(lines))
            left -= n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000_000)
    ap.add_argument("--vocab", type=int, default=260_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        vocab = words(args.vocab)
        write_corpus(tmp / "wiki.train.tokens", args.tokens, vocab, rng)
        for split in ("valid", "test"):
            write_corpus(tmp / f"wiki.{split}.tokens", args.tokens // 450, vocab, rng)
        rows.append(("generate text", time.perf_counter() - t))
        mb = (tmp / "wiki.train.tokens").stat().st_size / 1e6

        cfg = OmegaConf.load(Path(__file__).parents[1] / "tprop_exp" / "conf" / "dataset" / "local.yaml")
        files = {s: str(tmp / f"wiki.{s}.tokens") for s in ("train", "valid", "test")}
        cfg = OmegaConf.merge(cfg, files)
        for what in ("first load (tokenise + cache)", "second load (cache)"):
            t = time.perf_counter()
            corpus = load_corpus(cfg, tmp / "data")
            rows.append((what, time.perf_counter() - t))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"train file {mb:,.0f} MB, {len(corpus.train):,} train tokens (with <eos>), "
          f"vocabulary {len(corpus.vocab):,}, peak RSS {peak:.1f} GB")
    print(f"{'step':<32}{'seconds':>10}")
    for what, s in rows:
        print(f"{what:<32}{s:>10.1f}")


if __name__ == "__main__":
    main()
