"""Datasets (SPEC §2): fetch, tokenise, cache as integer tensors, batch.

Every dataset is described by its `conf/dataset/<name>.yaml`; its `source`
key picks the reader below (text8, sample, archive, local).  A reader returns,
for each split, an iterable of text pieces made of whole lines; tokenising
turns those into ids; the ids and the vocabulary are cached under
`<data_dir>/cache/<key>/` so that later runs only read three .npy files.

Vocabulary: built from the training split only, most frequent first, ties
broken by the symbol's string order.  `<unk>` is in the vocabulary only when
something maps to it: words dropped by `vocab_size` (which then counts
`<unk>` as one of its entries), valid/test symbols never seen in training, or
an `<unk>` already written in the text (WikiText and PTB have them).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from fractions import Fraction
from itertools import repeat
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tprop_exp import UserError

from . import lag
from .download import fetch, file_lock
from .sample import build_sample

log = logging.getLogger(__name__)

FORMAT = 1  # bump when tokenisation or the cache layout changes
UNK, EOS = "<unk>", "<eos>"
SPLITS = ("train", "valid", "test")
PIECE = 1 << 22  # characters per piece of text: bounds memory while tokenising


@dataclass
class Corpus:
    train: torch.Tensor  # 1-D int64 token ids
    valid: torch.Tensor
    test: torch.Tensor
    vocab: list[str]  # id -> symbol
    level: str = "word"  # "word" or "char"
    name: str = ""


def resolve_data_dir(value=None) -> Path:
    """The data directory: `value` (config key data_dir), else $TPROP_EXP_DATA,
    else $XDG_CACHE_HOME/tprop_exp, else ~/.cache/tprop_exp."""
    if value is None or str(value) == "":
        value = os.environ.get("TPROP_EXP_DATA") or None
    if value is None:
        value = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "tprop_exp"
    return Path(value).expanduser().absolute()


def batchify(data: torch.Tensor, n: int) -> torch.Tensor:
    """Cut a 1-D stream into `n` parallel streams, time-major: shape (T, n).

    Column j is the j-th contiguous slice of the stream, so reading down a
    column follows the text; the tokens that do not fill a last row are
    dropped.  For data = 0 1 2 ... 10 and n = 3, T = 11 // 3 = 3:

                col 0  col 1  col 2
        t = 0     0      3      6
        t = 1     1      4      7
        t = 2     2      5      8        (9 and 10 are dropped)
    """
    if n < 1:
        raise UserError(f"batch size must be positive, got {n}")
    steps = data.numel() // n
    if steps == 0:
        raise UserError(f"a stream of {data.numel()} tokens is too short for {n} "
                        "parallel streams; use a smaller batch size")
    return data[: steps * n].view(n, steps).t().contiguous()


def windows(data: torch.Tensor, K: int):
    """The K-step windows of time-major streams `data` (T, n): the one layout
    that BPTT, BTPROP's blocks and evaluation all read.

    Returns x, y of shape (nw, K, n), nw = (T - 1) // K, with y the next
    tokens, and the last, shorter window (x, y) of the remaining predictions
    (possibly empty).  For one stream 0 1 ... 9 (T = 10) and K = 4:

        x[0] = 0 1 2 3   y[0] = 1 2 3 4
        x[1] = 4 5 6 7   y[1] = 5 6 7 8
        tail:  8         ->     9
    """
    nw = (data.shape[0] - 1) // K
    x = data[:nw * K].view(nw, K, *data.shape[1:])
    y = data[1:nw * K + 1].view(nw, K, *data.shape[1:])
    return x, y, (data[nw * K:-1], data[nw * K + 1:])


# --------------------------------------------------------------------- readers

def _pieces(text: str, sep: str = " "):
    """Slices of about PIECE characters of `text`, each cut just after `sep`."""
    start = 0
    while start < len(text):
        end = text.find(sep, start + PIECE)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _stream_pieces(binary, where: str, local: bool = False):
    """Text pieces of whole lines from a binary file object (UTF-8); `local`:
    the user's own file (not a download to fetch again)."""
    with io.TextIOWrapper(binary, encoding="utf-8") as f:
        try:
            while piece := f.read(PIECE):
                if not piece.endswith("\n"):
                    piece += f.readline()
                yield piece
        except UnicodeDecodeError as e:
            raise UserError(f"{where} is not UTF-8 text ({e})") from None
        except OSError as e:
            if local:
                raise UserError(f"{where}: cannot read it ({e.strerror or e})") from None
            raise UserError(f"{where} is corrupt ({e}); delete it to download it again") from None
        except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError) as e:
            raise UserError(f"{where} is corrupt ({e}); delete it to download it again") from None


