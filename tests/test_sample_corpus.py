"""The text8 filter port and the offline sample corpus built with it."""

import bz2
import hashlib
import os

import pytest

from tprop_exp import UserError
from tprop_exp.data.corpora import resolve_data_dir
from tprop_exp.data.sample import (SAMPLE_BYTES, SAMPLE_SHA256, build_sample,
                                     sample_source, text8_filter)


def page(title, body):
    return (f"  <page>\n    <title>{title}</title>\n    <id>1</id>\n"
            f'    <revision>\n      <text xml:space="preserve">{body}</text>\n'
            f"    </revision>\n  </page>\n")


def test_plain_page_markup_is_stripped():
    body = ("The '''Foo''' was born in 1984 &amp; died.{{Infobox person|born=1984}} "
            "See [[Bar baz|the bar]] and [[Qux]].&lt;ref name=&quot;a&quot;&gt;Some "
            "source&lt;/ref&gt; [http://example.com Example site]\n"
            "[[Category:Test pages|Foo]]")
    out = text8_filter(page("Heading", body))
    assert out == (" the foo was born in one nine eight four died see the bar and qux"
                   " example site test pages")


def test_redirect_page_is_dropped():
    xml = page("Old", "#REDIRECT [[New page]]") + page("Kept", "Kept text.")
    assert text8_filter(xml) == " kept text"


def test_images_tables_interlanguage_and_entities():
    body = ("[[Image:Foo.jpg|thumb|left|200px|A caption here]] a&amp;nbsp;b "
            "{| class=&quot;wikitable&quot;\n| cell |} 42 "
            "&lt;br /&gt;end\n[[de:Anarchismus]][[fr:Anarchisme]]")
    assert text8_filter(page("T", body)) == " a caption here a b four two end"


def test_text_outside_text_tags_is_ignored():
    xml = "<mediawiki><siteinfo><sitename>Wikipedia</sitename></siteinfo>" + page("T", "x")
    assert text8_filter(xml) == " x"


def test_non_ascii_letters_become_spaces():
    # Perl works on UTF-8 bytes: an accented letter is not a-z.
    # ... and neither is the Kelvin sign, though Python's str.lower() makes it a k.
    assert text8_filter(page("T", "Caf\u00e9 na\u00efve \u212a")) == " caf na ve"


@pytest.fixture(scope="module")
def data_dir():
    return resolve_data_dir(os.environ.get("TPROP_EXP_DATA"))


def test_filter_reproduces_the_sample_checksum(data_dir):
    # The first run downloads the gensim wheel with pip (cached afterwards).
    xml = bz2.decompress(sample_source(data_dir).read_bytes())
    out = text8_filter(xml).encode("ascii")
    assert len(out) == SAMPLE_BYTES
    assert hashlib.sha256(out).hexdigest() == SAMPLE_SHA256
    assert out.startswith(b" anarchism is a political philosophy")
    assert len(out.split()) == 512_934


def test_build_sample_uses_and_verifies_the_cached_file(data_dir, tmp_path):
    path = build_sample(data_dir)
    assert path.stat().st_size == SAMPLE_BYTES
    # A fresh data dir holding only the compressed source builds without pip.
    (tmp_path / "sample").mkdir()
    src = sample_source(data_dir)
    (tmp_path / "sample" / src.name).write_bytes(src.read_bytes())
    built = build_sample(tmp_path)
    assert built.read_bytes() == path.read_bytes()
    # A damaged sample is rebuilt, not trusted.
    built.write_bytes(b" anarchism")
    assert hashlib.sha256(build_sample(tmp_path).read_bytes()).hexdigest() == SAMPLE_SHA256


def test_no_registry_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="gensim==4.4.0") as err:
        build_sample(tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "sample" / "text8_sample.txt").exists()


@pytest.mark.slow
def test_build_sample_from_pypi(tmp_path):
    path = build_sample(tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SAMPLE_SHA256
