"""The retrieval sets of evals/retrieval are sound: they parse, every judged document exists, there are
enough queries of every kind, none was trained on, and paraphrase queries are not keyword matches.

The documentation corpus is built here from the pinned sdists that `make setup-dev` downloads; when they
are missing the tests fail with that hint (a skipped check would let a broken set pass unnoticed).
"""

import importlib.util
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import ROOT

SETS = ROOT / "evals" / "retrieval"
NOTES = SETS / "notes"
CATEGORIES = {"keyword", "question", "entity", "error", "paraphrase", "multilingual"}
# share of paraphrase queries whose content words all occur in one of their relevant documents
MAX_LEXICAL_PARAPHRASE = 0.15

_spec = importlib.util.spec_from_file_location("build_docs", SETS / "build_docs.py")
build_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_docs)


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (SETS / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def relevant(q: dict) -> dict[str, int]:
    rel = q["relevant"]
    return dict(rel) if isinstance(rel, dict) else {path: 1 for path in rel}


def norm(text: str) -> str:
    """Case, width, punctuation and whitespace folded: what makes two queries the same query."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


@pytest.fixture(scope="module")
def docs_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs-corpus")
    try:
        build_docs.build(out)
    except click.ClickException as exc:
        pytest.fail(f"cannot build the docs corpus: {exc.message}")
    return out


@pytest.mark.parametrize("name", ["docs.jsonl", "notes.jsonl"])
def test_queries_parse_with_valid_fields(name):
    seen = set()
    for n, q in enumerate(load(name), 1):
        where = f"{name}:{n}"
        assert set(q) == {"query", "relevant", "category"}, where
        assert isinstance(q["query"], str) and q["query"].strip() == q["query"] and q["query"], where
        assert q["category"] in CATEGORIES, where
        rel = q["relevant"]
        assert isinstance(rel, (list, dict)) and rel, where
        if isinstance(rel, dict):
            assert all(isinstance(g, int) and 1 <= g <= 3 for g in rel.values()), where
            if len(rel) > 1:
                assert max(rel.values()) == 3, f"{where}: graded, but no document is fully relevant"
        assert all(isinstance(p, str) and p.endswith(".md") and not p.startswith("/") for p in rel), where
        assert norm(q["query"]) not in seen, f"{where}: duplicate query {q['query']!r}"
        seen.add(norm(q["query"]))


def test_counts_and_category_mix():
    docs, notes = load("docs.jsonl"), load("notes.jsonl")
    assert len(docs) >= 150
    assert len(notes) >= 60
    assert len(list(NOTES.rglob("*.md"))) >= 80
    for name, queries in [("docs", docs), ("notes", notes)]:
        counts = Counter(q["category"] for q in queries)
        assert set(counts) == CATEGORIES, (name, counts)
        assert min(counts.values()) >= 7, (name, counts)
        multi = [q["query"] for q in queries if q["category"] == "multilingual"]
        assert any(re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", m) for m in multi), name  # Japanese/Chinese
        assert sum(not re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", m) for m in multi) >= 4, name  # de/fr/es


def test_notes_relevant_paths_exist():
    missing = [(q["query"], p) for q in load("notes.jsonl") for p in relevant(q) if not (NOTES / p).is_file()]
    assert missing == []


def test_docs_relevant_paths_exist(docs_corpus):
    missing = [(q["query"], p) for q in load("docs.jsonl") for p in relevant(q) if not (docs_corpus / p).is_file()]
    assert missing == []


def test_docs_corpus_is_clean_markdown(docs_corpus):
    files = sorted(docs_corpus.rglob("*.md"))
    assert 150 <= len(files) <= 400
    leftovers = re.compile(r"^\s*\.\. [\w:-]+::|:(func|class|ref|doc|meth|attr|fixture|confval):`", re.M)
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert text.startswith("# ") and len(text.splitlines()[0]) > 2, path
        prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # code blocks quote tool output verbatim
        assert not leftovers.search(prose), (path, leftovers.search(prose).group(0))
        assert text.count("```") % 2 == 0, path


def test_docs_corpus_build_is_deterministic(docs_corpus, tmp_path):
    again = build_docs.build(tmp_path)
    first = sorted(str(p.relative_to(docs_corpus)) for p in docs_corpus.rglob("*.md"))
    assert again == first
    for rel in again[::17]:
        assert (tmp_path / rel).read_bytes() == (docs_corpus / rel).read_bytes(), rel


def test_queries_disjoint_from_training_data_and_eval_queries():
    trained = set()
    for path in sorted((ROOT / "data").glob("*.jsonl")):
        trained |= {norm(json.loads(line)["query"]) for line in path.read_text().splitlines() if line.strip()}
    lines = (ROOT / "evals" / "queries.txt").read_text().splitlines()
    evals = {norm(line) for line in lines if line.strip() and not line.startswith("#")}
    assert len(trained) > 1000 and len(evals) > 50
    clash = [
        q["query"] for name in ["docs.jsonl", "notes.jsonl"] for q in load(name) if norm(q["query"]) in trained | evals
    ]
    assert clash == []


STOP = set(
    "a an the of to in on for and or but with without by from at as is are was were be been being do does did "
    "i me my we our you your he his she her it its they them their this that these those what which who whom "
    "when where why how can could should would will shall may might must not no so than then there here about "
    "into out over under again once only own same too very just also any each every some such more most other "
    "all both few many much up down off if while until because between through during before after get got "
    "make let use using doing".split()
)


def content_words(query: str) -> list[str]:
    return [w for w in re.findall(r"\w+", query.casefold()) if w not in STOP and len(w) > 1]


def occurs(word: str, text: str) -> bool:
    """A generous match (a prefix as a crude stem): it counts more paraphrases as lexical, not fewer."""
    return (word[: max(4, len(word) - 3)] if len(word) > 4 else word) in text


def lexical_paraphrases(queries: list[dict], corpus: Path) -> list[str]:
    out = []
    for q in queries:
        if q["category"] != "paraphrase":
            continue
        for path in relevant(q):
            text = (corpus / path).read_text(encoding="utf-8").casefold()
            if all(occurs(w, text) for w in content_words(q["query"])):
                out.append(q["query"])
                break
    return out


def test_paraphrase_queries_are_not_keyword_matches(docs_corpus):
    for name, corpus in [("docs.jsonl", docs_corpus), ("notes.jsonl", NOTES)]:
        queries = load(name)
        total = sum(q["category"] == "paraphrase" for q in queries)
        lexical = lexical_paraphrases(queries, corpus)
        print(f"{name}: {len(lexical)}/{total} paraphrase queries have all their words in a relevant document")
        assert total >= 15
        assert len(lexical) / total <= MAX_LEXICAL_PARAPHRASE, lexical


def test_lexical_check_can_fail(tmp_path):
    (tmp_path / "a.md").write_text("# Uploading Files\n\nFile uploads are saved to the upload folder.\n")
    lexical = {"query": "how do I upload files", "relevant": ["a.md"], "category": "paraphrase"}
    other = {"query": "let visitors send us documents", "relevant": {"a.md": 3}, "category": "paraphrase"}
    assert lexical_paraphrases([lexical, other], tmp_path) == ["how do I upload files"]
    assert content_words("how do I upload the files") == ["upload", "files"]
    assert not occurs("sluggish", "the slowest tests")


def test_missing_sdists_fail_with_the_setup_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("QMD_RETRIEVAL_SDISTS", str(tmp_path / "empty"))
    result = CliRunner().invoke(build_docs.main, [str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "make setup-dev" in result.output
    assert not (tmp_path / "out").exists()


def test_a_tampered_sdist_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("QMD_RETRIEVAL_SDISTS", str(tmp_path))
    for name, version, *_ in build_docs.SDISTS:
        (tmp_path / f"{name}-{version}.tar.gz").write_bytes(b"not the pinned archive")
    result = CliRunner().invoke(build_docs.main, [str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "not the pinned" in result.output and "make setup-dev" in result.output


def test_rst_conversion():
    rst = """\
Title
=====

Intro with :func:`~flask.url_for`, ``literal``, :ref:`the guide <guide>` and
`a link <https://example.org>`_.

Section
-------

.. code-block:: python

    x = 1

.. note::
    Mind the gap.

Example::

    $ flask run

.. _target:

.. autofunction:: pytest.approx
"""
    md = build_docs.tidy(build_docs.convert(rst.split("\n")))
    assert md.startswith("# Title\n")
    assert "## Section" in md
    assert "`url_for`" in md and "`literal`" in md and "the guide" in md
    assert "[a link](https://example.org)" in md
    assert "```python\nx = 1\n```" in md
    assert "> **Note**\n> Mind the gap." in md
    assert "Example:\n\n```\n$ flask run\n```" in md
    assert "`pytest.approx`" in md
    assert ".." not in md.replace("...", "")


def test_the_docs_builder_replaces_only_its_own_corpus(tmp_path):
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "diary.md").write_text("my own note")
    result = CliRunner().invoke(build_docs.main, [str(notes)])
    assert result.exit_code != 0 and "was not built by this script" in result.output
    assert (notes / "diary.md").read_text() == "my own note"  # nothing lost
    out = tmp_path / "docs"
    assert CliRunner().invoke(build_docs.main, [str(out)]).exit_code == 0
    (out / "stale.md").write_text("left from an older build")
    assert CliRunner().invoke(build_docs.main, [str(out)]).exit_code == 0  # its own output: rebuilt
    assert not (out / "stale.md").exists() and (out / build_docs.MARKER).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_the_pip_builder_shares_the_safe_swap(tmp_path, monkeypatch):
    # build_pip_docs.py writes through build_docs.write_corpus: rebuilds its own folder, refuses others
    spec = importlib.util.spec_from_file_location("build_pip_docs", SETS / "build_pip_docs.py")
    pip_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pip_docs)
    monkeypatch.setattr(pip_docs, "pages", lambda: iter([("pip/cli/cache", "# pip cache\n\nWhere pip keeps it.\n")]))
    out = tmp_path / "pip"
    assert pip_docs.build(out) == ["pip/cli/cache.md"]
    (out / "stale.md").write_text("left from an older build")
    assert pip_docs.build(out) == ["pip/cli/cache.md"] and not (out / "stale.md").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "diary.md").write_text("my own note")
    result = CliRunner().invoke(pip_docs.main, [str(mine)])
    assert result.exit_code != 0 and "was not built by this script" in result.output
    assert (mine / "diary.md").read_text() == "my own note"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