def _open_member(archive: Path, member: str):
    """Binary file object for `member` of a .zip or .tar(.gz) archive."""
    try:
        if zipfile.is_zipfile(archive):
            zf = zipfile.ZipFile(archive)
            names = {n.removeprefix("./"): n for n in zf.namelist()}
            if member in names:
                return zf.open(names[member])
        else:
            tf = tarfile.open(archive)
            names = {n.removeprefix("./"): n for n in tf.getnames()}
            if member in names:
                return tf.extractfile(names[member])
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive} is corrupt ({e}); delete it to download it again")
    raise UserError(f"{archive} has no member {member}; delete it to download it again")


def _md5_of_member(archive: Path, member: str) -> str:
    h = hashlib.md5()
    with _open_member(archive, member) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_archive(cfg, data_dir: Path) -> Path:
    return fetch(list(cfg.urls), data_dir / "raw" / cfg.archive, md5=cfg.get("md5"),
                 sha1=cfg.get("sha1"), size=cfg.get("size"))


def _read_text8(cfg, data_dir: Path) -> dict:
    """text8: one 10^8-character line, split by characters (90M/5M/5M)."""
    archive = _fetch_archive(cfg, data_dir)
    with _open_member(archive, cfg.member) as f:
        raw = f.read()
    if cfg.get("member_sha1") and hashlib.sha1(raw).hexdigest() != cfg.member_sha1:
        raise UserError(f"{cfg.member} in {archive} has the wrong sha1; "
                        "delete it to download it again")
    text = raw.decode("ascii")
    a = int(cfg.train_chars)
    b = a + int(cfg.valid_chars)
    return {"train": _pieces(text[:a]), "valid": _pieces(text[a:b]), "test": _pieces(text[b:])}


def _read_sample(cfg, data_dir: Path) -> dict:
    """The offline sample: first 90% of its symbols train, next 5% valid, rest test."""
    text = build_sample(data_dir).read_text(encoding="ascii")
    by_char = _tokens(cfg) == "chars"
    units = text if by_char else text.split()  # single spaces only: split() == split(" ") less ""
    n = len(units)
    # Fraction(str(x)) keeps 0.9 exact, so floor(0.9 * N) is the true floor.
    a = int(Fraction(str(cfg.train_frac)) * n)
    b = a + int(Fraction(str(cfg.valid_frac)) * n)
    join = "".join if by_char else " ".join
    return {"train": [join(units[:a])], "valid": [join(units[a:b])], "test": [join(units[b:])]}


def _read_archive(cfg, data_dir: Path) -> dict:
    """An archive (WikiText zip, PTB tgz) holding one file per split."""
    archive = _fetch_archive(cfg, data_dir)
    sums = cfg.get("file_md5") or {}
    out = {}
    for split in SPLITS:
        member = cfg.files[split]
        if sums.get(split) and _md5_of_member(archive, member) != sums[split]:
            raise UserError(f"{member} in {archive} has the wrong md5; delete it to download again")
        out[split] = _stream_pieces(_open_member(archive, member), f"{archive}:{member}")
    return out


def _local_paths(cfg) -> dict:
    """The user's own files: dataset.train/valid/test, or dataset.path/{split}.txt."""
    from hydra.utils import to_absolute_path  # relative to where the user ran the command

    paths = {}
    for split in SPLITS:
        p = cfg.get(split)
        if p is None and cfg.get("path") is not None:
            p = Path(str(cfg.path)) / f"{split}.txt"
        if p is None:
            raise UserError(f"dataset=local needs dataset.{split}=FILE "
                            f"(or dataset.path=DIR holding {split}.txt)")
        p = Path(to_absolute_path(str(Path(str(p)).expanduser())))
        where = f"dataset.{split}" + (" (from dataset.path)" if cfg.get(split) is None else "")
        try:
            st = p.stat()  # follows links: a loop or a dangling link says so
        except OSError as e:
            cause = "no such file" if e.errno == errno.ENOENT else e.strerror
            raise UserError(f"{where}: {p}: {cause}") from None
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{where}: {p} is not a file")
        try:  # read, not stat: /proc files report size 0, and permissions can refuse
            with open(p, "rb") as f:
                first = f.read(1)
        except OSError as e:
            raise UserError(f"{where}: cannot read {p} ({e.strerror or e})") from None
        if not first:
            raise UserError(f"{where}: {p} is empty")
        paths[split] = p
    return paths


