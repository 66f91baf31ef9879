"""The offline stand-in corpus (SPEC §2).

The gensim 4.4.0 wheel on PyPI ships a shortened English Wikipedia dump (the
early articles that also open text8).  We fetch the wheel with pip, keep that
one member (1.7 MB) in <data_dir>/sample/, and run it through a Python port of
Matt Mahoney's text8 filter (wikifil.pl).  The result is checked against a known sha256, so
a port that drifts from the Perl semantics fails loudly instead of silently
changing every number downstream.

The text is Wikipedia's (CC BY-SA 3.0); it is built on the user's machine and
never committed.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tprop_exp import UserError

GENSIM_VERSION = "4.4.0"
MEMBER = ("gensim/test/test_data/"
          "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
MEMBER_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
SAMPLE_SHA256 = "0cf035b28f92b01ff2dd0880909f6087bfb48bc8b8c726b793bccdad5c56a13c"
SAMPLE_BYTES = 3_085_829
SAMPLE_NAME = "sample/text8_sample.txt"

# The filter works on bytes, as Perl does on an undecoded dump: every regex
# below is then ASCII-only (\d, /i, '.'), and each byte of a multi-byte UTF-8
# character later becomes a non-letter, exactly as in the original.
_I = re.IGNORECASE
_SUBS = [  # applied in order to each record inside <text ...> ... </text>
    (re.compile(rb"&amp;"), b"&"),  # decode entities first, so that escaped
    (re.compile(rb"&lt;"), b"<"),  # <ref> and <tags> become real markup
    (re.compile(rb"&gt;"), b">"),
    (re.compile(rb"<ref[^<]*</ref>"), b""),  # references
    (re.compile(rb"<[^>]*>"), b""),  # (x)html tags
    (re.compile(rb"\[http:[^\] ]*"), b"["),  # URL of an external link; keep its text
    (re.compile(rb"\|thumb", _I), b""),  # image options; the caption stays
    (re.compile(rb"\|left", _I), b""),
    (re.compile(rb"\|right", _I), b""),
    (re.compile(rb"\|\d+px", _I), b""),
    (re.compile(rb"\[\[image:[^\[\]]*\|", _I), b""),  # image file name
    (re.compile(rb"\[\[category:([^|\]]*)[^\]]*\]\]", _I), rb"[[\1]]"),  # keep the name
    (re.compile(rb"\[\[[a-z\-]*:[^\]]*\]\]"), b""),  # interlanguage links
    (re.compile(rb"\[\[[^|\]]*\|"), b"[["),  # link target; keep the link text
    (re.compile(rb"\{\{[^}]*\}\}"), b""),  # templates
    (re.compile(rb"\{[^}]*\}"), b""),  # tables
    (re.compile(rb"[\[\]]"), b""),
    (re.compile(rb"&[^;]*;"), b" "),  # any other entity (may span lines, as in Perl)
]
_XML_TAG = re.compile(rb"<.*>")  # '.' stops at newlines: the tag on the record's last line
_REDIRECT = re.compile(rb"#redirect", _I)
_NON_LETTERS = re.compile(rb"[^a-z]+")
_DIGIT = re.compile(rb"[0-9]")
_DIGIT_WORDS = [f" {w} ".encode() for w in
                "zero one two three four five six seven eight nine".split()]


def _records(data: bytes):
    """Perl's `$/ = ">"`: each record ends with '>' (the last one may not)."""
    start = 0
    while start < len(data):
        end = data.find(b">", start)
        end = len(data) if end < 0 else end + 1
        yield data[start:end]
        start = end


def _clean(rec: bytes) -> bytes:
    rec = _XML_TAG.sub(b"", rec, count=1)
    for pattern, repl in _SUBS:
        rec = pattern.sub(repl, rec)
    rec = b" " + rec.lower() + b" "  # bytes.lower() is ASCII-only, like tr/A-Z/a-z/
    rec = _DIGIT.sub(lambda m: _DIGIT_WORDS[m[0][0] - 48], rec)  # 48 = ord("0")
    rec = _NON_LETTERS.sub(b" ", rec)  # tr/a-z/ /cs
    return rec[:-1]  # chop: drop the trailing space, so records join with one space


