"""reward.py: the rubric's dimensions, hard failures, QMD survival, the CLI, and fuzzing."""

import json

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import reward
from reward import score

GOOD = (
    "lex: TDS motorsports history\nlex: TDS motorsports founders team\n"
    "vec: who founded TDS motorsports and what does the company do\n"
    "vec: background and ownership of the TDS motorsports racing team\n"
    "hyde: TDS Motorsports is a racing team and performance shop; its founders started it to build race cars."
)


def test_good_output_scores_full_marks_and_excellent():
    s = score("who is TDS motorsports", GOOD)
    assert s.reward == 1.0 and s.rating == "Excellent" and s.max == 140
    assert s.deductions == [] and s.format_valid
    assert s.dimensions == {
        "format": 30,
        "diversity": 30,
        "quality": 20,
        "entity": 20,
        "think": 20,
        "survival": 0,
        "language": 0,
        "breakage": 0,
        "hyde": 20,
    }
    assert s.issues == []


def test_seed_example_bad_lex_scores_poor():
    # The seeds' SCORING.md example scored about a third; its vec line "TDS motorsports information" is
    # the query plus a filler word, a breakage since issue 21, which takes it further down.
    bad = "lex: find information about\nlex: company details\nvec: who is TDS motorsports company\nvec: TDS motorsports information"
    s = score("who is TDS motorsports", bad)
    assert s.reward < 0.25 and s.rating in ("Poor", "Failed"), s.reward
    reasons = " | ".join(r for _, _, r in s.deductions)
    assert "no lex line keeps the query's named entities" in reasons
    assert "generic filler" in reasons
    assert s.issues == ["query plus filler"]


def test_self_test_orderings_all_hold():
    assert reward.self_test(verbose=False) == 0
    result = CliRunner().invoke(reward.cli, [])
    assert result.exit_code == 0, result.output
    assert f"{len(reward.SELF_TEST)}/{len(reward.SELF_TEST)} orderings correct" in result.output


def test_hard_failures_score_zero():
    cases = {
        "leaked": "lex: auth config\nvec: where is the auth config<|im_end|>",
        "prose": "Here are some expansions:\nlex: auth config\nvec: auth configuration file",
        "bullet": "- lex: auth config\nvec: auth configuration file location",
        "empty": "   \n\n",
        "upper": "LEX: auth config\nvec: auth configuration file location",
    }
    for name, text in cases.items():
        s = score("auth config", text)
        assert s.reward == 0.0 and s.hard_failure, name
        assert s.rating == "Failed" and not s.format_valid, name


def test_think_block_loses_the_bonus_but_is_not_a_hard_failure():
    body = "lex: auth config settings\nvec: where are the authentication settings kept"
    plain, thought = score("auth config", body), score("auth config", "<think>\nok\n</think>\n" + body)
    assert thought.hard_failure is None
    assert plain.dimensions["think"] == 20 and thought.dimensions["think"] == 0
    assert thought.reward < plain.reward


def test_missing_vec_and_echoes_are_penalised():
    only_lex = score("docker networking", "lex: docker network bridge\nlex: docker compose networks")
    assert only_lex.dimensions["format"] == 20 and not only_lex.format_valid
    echo = score("docker networking", "lex: docker networking\nvec: Docker Networking")
    assert echo.dimensions["diversity"] <= 10
    assert echo.reward < 0.6


def test_qmd_survival_counts_lines_qmd_would_drop():
    s = score("auth config", "lex: auth config file\nlex: login settings file\nvec: where is the authentication set up")
    # "login settings file" contains neither "auth" nor "config": QMD drops it at run time (our rubric
    # keeps it as on-topic: it shares "file" with an on-topic line)
    assert (s.qmd_kept, s.qmd_total) == (2, 3)
    assert s.dimensions["survival"] == -5


def test_hyde_length_repetition_and_count():
    base = "lex: sourdough starter feeding\nvec: how often should a sourdough starter be fed\n"
    short = score("sourdough starter", base + "hyde: Feed the starter daily.")
    long_ = score("sourdough starter", base + "hyde: " + "Feed the sourdough starter with flour and water. " * 6)
    two = score(
        "sourdough starter",
        base
        + "hyde: Feed the sourdough starter 1:1:1 every 12 hours at room temperature.\nhyde: Another sourdough passage here that is long enough to count.",
    )
    assert short.dimensions["hyde"] == 17
    assert long_.dimensions["hyde"] < 15
    assert two.dimensions["hyde"] == 15