def _read_local(cfg, data_dir: Path) -> dict:
    return {s: _stream_pieces(open(p, "rb"), f"dataset.{s}: {p}", local=True) for s, p in _local_paths(cfg).items()}


_READERS = {"text8": _read_text8, "sample": _read_sample, "archive": _read_archive,
            "local": _read_local}
SOURCES = (*_READERS, "lag")  # lag: generated as ids (data/lag.py), no text to tokenise


# ------------------------------------------------------------------ tokenising

def _tokens(cfg) -> str:
    """'chars' (every character is a symbol) or 'words' (split on whitespace).
    PTB's character files are already spaced out, so they are read as 'words'."""
    return cfg.get("tokens") or ("chars" if cfg.level == "char" else "words")


def _split_words(piece: str, eos: bool) -> list[str]:
    if not eos:
        return piece.split()
    out = []
    for line in piece.split("\n"):
        words = line.split()
        if words:  # blank lines get no <eos>
            words.append(EOS)
            out += words
    return out


def _word_ids(pieces, stoi: dict, eos: bool) -> np.ndarray:
    """Provisional ids (order of first appearance), growing `stoi` as needed."""
    parts = []
    for piece in pieces:
        words = _split_words(piece, eos)
        # map + fromiter keeps the per-word lookups in C (no Python-level loop);
        # only the words new to `stoi`, rare after the first pieces, loop in Python.
        ids = np.fromiter(map(stoi.get, words, repeat(-1)), np.int32, len(words))
        for i in np.flatnonzero(ids < 0).tolist():
            ids[i] = stoi.setdefault(words[i], len(stoi))
        parts.append(ids)
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def _char_codes(pieces) -> np.ndarray:
    parts = [np.frombuffer(p.encode("utf-32-le"), np.uint32) for p in pieces]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint32)


def _finish_vocab(ids: dict, symbols: list[str], vocab_size) -> tuple[dict, list[str]]:
    """Re-number provisional ids: train-only vocabulary, by frequency, capped."""
    counts = np.bincount(ids["train"], minlength=len(symbols)).tolist()
    seen = [i for i, c in enumerate(counts) if c > 0]
    seen.sort(key=lambda i: (-counts[i], symbols[i]))
    vocab = [symbols[i] for i in seen]
    capped = vocab_size is not None and len(vocab) > vocab_size
    if capped:
        vocab = [s for s in vocab if s != UNK][: vocab_size - 1]
    in_train = np.array(counts) > 0
    unseen = any((~in_train[ids[s]]).any() for s in ("valid", "test"))
    if (capped or unseen) and UNK not in vocab:
        vocab.append(UNK)
    new_id = {s: i for i, s in enumerate(vocab)}
    unk = new_id.get(UNK, -1)  # -1 is never used: then nothing maps to <unk>
    remap = np.array([new_id.get(s, unk) for s in symbols], np.int64)
    return {s: remap[ids[s]] for s in SPLITS}, vocab


def _tokenise(texts: dict, cfg) -> Corpus:
    vocab_size = cfg.get("vocab_size")
    if vocab_size is not None and vocab_size < 2:
        raise UserError(f"dataset.vocab_size must be at least 2 (or null), got {vocab_size}")
    if _tokens(cfg) == "chars":
        codes = {s: _char_codes(texts[s]) for s in SPLITS}
        present = np.flatnonzero(sum(np.bincount(c, minlength=0x110000) for c in codes.values()))
        compact = np.zeros(0x110000, np.int32)
        compact[present] = np.arange(len(present))
        ids = {s: compact[c] for s, c in codes.items()}
        symbols = [chr(c) for c in present]
    else:
        stoi, eos = {}, bool(cfg.get("eos", False))
        ids = {s: _word_ids(texts[s], stoi, eos) for s in SPLITS}  # train first
        symbols = list(stoi)
    ids, vocab = _finish_vocab(ids, symbols, vocab_size)
    if len(vocab) < 2:
        where = f"dataset {cfg.name}: the training split"
        if cfg.source == "local":
            where = f"dataset {cfg.name}: dataset.train {_local_paths(cfg)['train']}"
        what = (f"has only one distinct symbol ({vocab[0]!r})" if len(ids["train"])
                else "has no symbols (only whitespace or blank lines)")
        raise UserError(f"{where} {what}; a language model needs at least 2")
    for s in SPLITS:
        if len(ids[s]) < 2:
            raise UserError(f"the {s} split of dataset {cfg.name} has fewer than 2 tokens")
    t = {s: torch.from_numpy(ids[s]) for s in SPLITS}
    return Corpus(t["train"], t["valid"], t["test"], vocab, cfg.level, cfg.name)


