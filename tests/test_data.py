"""Datasets: data dir, readers, vocabularies, cache and batchify.

The real downloads are not reached from here: the archive readers are fed
small archives of the same layout, placed where fetch() expects them.
"""

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import tprop_exp.data.corpora as data
from tprop_exp import UserError
from tprop_exp.data.corpora import batchify, load_corpus, resolve_data_dir
from tprop_exp.data.sample import SAMPLE_NAME, build_sample

CONF = Path(__file__).resolve().parents[1] / "tprop_exp" / "conf" / "dataset"
N_CHARS, N_WORDS = 3_085_829, 512_934


def conf(name, **over):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    return OmegaConf.merge(cfg, over)


def decode(corpus, ids):
    return [corpus.vocab[i] for i in ids.tolist()]


# ---------------------------------------------------------------- small pieces

def test_dataset_configs_are_complete():
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert names == sorted(["text8", "text8_words", "wiki_large", "wikitext2", "ptb_words",
                            "ptb_chars", "sample_chars", "sample_words", "local", "lag"])
    for name in names:
        cfg = conf(name)
        assert cfg.name == name and cfg.level in ("char", "word")
        assert cfg.get("vocab_size") is None and cfg.source in data.SOURCES


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TPROP_EXP_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert resolve_data_dir(None) == tmp_path / ".cache" / "tprop_exp"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(None) == tmp_path / "xdg" / "tprop_exp"
    monkeypatch.setenv("TPROP_EXP_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir("~/mine") == tmp_path / "mine"


def test_batchify_layout():
    out = batchify(torch.arange(11), 3)
    assert out.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert batchify(torch.arange(12), 4)[:, 1].tolist() == [3, 4, 5]
    with pytest.raises(UserError):
        batchify(torch.arange(2), 3)


# ------------------------------------------------------------------ local data

def write(folder, **texts):
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        (folder / f"{split}.txt").write_text(text, encoding="utf-8")
    return folder


def test_word_vocab_from_train_only(tmp_path):
    src = write(tmp_path / "src", train="b a a\n\nc b a\n", valid="a z\n", test="y b\n")
    c = load_corpus(conf("local", path=str(src)), tmp_path / "data")
    # frequency order, ties by string; <unk> appended because valid/test have new words
    assert c.vocab == ["a", "<eos>", "b", "c", "<unk>"]
    assert decode(c, c.train) == ["b", "a", "a", "<eos>", "c", "b", "a", "<eos>"]
    assert decode(c, c.valid) == ["a", "<unk>", "<eos>"]
    assert decode(c, c.test) == ["<unk>", "b", "<eos>"]
    assert c.train.dtype == torch.long and c.level == "word" and c.name == "local"


def test_no_unk_when_nothing_is_unknown(tmp_path):
    src = write(tmp_path / "src", train="a b c\n", valid="c b\n", test="a a\n")
    c = load_corpus(conf("local", path=str(src), eos=False), tmp_path / "data")
    assert c.vocab == ["a", "b", "c"]
    assert decode(c, c.valid) == ["c", "b"]


def test_vocab_size_cap(tmp_path):
    src = write(tmp_path / "src", train="a a a b b c d\n", valid="d b\n", test="a c\n")
    c = load_corpus(conf("local", path=str(src), eos=False, vocab_size=3), tmp_path / "data")
    assert c.vocab == ["a", "b", "<unk>"]  # <unk> counts as one of the 3
    assert decode(c, c.train) == ["a", "a", "a", "b", "b", "<unk>", "<unk>"]
    assert decode(c, c.valid) == ["<unk>", "b"]
    with pytest.raises(UserError, match="vocab_size"):
        load_corpus(conf("local", path=str(src), vocab_size=0), tmp_path / "data")


def test_char_level_local(tmp_path):
    src = write(tmp_path / "src", train="abba\n", valid="ab!", test="ba")
    c = load_corpus(conf("local", path=str(src), level="char"), tmp_path / "data")
    assert c.vocab == ["a", "b", "\n", "<unk>"]
    assert decode(c, c.valid) == ["a", "b", "<unk>"]


def test_local_missing_or_empty_file(tmp_path):
    src = write(tmp_path / "src", train="a b\n", valid="a\n")
    with pytest.raises(UserError, match="no such file") as err:
        load_corpus(conf("local", path=str(src)), tmp_path / "data")
    assert str(src / "test.txt") in str(err.value)
    (src / "test.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        load_corpus(conf("local", path=str(src)), tmp_path / "data")
    with pytest.raises(UserError, match="dataset.train"):
        load_corpus(conf("local"), tmp_path / "data")
    (src / "test.txt").write_text("\n\n")
    with pytest.raises(UserError, match="fewer than 2 tokens"):
        load_corpus(conf("local", path=str(src)), tmp_path / "data")


def test_cache_round_trip_and_rebuild(tmp_path, monkeypatch):
    src = write(tmp_path / "src", train="the cat sat\non the mat\n" * 50,
                valid="the dog sat\n", test="a cat\n")
    cfg = conf("local", train=str(src / "train.txt"), valid=str(src / "valid.txt"),
               test=str(src / "test.txt"))
    fresh = load_corpus(cfg, tmp_path / "data")
    [cache] = [p for p in (tmp_path / "data" / "cache").iterdir() if p.is_dir()]
    assert sorted(p.name for p in cache.iterdir()) == [
        "meta.json", "test.npy", "train.npy", "valid.npy", "vocab.json"]

    def no_tokenising(*args):
        raise AssertionError("tokenised again instead of reading the cache")

    with monkeypatch.context() as m:
        m.setattr(data, "_tokenise", no_tokenising)
        cached = load_corpus(cfg, tmp_path / "data")
    assert cached.vocab == fresh.vocab
    for s in ("train", "valid", "test"):
        assert torch.equal(getattr(cached, s), getattr(fresh, s))
        assert getattr(cached, s).dtype == torch.long
    # A corrupt cached tensor is rebuilt, not a crash.
    (cache / "train.npy").write_bytes(b"garbage")
    again = load_corpus(cfg, tmp_path / "data")
    assert torch.equal(again.train, fresh.train)
    # An edited file gets a new cache entry, never the stale one.
    (src / "test.txt").write_text("a cat sat on the mat\n")
    assert len(load_corpus(cfg, tmp_path / "data").test) == 7


# ------------------------------------------------------- downloaded data, faked

def put_zip(path, members):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    blob = path.read_bytes()
    return dict(size=len(blob), md5=hashlib.md5(blob).hexdigest(),
                sha1=hashlib.sha1(blob).hexdigest())


def test_wikitext_archive(tmp_path):
    lines = {"train": " = Title = \n \n The cat sat . \n", "valid": " The <unk> sat . \n",
             "test": " A dog . \n"}
    sums = put_zip(tmp_path / "raw" / "wikitext-2-v1.zip",
                   {f"wikitext-2/wiki.{s}.tokens": t for s, t in lines.items()})
    c = load_corpus(conf("wikitext2", md5=sums["md5"], size=sums["size"], urls=[]), tmp_path)
    assert decode(c, c.train) == ["=", "Title", "=", "<eos>", "The", "cat", "sat", ".", "<eos>"]
    assert decode(c, c.valid) == ["The", "<unk>", "sat", ".", "<eos>"]
    assert decode(c, c.test) == ["<unk>", "<unk>", ".", "<eos>"]
    # A wrong archive on disk is reported, not silently used.
    with pytest.raises(UserError, match="delete it"):
        load_corpus(conf("wikitext2", size=sums["size"] + 1, urls=[]), tmp_path)
    # So is one that matches its (here: recomputed) checksum but fails its CRC.
    path = tmp_path / "raw" / "wikitext-2-v1.zip"
    blob = path.read_bytes().replace(b"The cat sat", b"The cat sit")
    path.write_bytes(blob)
    md5 = hashlib.md5(blob).hexdigest()
    with pytest.raises(UserError, match="corrupt"):
        load_corpus(conf("wikitext2", md5=md5, size=len(blob), urls=[]), tmp_path)


def test_ptb_tgz_with_member_checksums(tmp_path):
    texts = {"train": " a b <unk> \n b a \n", "valid": " a b \n", "test": " b \n"}
    path = tmp_path / "raw" / "simple-examples.tgz"
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w:gz") as tf:
        for s, t in texts.items():
            info = tarfile.TarInfo(f"./simple-examples/data/ptb.{s}.txt")
            info.size = len(t.encode())
            tf.addfile(info, io.BytesIO(t.encode()))
    md5 = {s: hashlib.md5(t.encode()).hexdigest() for s, t in texts.items()}
    c = load_corpus(conf("ptb_words", file_md5=md5, urls=[]), tmp_path)
    assert c.vocab == ["<eos>", "a", "b", "<unk>"]
    assert len(c.train) == 7
    md5["valid"] = "0" * 32
    with pytest.raises(UserError, match="ptb.valid.txt.*md5"):
        load_corpus(conf("ptb_words", file_md5=md5, urls=[]), tmp_path)


def test_text8_split_by_characters(tmp_path):
    text = "the quick brown fox jumps over the lazy dog " * 3
    sums = put_zip(tmp_path / "raw" / "text8.zip", {"text8": text})
    over = dict(sha1=sums["sha1"], size=sums["size"], member_sha1=None, urls=[],
                train_chars=67, valid_chars=40)
    c = load_corpus(conf("text8", **over), tmp_path)
    assert len(c.vocab) == 27  # every letter and the space occur in train
    assert "".join(decode(c, c.train)) == text[:67]
    assert "".join(decode(c, c.valid)) == text[67:107]
    assert "".join(decode(c, c.test)) == text[107:]
    w = load_corpus(conf("text8_words", **over), tmp_path)
    train = text[:67].split()  # ends in "jum", the first half of "jumps"
    assert decode(w, w.train) == train
    assert decode(w, w.valid) == [x if x in train else "<unk>" for x in text[67:107].split()]
    assert decode(w, w.valid)[0] == "<unk>"  # "ps"


def test_no_network_names_the_file_to_fetch(tmp_path):
    with pytest.raises(UserError) as err:
        load_corpus(conf("wiki_large", urls=["http://127.0.0.1:9/wikitext-103-v1.zip"]), tmp_path)
    assert str(tmp_path / "raw" / "wikitext-103-v1.zip") in str(err.value)


# --------------------------------------------------------- the offline sample

@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    """A data dir holding the sample, built once in the default data dir."""
    built = build_sample(resolve_data_dir(os.environ.get("TPROP_EXP_DATA")))
    d = tmp_path_factory.mktemp("data")
    (d / SAMPLE_NAME).parent.mkdir(parents=True)
    (d / SAMPLE_NAME).write_bytes(built.read_bytes())
    return d


@pytest.mark.parametrize("name, n", [("sample_chars", N_CHARS), ("sample_words", N_WORDS)])
def test_sample_splits(sample_dir, name, n):
    c = load_corpus(conf(name), sample_dir)
    assert len(c.train) == n * 9 // 10 and len(c.valid) == n * 5 // 100
    assert len(c.train) + len(c.valid) + len(c.test) == n
    head = decode(c, c.train[:5])
    if name == "sample_chars":
        assert len(c.vocab) == 27 and "<unk>" not in c.vocab
        assert "".join(head) == " anar"
    else:
        assert head == ["anarchism", "is", "a", "political", "philosophy"]
        assert c.vocab[:3] == ["the", "of", "and"]
        # words first seen in valid/test are <unk>, and only those
        unk = c.vocab.index("<unk>")
        train_words = set(decode(c, c.train))
        text = (sample_dir / SAMPLE_NAME).read_text().split()
        valid_words = text[len(c.train):len(c.train) + len(c.valid)]
        expected = [w if w in train_words else "<unk>" for w in valid_words]
        assert decode(c, c.valid) == expected and unk in c.valid.tolist()
