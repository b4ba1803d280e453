"""The shipped data set and eval queries meet the bar, and data.py's commands work."""

import json
from collections import Counter

import pytest
from click.testing import CliRunner
from conftest import ROOT

import data
import reward


@pytest.fixture(scope="module")
def examples():
    return data.load_examples()


def test_at_least_3000_unique_queries(examples):
    unique, dups = data.dedupe(examples)
    assert len(unique) >= 3000
    assert dups == []


def test_every_example_is_excellent_and_survives_qmd(examples):
    problems = [f"{ex.source}: {p}" for ex in examples for p in data.check_example(ex, 0.8)]
    assert problems == []


def test_coverage_short_and_non_english(examples):
    n = len(examples)
    assert sum(data.is_short(e.query) for e in examples) / n >= 0.20
    non_en = [e for e in examples if e.lang != "en"]
    assert len(non_en) / n >= 0.08
    langs = Counter(e.lang for e in non_en)
    assert {"zh", "ja", "ru", "de", "es", "fr"} <= set(langs)
    categories = Counter(e.category for e in examples)
    for cat in [
        "short",
        "howto",
        "error",
        "code",
        "entity",
        "people",
        "places",
        "notes",
        "temporal",
        "comparison",
        "quoted",
        "negation",
        "question",
        "multilingual",
    ]:
        assert categories[cat] >= 100, cat


def test_no_template_skeleton_covers_more_than_2_percent(examples):
    for kind, (total, top) in data.sameness(examples).items():
        skel, count = top[0]
        assert count / total <= 0.02, (kind, skel, count, total)


def test_eval_queries_are_many_varied_and_disjoint_from_training(examples):
    evals = data.read_queries()
    assert len(evals) >= 60
    assert len({c for _, c in evals}) >= 12
    train = {data.normalize_query(e.query) for e in examples}
    assert [q for q, _ in evals if data.normalize_query(q) in train] == []


def test_validate_command_reports_file_line_reasons(tmp_path):
    p = tmp_path / "d.jsonl"
    good = {"query": "auth config", "output": [["lex", "auth config file"], ["vec", "where is the auth config stored"]]}
    weak = {
        "query": "postgres vacuum",
        "output": [["lex", "database maintenance"], ["vec", "routine maintenance for databases"]],
    }
    p.write_text(json.dumps(good) + "\n" + json.dumps(weak) + "\n" + json.dumps(good) + "\n")
    result = CliRunner().invoke(data.cli, ["validate", str(p), "--evals", ""])
    assert result.exit_code == 1
    assert f"{p}:2: score" in result.output and "QMD drops it" in result.output
    assert f"{p}:3: duplicate query 'auth config' (first at {p}:1)" in result.output
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"query": "x", "output": [["lex", "x"]]}\n{"query": "y"}\n')
    result = CliRunner().invoke(data.cli, ["validate", str(broken)])
    assert result.exit_code == 1 and f"{broken}:2:" in result.output


def test_validate_and_stats_on_the_shipped_data():
    ok = CliRunner().invoke(data.cli, ["validate"])
    assert ok.exit_code == 0, ok.output[-2000:]
    stats = CliRunner().invoke(data.cli, ["stats"])
    assert stats.exit_code == 0
    for heading in [
        "unique queries",
        "per category:",
        "per language:",
        "scores (reward.py):",
        "lines per example:",
        "near-duplicate query pairs",
        "template sameness",
    ]:
        assert heading in stats.output


def test_split_command_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert CliRunner().invoke(data.cli, ["split", "--out", str(a)]).exit_code == 0
    assert CliRunner().invoke(data.cli, ["split", "--out", str(b)]).exit_code == 0
    for name in ["train.jsonl", "valid.jsonl"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    train = data.load_examples([a / "train.jsonl"])
    valid = data.load_examples([a / "valid.jsonl"])
    assert not {e.query for e in train} & {e.query for e in valid}
    assert 0.03 < len(valid) / (len(train) + len(valid)) < 0.08


def test_reward_scores_fast_enough_to_validate_everything_in_seconds(examples):
    # not a speed assertion (bench/ does that): just that scoring the set works end to end
    scores = reward.score_batch(
        [e.query for e in examples], ["\n".join(f"{k}: {t}" for k, t in e.output) for e in examples]
    )
    assert len(scores) == len(examples) and min(scores) >= 0.8


def test_data_readme_documents_the_schema():
    text = (ROOT / "data" / "README.md").read_text()
    assert '"query"' in text and '"output"' in text and "python data.py validate" in text