def text8_filter(xml_text: str | bytes) -> str:
    """Wikipedia XML -> text8-style text (lowercase a-z and single spaces).

    A port of wikifil.pl: keep what lies between a `<text ...>` tag and
    `</text>`, skip pages that contain `#redirect`, strip the markup, spell
    digits as words.  The output starts with a space and has no newline.
    """
    data = xml_text.encode("utf-8") if isinstance(xml_text, str) else xml_text
    out = []
    in_text = False
    for rec in _records(data):
        if b"<text " in rec:
            in_text = True
        if _REDIRECT.search(rec):
            in_text = False
        if in_text:
            if b"</text>" in rec:
                in_text = False  # this record is still printed
            out.append(_clean(rec))
    return b"".join(out).decode("ascii")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(dest: Path, folder: Path) -> Path:
    # Any platform's wheel carries the same test data; naming one lets this
    # work from any Python and OS without building anything.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
           "--implementation", "cp", f"gensim=={GENSIM_VERSION}", "-d", str(dest),
           "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"gensim-{GENSIM_VERSION}-*.whl"))
    if proc.returncode != 0 or not wheels:
        err = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise UserError(
            f"could not download the gensim=={GENSIM_VERSION} wheel with pip ({err}); "
            f"run `pip download --no-deps --only-binary=:all: --platform "
            f"manylinux_2_28_x86_64 --python-version 3.11 gensim=={GENSIM_VERSION}` "
            f"where PyPI is reachable and copy the .whl into {folder}")
    return wheels[0]


def sample_source(data_dir: Path) -> Path:
    """The compressed Wikipedia XML that the sample is made from.

    Kept in data_dir/sample/ (1.7 MB) so that the sample can be rebuilt, and
    the filter checked, without the network.  Taken from a gensim wheel that
    the user copied into that folder, else from one that pip downloads.
    """
    folder = Path(data_dir) / "sample"
    dest = folder / Path(MEMBER).name
    if dest.is_file() and sha256_of(dest) == MEMBER_SHA256:
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        local = sorted(folder.glob(f"gensim-{GENSIM_VERSION}-*.whl"))
        wheel = local[0] if local else _download_wheel(Path(tmp), folder)
        try:
            with zipfile.ZipFile(wheel) as zf:
                packed = zf.read(MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise UserError(f"{wheel} is not a usable gensim {GENSIM_VERSION} wheel ({e})")
        if hashlib.sha256(packed).hexdigest() != MEMBER_SHA256:
            raise UserError(f"{wheel}: {Path(MEMBER).name} has the wrong sha256")
        part = Path(tmp) / dest.name
        part.write_bytes(packed)
        os.replace(part, dest)
    return dest


def build_sample(data_dir: Path) -> Path:
    """Return data_dir/sample/text8_sample.txt, building it first if needed."""
    out = Path(data_dir) / SAMPLE_NAME
    if out.is_file() and out.stat().st_size == SAMPLE_BYTES and sha256_of(out) == SAMPLE_SHA256:
        return out
    xml = bz2.decompress(sample_source(data_dir).read_bytes())
    text = text8_filter(xml).encode("ascii")
    if len(text) != SAMPLE_BYTES or hashlib.sha256(text).hexdigest() != SAMPLE_SHA256:
        # The input was verified, so only a bug in the filter port gets here.
        raise RuntimeError(f"text8 filter output mismatch ({len(text):,} bytes)")
    with tempfile.NamedTemporaryFile(dir=out.parent, delete=False) as f:
        f.write(text)  # a private temporary name: parallel runs never share a partial file
    os.chmod(f.name, 0o644)
    os.replace(f.name, out)
    return out