# ----------------------------------------------------------------------- cache

def _cache_key(cfg) -> str:
    """<name>-<vocab_size>-f<FORMAT>-<hash of the config (and of local files)>."""
    described = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                 if k != "urls" and v is not None}  # another mirror gives the same bytes; null = absent
    if cfg.source == "local":  # edited files must not hit a stale cache
        described["files"] = {s: [str(p), p.stat().st_size, p.stat().st_mtime_ns]
                              for s, p in _local_paths(cfg).items()}
    digest = hashlib.sha1(json.dumps(described, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.name}-{cfg.get('vocab_size') or 'full'}-f{FORMAT}-{digest}"


def _read_cache(cache: Path, cfg) -> Corpus | None:
    if not (cache / "meta.json").is_file():
        return None
    try:
        meta = json.loads((cache / "meta.json").read_text())
        vocab = json.loads((cache / "vocab.json").read_text(encoding="utf-8"))
        t = {s: torch.from_numpy(np.load(cache / f"{s}.npy")).long() for s in SPLITS}
        if meta["format"] != FORMAT or len(vocab) != meta["vocab_len"]:
            raise ValueError("format or vocabulary mismatch")
        for s in SPLITS:
            x = t[s]
            if (x.dim() != 1 or x.numel() != meta["lengths"][s]
                    or x.min() < 0 or x.max() >= len(vocab)):
                raise ValueError(f"bad {s} tensor")
    except Exception as e:  # anything unreadable is rebuilt from the source
        log.warning("cache %s is unreadable (%s); rebuilding it", cache, e)
        shutil.rmtree(cache, ignore_errors=True)
        return None
    return Corpus(t["train"], t["valid"], t["test"], vocab, cfg.level, cfg.name)


def _write_cache(cache: Path, corpus: Corpus) -> None:
    """Write into a temporary folder, then rename it into place (atomic)."""
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=cache.name + ".tmp"))
        tmp.chmod(0o755)  # mkdtemp makes it private; a shared data dir should stay readable
        for s in SPLITS:
            np.save(tmp / f"{s}.npy", getattr(corpus, s).numpy().astype(np.int32))
        (tmp / "vocab.json").write_text(json.dumps(corpus.vocab, ensure_ascii=False),
                                        encoding="utf-8")
        meta = {"format": FORMAT, "name": corpus.name, "level": corpus.level,
                "vocab_len": len(corpus.vocab),
                "lengths": {s: getattr(corpus, s).numel() for s in SPLITS}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp, cache)
    except OSError as e:  # read-only disk, or a parallel run got there first
        if not (cache / "meta.json").is_file():
            log.warning("could not write the data cache %s (%s)", cache, e)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _build(cfg, data_dir: Path) -> Corpus:
    if cfg.source == "lag":  # symbol i is id i: no vocabulary reordering
        ids, vocab = lag.corpus_arrays(cfg)
        return Corpus(*(torch.from_numpy(ids[s]) for s in SPLITS), vocab, cfg.level, cfg.name)
    return _tokenise(_READERS[cfg.source](cfg, data_dir), cfg)


def load_corpus(ds_cfg, data_dir: Path) -> Corpus:
    """Token ids and vocabulary of the dataset described by `ds_cfg`.

    The first call downloads (or builds) and tokenises the data and caches the
    result under `data_dir/cache/`; later calls read the cache.
    """
    cfg = ds_cfg if isinstance(ds_cfg, DictConfig) else OmegaConf.create(ds_cfg)
    data_dir = Path(data_dir)
    if cfg.get("source") not in SOURCES:
        raise UserError(f"dataset {cfg.get('name')}: unknown source {cfg.get('source')!r}; "
                        f"expected one of {', '.join(SOURCES)}")
    cache = data_dir / "cache" / _cache_key(cfg)
    corpus = _read_cache(cache, cfg)
    if corpus is None:
        try:
            with file_lock(cache.with_name(cache.name + ".lock")):
                corpus = _read_cache(cache, cfg)  # another run may have built it meanwhile
                if corpus is None:
                    log.info("tokenising dataset %s (cached afterwards in %s)", cfg.name, cache)
                    corpus = _build(cfg, data_dir)
                    _write_cache(cache, corpus)
        except OSError as e:  # a data_dir that is a file, or where nothing can be written
            raise UserError(f"data_dir: cannot use {e.filename or data_dir} ({e.strerror or e}); "
                            f"choose another data_dir (now {data_dir})") from None
    return corpus
