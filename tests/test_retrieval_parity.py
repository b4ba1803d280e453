"""retrieval.py against the real QMD 2.8.3 (make qmd): the same lex queries, titles, chunks and rankings.

* QMD's private helpers (buildFTS5Query, extractTitle, chunkDocument) are cut out of the installed
  dist/store.js and run by Node (qmd/store_fns.mjs) on the cases of test_retrieval.py and on a few
  hundred seeded random strings of the characters that matter (quotes, hyphens, dots, CJK, accents).
* Rankings: the personal-notes corpus (and the docs corpus when its sdists are present) indexed by
  `qmd collection add` in a sandbox and searched through QMD's own hybridQuery --no-rerank
  (qmd/retrieve.mjs) with and without lex lines, against retrieval.Engine(vectors=False). BM25 + lex
  lines is all the real QMD can do offline; the rankings must be equal, list for list.
* qmd/retrieve.mjs's structured mode against the `qmd query` CLI, so the harness calls QMD as the CLI does.
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from test_retrieval import LEX_CASES

import qmd_harness
import retrieval as rt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not qmd_harness.installed(), reason="QMD is not installed (make qmd)"),
]
ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "evals" / "retrieval" / "notes"


def qmd_fns(calls) -> list:
    proc = subprocess.run(
        [str(qmd_harness.node_binary()), str(qmd_harness.QMD_DIR / "store_fns.mjs")],
        input="".join(json.dumps({"fn": f, "args": a}) + "\n" for f, a in calls),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(out) == len(calls) and not any("error" in o for o in out), proc.stderr
    return [o["result"] for o in out]


def random_strings(n, seed, alphabet, max_len=24):
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


LEX_ALPHABET = list("abcxyz019") + [
    " ",
    " ",
    "-",
    "-",
    ".",
    '"',
    "'",
    "_",
    "中",
    "文",
    "カ",
    "é",
    "ß",
    "!",
    "+",
    "\t",
    "Q",
]


def test_lex_builder_equals_qmds_javascript():
    queries = [q for q, _ in LEX_CASES] + random_strings(600, 0, LEX_ALPHABET)
    words = ["multi-agent", "v2.1", "-x", '"a b"', "gpt-4o", "中文", "-中文", "don't", "1.0.21", "-1.2", "a-", "-"]
    rng = random.Random(1)
    queries += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 5))) for _ in range(300)]
    expected = qmd_fns([("buildFTS5Query", [q]) for q in queries])
    mismatches = [(q, e, rt.build_fts_query(q)) for q, e in zip(queries, expected) if rt.build_fts_query(q) != e]
    assert not mismatches, mismatches[:5]


def test_titles_and_chunks_equal_qmds_javascript():
    docs = rt.read_corpus(NOTES)
    heads = ["# T", "## Notes", "# 📝 Notes", "### deep", "#no space", "##  Two  ", "text", "", "# A\r", "## B"]
    rng = random.Random(2)
    contents = ["\n".join(rng.choice(heads) for _ in range(rng.randint(0, 6))) for _ in range(200)]
    contents += [d.body for d in docs[:30]]
    titles = qmd_fns([("extractTitle", [c, "dir/file-name.md"]) for c in contents])
    assert [rt.extract_title(c, "dir/file-name.md") for c in contents] == titles
    pieces = ["\n# H1", "\n## H2", "\n```", "\n---\n", "\n\n", "\n- item", "\n1. step", "\n", " word", "text", "."]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(20, 200))) for _ in range(100)]
    texts += [d.body for d in docs]
    sizes = [(300, 45, 66), (120, 18, 26), (800, 120, 177)]
    calls = [("chunkDocument", [t, *s]) for t in texts for s in sizes]
    expected = qmd_fns(calls)
    for (_, (t, *s)), exp in zip(calls, expected):
        assert rt.chunk_document(t, *s) == [(c["text"], c["pos"]) for c in exp]


def lex_lines_for(query, relevant, docs_by_path):
    """Lex lines of the kinds a model writes: the relevant document's title words, a phrase, a negation."""
    title = docs_by_path[next(iter(relevant))].title
    words = [w for w in title.replace('"', " ").split() if w.strip("-.")][:3]
    lines = [("lex", " ".join(words))] if words else []
    q = query.split()
    if len(q) >= 2:
        lines.append(("lex", f'"{q[0]} {q[1]}" {" ".join(q[2:])}'.strip()))
        lines.append(("lex", f"{q[0]} -{q[-1]}"))
    return [(k, t) for k, t in lines if t != query]


def corpus_cases(corpus, queries_file):
    docs = rt.read_corpus(corpus)
    by_path = {d.path: d for d in docs}
    queries = [json.loads(x) for x in Path(queries_file).read_text().splitlines() if x.strip()]
    cases = []
    for rec in queries:
        rel = rec["relevant"] if isinstance(rec["relevant"], dict) else {p: 1 for p in rec["relevant"]}
        cases.append((rec["query"], []))
        cases.append((rec["query"], lex_lines_for(rec["query"], rel, by_path)))
    return cases


def assert_same_rankings(corpus, cases):
    engine = rt.Engine(corpus, vectors=False)
    with rt.QmdEngine(corpus) as qmd:
        answers = qmd.run(cases)
    assert not [a["error"] for a in answers if a["error"]]
    diffs = []
    for (q, exp), a in zip(cases, answers):
        r = engine.rank(q, exp)
        if r.paths != a["files"] or r.strong_signal != a["strong_signal"]:
            diffs.append((q, exp, r.paths[:3], a["files"][:3]))
    assert not diffs, f"{len(diffs)}/{len(cases)} rankings differ, e.g. {diffs[:3]}"
    found = sum(1 for a in answers if a["files"])
    assert found > len(cases) // 3  # the comparison is about real result lists, not empty ones
    return answers


def test_bm25_lex_rankings_equal_real_qmd_on_notes():
    cases = corpus_cases(NOTES, ROOT / "evals" / "retrieval" / "notes.jsonl")
    answers = assert_same_rankings(NOTES, cases)
    assert any(a["strong_signal"] for a in answers) and not all(a["strong_signal"] for a in answers)


def test_bm25_lex_rankings_equal_real_qmd_on_docs(tmp_path):
    build = ROOT / "evals" / "retrieval" / "build_docs.py"
    proc = subprocess.run(
        [sys.executable, str(build), str(tmp_path / "docs")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"docs corpus not buildable here (make setup-dev fetches its sdists): {proc.stderr[-200:]}")
    assert_same_rankings(
        tmp_path / "docs", corpus_cases(tmp_path / "docs", ROOT / "evals" / "retrieval" / "docs.jsonl")
    )


def test_structured_mode_equals_the_qmd_cli():
    """retrieve.mjs calls structuredSearch the way `qmd query` does with a lex:/vec: query document."""
    cases = [
        ("sourdough loaf", [("lex", "country loaf levain")]),
        ("mortgage refinance points", [("lex", "rate lock"), ("vec", "should I refinance")]),
        ("heron beta launch", [("lex", '"launch checklist"'), ("lex", "heron -beta")]),
    ]
    with rt.QmdEngine(NOTES) as qmd:
        answers = qmd.run(cases, mode="structured")
        for (q, exp), a in zip(cases, answers):
            doc = "\n".join([f"lex: {q}"] + [f"{k}: {t}" for k, t in exp])
            hits = qmd.sandbox.json("query", doc, "--no-rerank", "-n", "10")
            assert [h["file"].removeprefix(f"qmd://{qmd.collection}/") for h in hits] == a["files"]
            assert a["files"]
