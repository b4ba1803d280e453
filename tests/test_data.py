"""The JSONL schema loader: every failure mode names file and line; dedupe; deterministic split."""

import json

import pytest

import data
import prompt
from data import DataError, dedupe, load_examples, split

GOOD = {
    "query": "auth config",
    "category": "short",
    "output": [["lex", "auth config file"], ["vec", "where is the auth config"]],
}


def write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text(
        "".join((ln if isinstance(ln, str) else json.dumps(ln, ensure_ascii=False)) + "\n" for ln in lines),
        encoding="utf-8",
    )
    return p


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "expected a JSON object"),
        ({"output": GOOD["output"]}, 'missing or empty "query"'),
        ({"query": "  ", "output": GOOD["output"]}, 'missing or empty "query"'),
        ({"query": "a\nb", "output": GOOD["output"]}, "contains a newline"),
        ({"query": "q"}, '"output" must be a non-empty list'),
        ({"query": "q", "output": []}, '"output" must be a non-empty list'),
        ({"query": "q", "output": [["lex"]]}, "must be a [type, text] pair"),
        ({"query": "q", "output": [["keywords", "x"]]}, "has type 'keywords'"),
        ({"query": "q", "output": [["lex", ""]]}, "has empty text"),
        ({"query": "q", "output": [["lex", 3]]}, "has empty text"),
        ({"query": "q", "output": [["hyde", "two\nlines"]]}, "contains a newline"),
    ],
)
def test_each_malformed_line_is_reported_with_file_and_line(tmp_path, bad, reason):
    p = write(tmp_path, "d.jsonl", [GOOD, bad])
    with pytest.raises(DataError) as err:
        load_examples([p])
    assert err.value.problems == [f"{p}:2: " + err.value.problems[0].split(": ", 1)[1]]
    assert reason in err.value.problems[0]


def test_all_problems_are_reported_not_just_the_first(tmp_path):
    a = write(tmp_path, "a.jsonl", ["{bad", GOOD, {"query": "q"}])
    b = write(tmp_path, "b.jsonl", [{"query": "x", "output": [["lex", ""]]}])
    with pytest.raises(DataError) as err:
        load_examples([a, b])
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{a}:1", f"{a}:3", f"{b}:1"]
    assert "fix them before training" in str(err.value)


def test_missing_empty_and_non_utf8_files(tmp_path):
    empty = write(tmp_path, "empty.jsonl", [])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"query": "caf\xe9"}\n')
    with pytest.raises(DataError) as err:
        load_examples([tmp_path / "nope.jsonl", empty, latin])
    text = "\n".join(err.value.problems)
    assert "nope.jsonl: file not found" in text
    assert "empty.jsonl: no records" in text
    assert "latin.jsonl: not UTF-8" in text


def test_blank_lines_and_extra_fields_are_fine(tmp_path):
    p = write(tmp_path, "d.jsonl", [GOOD, "", {**GOOD, "query": "other", "lang": "de", "note": 1}])
    exs = load_examples([p])
    assert [e.query for e in exs] == ["auth config", "other"]
    assert exs[0].category == "short" and exs[1].lang == "de" and exs[1].extra["note"] == 1
    assert exs[1].source == f"{p}:3"
    assert exs[1].to_record()["note"] == 1


def test_dedupe_by_normalised_query(tmp_path):
    p = write(tmp_path, "d.jsonl", [GOOD, {**GOOD, "query": "Auth   CONFIG"}, {**GOOD, "query": "auth configs"}])
    unique, dups = dedupe(load_examples([p]))
    assert [e.query for e in unique] == ["auth config", "auth configs"]
    assert [(d.source, k.source) for d, k in dups] == [(f"{p}:2", f"{p}:1")]


def test_split_is_deterministic_order_independent_and_stable(tmp_path):
    exs = [data.Example(f"query number {i}", [("lex", "x")]) for i in range(2000)]
    train, valid = split(exs, 0.1, seed=3)
    assert 150 < len(valid) < 250 and len(train) + len(valid) == 2000
    train2, valid2 = split(list(reversed(exs)), 0.1, seed=3)
    assert {e.query for e in valid2} == {e.query for e in valid}
    # adding data does not move existing queries across the split
    _, valid3 = split(exs + [data.Example(f"new {i}", [("lex", "x")]) for i in range(100)], 0.1, seed=3)
    assert {e.query for e in valid} <= {e.query for e in valid3}
    assert {e.query for e in split(exs, 0.1, seed=4)[1]} != {e.query for e in valid}


def test_examples_become_chat_messages_through_the_prompt_contract():
    ex = data.Example("auth config", [("vec", "where is it"), ("lex", "auth config file")])
    msgs = ex.to_messages()
    assert msgs[0] == {"role": "system", "content": prompt.SYSTEM_PROMPT}  # node-llama-cpp's default, as in QMD
    assert msgs[1] == {"role": "user", "content": "/no_think Expand this search query: auth config"}
    assert msgs[2] == {"role": "assistant", "content": "lex: auth config file\nvec: where is it\n"}


def test_a_utf8_bom_is_accepted_in_data_query_and_output_files(tmp_path):
    """Files saved by Windows editors start with a BOM; it used to make the first line invalid JSON."""
    from click.testing import CliRunner

    import eval as ev
    import reward

    bom = "\ufeff"
    p = tmp_path / "d.jsonl"
    p.write_text(bom + json.dumps(GOOD) + "\n" + bom + json.dumps({**GOOD, "query": "second"}) + "\n", encoding="utf-8")
    assert [e.query for e in load_examples([p])] == ["auth config", "second"]
    q = tmp_path / "q.txt"
    q.write_text(bom + "auth config\nwebhooks\n", encoding="utf-8")
    assert data.read_queries(q) == [("auth config", "uncategorised"), ("webhooks", "uncategorised")]
    outs = tmp_path / "o.jsonl"
    outs.write_text(
        bom + json.dumps({"query": "auth config", "text": "lex: auth config\nvec: auth config file"}) + "\n"
    )
    assert CliRunner().invoke(ev.cli, ["--score-only", str(outs)]).exit_code == 0
    r = CliRunner().invoke(reward.cli, ["score", str(p)])
    assert "not valid JSON" not in r.output and "2 scored" in r.output, r.output


def test_overlong_queries_and_lines_are_flagged_with_the_limit_and_why(tmp_path):
    """A 50 KB query used to pass `data.py validate` (and score Excellent)."""
    from click.testing import CliRunner

    long_q = "auth config " * 4200
    long_line = "where is the auth config stored " * 20
    p = write(
        tmp_path, "d.jsonl", [{**GOOD, "query": long_q}, {**GOOD, "output": [*GOOD["output"], ["vec", long_line]]}]
    )
    r = CliRunner().invoke(data.cli, ["validate", str(p), "--evals", ""])
    assert r.exit_code == 1
    assert f"{p}:1: query is {len(long_q.strip()):,} characters; the limit is {data.MAX_QUERY_CHARS}" in r.output
    assert "search query, not a document" in r.output
    assert f"{p}:2: vec line is {len(long_line.strip()):,} characters; the limit is {data.MAX_LINE_CHARS}" in r.output
    q = tmp_path / "q.txt"
    q.write_text("auth config\n" + long_q + "\n")
    with pytest.raises(DataError) as err:
        data.read_queries(q)
    assert f"{q}:2: query is" in str(err.value) and "in the query file" in str(err.value)
    assert "before training" not in str(err.value)