def test_entities_and_generic_lex():
    q = "how to use React hooks"
    keeps = score(q, "lex: React hooks useState\nvec: using React hooks in function components")
    drops = score(q, "lex: function components tutorial\nvec: using React hooks in function components")
    generic = score(q, "lex: React hooks useState\nlex: learn about\nvec: using React hooks in function components")
    assert keeps.dimensions["entity"] == 20
    assert drops.dimensions["entity"] == -30 + 5
    # a generic filler line shares no word with the query: off-topic, left out, and 30 points
    assert generic.issues == ["off-topic lex"] and generic.dimensions["entity"] == 20
    assert generic.reward < keeps.reward - 0.2
    # a query with no key terms has no topic to be off: the generic-lex rule still applies
    no_terms = score("what is it", "lex: learn about\nlex: what it is\nvec: what the word it refers to here")
    assert no_terms.dimensions["entity"] == 20 - 15 and no_terms.issues == []


def test_key_terms_stand_in_when_no_named_entities():
    s = score("auth config", "lex: login page\nvec: where is the login page configuration")
    assert s.dimensions["entity"] < 0


def test_non_latin_query_expanded_in_english_is_penalised():
    zh = "Docker 容器 网络"
    native = score(zh, "lex: Docker 容器 网络 配置\nvec: Docker 容器之间如何通过网络通信")
    english = score(zh, "lex: Docker container network\nvec: how do Docker containers talk over a network")
    assert native.dimensions["language"] == 0
    assert english.dimensions["language"] == -40
    assert native.reward > english.reward + 0.2


def test_score_batch_and_reward_agree():
    qs = ["auth config", "who is TDS motorsports"]
    outs = ["lex: auth config\nvec: auth", GOOD]
    assert reward.score_batch(qs, outs) == [reward.reward(q, o) for q, o in zip(qs, outs)]


def test_to_dict_has_documented_fields():
    d = score("who is TDS motorsports", GOOD).to_dict()
    for key in [
        "query",
        "score",
        "percentage",
        "rating",
        "total",
        "max",
        "dimensions",
        "deductions",
        "hard_failure",
        "format_valid",
        "qmd_kept",
        "qmd_total",
        "issues",
    ]:
        assert key in d
    json.dumps(d)


def test_score_cli_reports_file_line_and_exit_code(tmp_path):
    f = tmp_path / "outs.jsonl"
    f.write_text(
        json.dumps({"query": "who is TDS motorsports", "text": GOOD})
        + "\n"
        + json.dumps({"query": "auth config", "output": [["lex", "auth"], ["vec", "x"]]})
        + "\n"
        + "{not json\n"
    )
    result = CliRunner().invoke(reward.cli, ["score", str(f)])
    assert result.exit_code == 1  # an unreadable line fails the command
    assert f"{f}:1: 1.00 Excellent" in result.output
    assert f"{f}:2:" in result.output and "shares no word with the query" in result.output
    assert "breakage: off-topic vec 1" in result.output
    assert f"{f}:3: not valid JSON" in result.output
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"query": "who is TDS motorsports", "text": GOOD}) + "\n")
    assert CliRunner().invoke(reward.cli, ["score", str(ok), "--min-score", "0.9"]).exit_code == 0
    assert CliRunner().invoke(reward.cli, ["score", str(f.parent / "ok.jsonl"), "--min-score", "1.01"]).exit_code == 1


LINE = st.one_of(
    st.text(max_size=80),
    st.builds(lambda k, t: f"{k}: {t}", st.sampled_from(["lex", "vec", "hyde", "Lex", "hyde "]), st.text(max_size=120)),
    st.sampled_from(["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>", "", "lex:", "\r"]),
)


@settings(max_examples=400, deadline=None)
@given(query=st.text(max_size=60), lines=st.lists(LINE, max_size=12))
def test_fuzz_never_raises_and_stays_in_range(query, lines):
    s = score(query, "\n".join(lines))
    assert 0.0 <= s.reward <= 1.0
    assert s.hard_failure is None or not s.hard_failure.startswith("scorer error"), s.hard_failure
    s.to_dict()


@settings(max_examples=50, deadline=None)
@given(query=st.text(), output=st.text())
def test_fuzz_arbitrary_unicode(query, output):
    s = score(query, output)
    assert 0.0 <= s.reward <= 1.0
    assert s.hard_failure is None or not s.hard_failure.startswith("scorer error"), s.hard_failure


def test_huge_and_non_string_inputs():
    huge = ("lex: auth config " + "x" * 1000 + "\n") * 2000
    assert 0.0 <= score("auth config", huge).reward <= 1.0
    assert score("auth config", None).reward == 0.0
    assert 0.0 <= score(None, "lex: a\nvec: b").reward <= 1.0


def test_every_generic_phrase_passes_the_gate():
    # is_generic_lex rules lines out by a few pieces of the phrases: each phrase must hold one
    assert all(reward.is_generic_lex(p) for p in reward.GENERIC_LEX_PHRASES)
