"""bench/bench_agree.py --retrieval: the rubric's score against the retrieval lift, rank-correlated by hand."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_agree", ROOT / "bench" / "bench_agree.py")
ba = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ba)


def test_average_ranks_share_ties():
    assert ba.average_ranks([10, 30, 20, 30]).tolist() == [1.0, 3.5, 2.0, 3.5]


def test_spearman_hand_computed():
    # ranks of y with a tie: [1, 2, 3.5, 5, 3.5]; centred products 8, squares 10 and 9.5
    assert ba.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert ba.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
    assert ba.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert ba.spearman([1, 2, 3], [0, 0, 0]) is None  # a constant side has no ranks to correlate
    assert ba.spearman([1, 2], [1, 2]) is None


def test_spearman_equals_pearson_of_ranks_on_random_data():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, 40), rng.normal(size=40)
    rx, ry = ba.average_ranks(x), ba.average_ranks(y)
    assert ba.spearman(x, y) == pytest.approx(float(np.corrcoef(rx, ry)[0, 1]))


def test_spearman_ci_brackets_rho_and_resamples_queries():
    pts = [(f"q{i}", i + (s % 2), i * 0.1) for i in range(12) for s in range(2)]
    rho, lo, hi = ba.spearman_ci(pts, n_boot=200)
    assert rho > 0.9 and 0.9 < lo <= hi <= 1.0
    assert ba.spearman_ci(pts, n_boot=200) == (rho, lo, hi)  # seeded


def test_old_rubric_is_the_one_before_the_breakage_rules():
    """Issue 21's own example: a token chain the old rubric rated Excellent and the current one does not."""
    old = ba.load_old_rubric()
    q = "apply a single commit from another branch"
    text = "lex: commit-local-origin-origin-origin\nvec: how commit-local-origin-origin affects the origin origin\n"
    assert old.score(q, text).rating == "Excellent"
    assert ba.reward.score(q, text).rating != "Excellent"
    assert not hasattr(old.score(q, text), "issues")  # no breakage kinds before issue 21


def _report(tmp_path):
    """A minimal eval_retrieval.py report: two sources, three queries, one engine."""
    good = "lex: docker disk usage\nlex: docker prune images\nvec: how to free disk space used by docker\n"
    bad = "lex: docker docker docker\nvec: docker docker docker docker\n"
    queries = [
        {"query": "docker using too much disk", "relevant": {"docker-prune.md": 1}, "category": "natural"},
        {"query": "docker disk space", "relevant": {"docker-prune.md": 1}, "category": "keywords"},
        {"query": "free disk docker", "relevant": {"docker-prune.md": 1}, "category": "keywords"},
    ]
    per = lambda xs: [{"query": q["query"], "ndcg@10": x, "strong_signal": False} for q, x in zip(queries, xs)]  # noqa: E731
    rep = {
        "config": {"corpus_name": "notes"},
        "queries": queries,
        "sources": {
            "none": {"expansions": [{"text": None} for _ in queries]},
            "file:good": {"expansions": [{"text": good, "truncated": False} for _ in queries]},
            "file:bad": {"expansions": [{"text": bad, "truncated": i == 0} for i in range(3)]},
        },
        "engines": {
            "hybrid": {
                "runs": {
                    "none": {"per_query": per([0.0, 0.5, 0.2])},
                    "file:good": {"per_query": per([1.0, 1.0, 0.6])},
                    "file:bad": {"per_query": per([0.0, 0.3, 0.2])},
                }
            }
        },
    }
    path = tmp_path / "rep.json"
    path.write_text(json.dumps(rep))
    return path


def test_retrieval_points_and_correlation(tmp_path):
    rep = json.loads(_report(tmp_path).read_text())
    rubrics = {"now": lambda q, t, cut: ba.reward.score(q, t, truncated=cut).percentage}
    pts = ba.retrieval_points(rep, rubrics)["hybrid"]
    assert len(pts) == 6 and {p["source"] for p in pts} == {"file:good", "file:bad"}
    assert [round(p["lift"], 3) for p in pts if p["source"] == "file:good"] == [1.0, 0.5, 0.4]
    bad_first = next(p for p in pts if p["source"] == "file:bad" and p["category"] == "natural")
    assert bad_first["scores"]["now"] == 0.0  # truncated: a failure
    res = ba.correlate(pts, rubrics)
    assert res["overall"]["now"]["rho"] > 0.5  # the good expansion scores higher and lifts more
    assert set(res["per_category"]) == {"natural", "keywords"} and res["overall"]["changed"] == 4
    assert res["changed"]["n"] == 4


def test_cli_retrieval_without_qmd_checkout(tmp_path):
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(ba.main, ["--retrieval", str(_report(tmp_path)), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "engine hybrid: score vs nDCG@10 lift" in result.output and f"before issue 21 ({ba.OLD_RUBRIC_COMMIT})" in (
        result.output
    )
    assert len(next(iter(json.loads(out.read_text()).values()))["points"]) == 6
    result = CliRunner().invoke(ba.main, [])
    assert result.exit_code == 2 and "--qmd-reward" in result.output
