"""reward.py against degenerate expansions (issue 21): evals/broken.jsonl holds broken expansions of
twelve kinds, each with its repaired twin, and good expansions from data/ as controls."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import reward

FIXTURES = Path(__file__).resolve().parent.parent / "evals" / "broken.jsonl"
RECORDS = [json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line.strip()]
BROKEN = [r for r in RECORDS if r["kind"] != "control"]
CONTROLS = [r for r in RECORDS if r["kind"] == "control"]
KINDS = {
    "repeated words",
    "near-duplicate lines",
    "query plus filler",
    "token chain",
    "looping hyde",
    "shuffled-query hyde",
    "off-topic lex",
    "off-topic vec",
    "unrelated lex words",
    "placeholder",
    "invented number",
    "truncated",
}


def _id(r):
    return f"{r['kind']}: {r['query']}"


def test_fixture_set_covers_every_kind_over_varied_queries():
    assert len(BROKEN) >= 60 and {r["kind"] for r in BROKEN} == KINDS
    for kind in KINDS:
        assert sum(r["kind"] == kind for r in BROKEN) >= 5, kind
    assert len({r["query"] for r in BROKEN}) >= 15
    assert any(not r["query"].isascii() for r in BROKEN)  # German, Spanish, Russian, Chinese
    assert len(CONTROLS) >= 20


@pytest.mark.parametrize("rec", BROKEN, ids=_id)
def test_each_broken_expansion_is_below_excellent_and_named(rec):
    s = reward.score(rec["query"], rec["text"], truncated=rec.get("truncated", False))
    assert s.reward < 0.8 and s.rating != "Excellent", (s.reward, s.deductions)
    assert rec["kind"] in s.issues, s.issues


@pytest.mark.parametrize("rec", BROKEN, ids=_id)
def test_each_repaired_twin_is_excellent_without_breakage(rec):
    s = reward.score(rec["query"], rec["repaired"])
    assert s.rating == "Excellent" and s.issues == [], (s.reward, s.deductions)


@pytest.mark.parametrize("rec", CONTROLS, ids=_id)
def test_good_expansions_from_the_data_stay_excellent(rec):
    s = reward.score(rec["query"], rec["text"])
    assert s.rating == "Excellent" and s.issues == [], (s.reward, s.deductions)


@pytest.mark.parametrize("rec", [r for r in BROKEN if r["kind"].startswith("off-topic")], ids=_id)
def test_an_off_topic_line_costs_more_than_leaving_it_out(rec):
    broken, twin = rec["text"].splitlines(), rec["repaired"].splitlines()
    extra = [line for line in broken if line not in twin]
    without = "\n".join(line for line in broken if line not in extra)
    assert len(extra) == 1
    assert reward.score(rec["query"], rec["text"]).reward < reward.score(rec["query"], without).reward


def test_truncated_output_is_a_failure_whatever_its_text():
    rec = next(r for r in BROKEN if r["kind"] == "truncated" and r["text"] == r["repaired"])
    assert reward.score(rec["query"], rec["text"]).rating == "Excellent"  # the text alone looks fine
    s = reward.score(rec["query"], rec["text"], truncated=True)
    assert s.reward == 0.0 and s.rating == "Failed" and s.hard_failure and s.issues == ["truncated"]
    assert not s.format_valid and s.to_dict()["issues"] == ["truncated"]
    assert reward.reward(rec["query"], rec["text"], truncated=True) == 0.0
    assert reward.score_batch([rec["query"]] * 2, [rec["text"]] * 2, [False, True]) == [1.0, 0.0]


def test_each_kind_costs_thirty_points_once_and_ten_more_per_repeat():
    text = (
        "lex: jwt exp claim\nlex: jwt exp claim check\nlex: jwt exp claims check\n"
        "vec: how to set and check the expiration time of a jwt access token"
    )
    s = reward.score("jwt token expiry", text)  # two near-duplicate pairs: one word added, one plural
    assert [p for d, p, _ in s.deductions if d == "breakage"] == [30, 10]
    assert s.dimensions["breakage"] == -40 and s.issues == ["near-duplicate lines"]


def test_score_cli_reads_the_truncated_flag_and_counts_kinds(tmp_path):
    good = next(r for r in BROKEN if r["kind"] == "truncated" and r["text"] == r["repaired"])
    rep = next(r for r in BROKEN if r["kind"] == "repeated words")
    f = tmp_path / "outs.jsonl"
    f.write_text(
        json.dumps({"query": good["query"], "text": good["text"], "truncated": True})
        + "\n"
        + json.dumps({"query": good["query"], "text": good["text"]})
        + "\n"
        + json.dumps({"query": rep["query"], "text": rep["text"], "truncated": False})
        + "\n"
    )
    result = CliRunner().invoke(reward.cli, ["score", str(f)])
    assert result.exit_code == 0, result.output
    assert f"{f}:1: 0.00 Failed" in result.output and "HARD FAILURE: cut at the token cap" in result.output
    assert f"{f}:2: 1.00 Excellent" in result.output
    assert "breakage: truncated 1, repeated words 1" in result.output
    assert CliRunner().invoke(reward.cli, ["score", str(f), "--min-score", "0.5"]).exit_code == 1


def test_broken_fixture_file_through_the_cli():
    result = CliRunner().invoke(reward.cli, ["score", str(FIXTURES), "-q"])
    assert result.exit_code == 0, result.output
    assert f"{len(BROKEN)} below 0.80 (Excellent)" in result.output


@settings(max_examples=100, deadline=None)
@given(query=st.text(max_size=40), output=st.text(max_size=200))
def test_fuzz_truncated_is_always_zero_and_never_raises(query, output):
    assert reward.score(query, output, truncated=True).reward == 0.0
    s = reward.score(query, output)
    assert 0.0 <= s.reward <= 1.0 and isinstance(s.issues, list)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.builds(
                lambda k, t: f"{k}: {t}", st.sampled_from(["lex", "vec", "hyde", " lex", "vec "]), st.text(max_size=40)
            ),
            st.sampled_from(["", "  ", "lex:", "hyde:   ", "<think>x</think>", "nope", "lex: a<|im_end|>"]),
        ),
        max_size=8,
    )
)
def test_fast_parse_agrees_with_prompt_parse_output(lines):
    # _score parses the usual output itself; it must read every output as prompt.parse_output does
    from prompt import parse_output

    text = "\n".join(lines)
    s, p = reward.score("auth config", text), parse_output(text)
    assert s.lines == p.lines
    assert (s.hard_failure is not None) == bool(p.leaked or p.invalid or (not p.lines and not p.empty))


def test_unrelated_words_reason_is_the_same_under_every_hash_seed():
    """The reason text listed the words in set order, which changes with PYTHONHASHSEED: the same
    output gave 'banana bicycle' in one run and 'bicycle banana' in the next."""
    code = (
        "import reward; r = reward.score('sqlite vacuum', 'lex: sqlite vacuum banana bicycle\\n"
        "lex: sqlite vacuum freelist\\nvec: how to shrink a sqlite database file with vacuum\\n"
        "vec: reclaim free pages in sqlite'); print(*[d[2] for d in r.deductions if 'unrelated' in d[2]])"
    )
    reasons = set()
    for seed in range(8):
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        reasons.add(out.stdout.strip())
    assert reasons == {
        "unrelated lex words: 'banana bicycle' beside the query's words in 'sqlite vacuum banana bicycle'"
    }


def test_numbers_the_query_lacks_do_not_make_two_lines_different():
    # GRPO on the demo dodged the near-duplicate check by numbering copies of a lex line
    text = (
        "lex: HIPAA 101 compliance\nlex: HIPAA 401 compliance\n"
        "vec: what a small clinic must do to comply with the HIPAA privacy rule"
    )
    s = reward.score("HIPAA compliance checklist", text)
    assert "near-duplicate lines" in s.issues, s.deductions
    # the same lines are different searches when the query itself names both numbers
    s = reward.score("HIPAA 101 vs 401 compliance", text)
    assert "near-duplicate lines" not in s.issues and s.rating == "Excellent", s.deductions
    # and a long output (the near-linear count) agrees with the short one
    long = "\n".join([text] + [f"lex: HIPAA rule part {w}" for w in "abcdefghijklmnop"])
    assert long.count("\nlex:") > reward.PAIRWISE_MAX
    dups = [r for d, _, r in reward.score("HIPAA compliance checklist", long).deductions if "near-duplicate lex" in r]
    assert dups == ["1 near-duplicate lex pair(s)"]
    assert not [r for d, _, r in reward.score("HIPAA 101 vs 401", long).deductions if "near-duplicate lex" in r]
