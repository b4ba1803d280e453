"""eval.py end to end on the tiny offline model, plus --score-only, --compare, --min-score, errors."""

import json

import pytest
from click.testing import CliRunner

import eval as ev

GOOD = (
    "lex: auth config settings\nlex: authentication configuration file\n"
    "vec: where is the authentication configuration for the app stored\n"
    "hyde: Authentication is configured in config/auth.yml: set the provider and the AUTH_SECRET variable."
)
BAD = "lex: login\nvec: settings"


@pytest.fixture(scope="module")
def sft_like_adapter(tiny_model_path, tmp_path_factory):
    """A LoRA adapter folder on the tiny model, as train.py writes it (zero-initialised lora_b)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    import runtime
    import train

    out = tmp_path_factory.mktemp("adapter")
    cfg = {**train.SFT_DEFAULTS, "model": str(tiny_model_path), "rank": 4, "alpha": 8, "dropout": 0.0}
    model, _, num_layers, _ = train.build_lora_model(cfg)
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    runtime.atomic_write_json(out / "adapter_config.json", train.adapter_config(cfg, num_layers))
    return out


def queries_file(tmp_path):
    p = tmp_path / "q.txt"
    p.write_text("# a comment\n# category: short\nauth config\nwebhooks\n\n# category: errors\nERR_REQUIRE_ESM\n")
    return p


def test_eval_cli_end_to_end_on_tiny_model(tiny_model_path, tmp_path):
    out = tmp_path / "scores.json"
    args = [
        "--model",
        str(tiny_model_path),
        "--queries",
        str(queries_file(tmp_path)),
        "--max-tokens",
        "8",
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(ev.cli, args)
    assert result.exit_code == 0, result.output
    assert "auth config" in result.output and "per category:" in result.output and "format-valid" in result.output
    data = json.loads(out.read_text())
    assert set(data) >= {"summary", "results", "generation", "config"}
    assert set(data["summary"]) >= {
        "queries",
        "average",
        "excellent",
        "format_valid_rate",
        "qmd_survival_rate",
        "per_category",
    }
    assert data["summary"]["queries"] == 3 and set(data["summary"]["per_category"]) == {"short", "errors"}
    r = data["results"][0]
    assert set(r) >= {
        "query",
        "category",
        "text",
        "score",
        "percentage",
        "rating",
        "deductions",
        "dimensions",
        "format_valid",
        "truncated",
        "issues",
    }
    s = data["summary"]
    assert s["truncated"] == sum(r["truncated"] for r in data["results"])
    assert s["issues"].get("truncated", 0) == s["truncated"]
    assert all(r["score"] == 0 and "truncated" in r["issues"] for r in data["results"] if r["truncated"])
    assert "breakage (outputs with each kind):" in result.output
    assert data["generation"]["generated_tokens"] > 0


def test_verbose_shows_raw_output_and_deductions(tiny_model_path, tmp_path):
    args = ["--model", str(tiny_model_path), "--queries", str(queries_file(tmp_path)), "--max-tokens", "4", "-v"]
    result = CliRunner().invoke(ev.cli, args)
    assert result.exit_code == 0, result.output
    assert "HARD FAILURE" in result.output or "    -" in result.output


def test_batched_and_sequential_generate_the_same_greedy_text(tiny_model):
    model, tok = tiny_model
    qs = ["auth config", "webhooks"]
    batched, _ = ev.generate_batch(model, tok, qs, max_tokens=6, batch_size=2)
    sequential, _ = ev.generate_sequential(model, tok, qs, max_tokens=6)
    assert len(batched) == 2 and all(isinstance(t, str) for t in batched)
    # right-to-left padding changes float rounding, so compare the first tokens, which are robust
    assert [t[:3] for t in batched] == [t[:3] for t in sequential]


def test_generation_marks_outputs_cut_at_max_tokens(tiny_model):
    # the untrained tiny model never emits its end token within 3 tokens: every output is cut there
    model, tok = tiny_model
    qs = ["auth config", "webhooks"]
    _, batched = ev.generate_batch(model, tok, qs, max_tokens=3, batch_size=2)
    _, sequential = ev.generate_sequential(model, tok, qs, max_tokens=3)
    assert batched["truncated"] == sequential["truncated"] == [True, True]
    result = ev.evaluate(model, tok, [(q, "short") for q in qs], max_tokens=3)
    assert result["summary"]["truncated"] == 2 and result["summary"]["average"] == 0.0
    assert "truncated" not in result["generation"]


def write_outputs(path, pairs):
    path.write_text("".join(json.dumps({"query": q, "text": t, "category": c}) + "\n" for q, t, c in pairs))
    return path


def test_score_only_compare_and_min_score(tmp_path):
    a = write_outputs(tmp_path / "a.jsonl", [("auth config", BAD, "short")])
    b = write_outputs(tmp_path / "b.jsonl", [("auth config", GOOD, "short")])
    ja, jb = tmp_path / "a.json", tmp_path / "b.json"
    ra = CliRunner().invoke(ev.cli, ["--score-only", str(a), "-o", str(ja)])
    rb = CliRunner().invoke(ev.cli, ["--score-only", str(b), "-o", str(jb), "--min-score", "0.9"])
    assert ra.exit_code == 0 and rb.exit_code == 0, ra.output + rb.output
    assert json.loads(jb.read_text())["summary"]["average"] == 1.0
    low = CliRunner().invoke(ev.cli, ["--score-only", str(a), "--min-score", "0.9"])
    assert low.exit_code == 1 and "below --min-score" in low.output
    cmp = CliRunner().invoke(ev.cli, ["--compare", str(ja), str(jb)])
    assert cmp.exit_code == 0, cmp.output
    line = next(ln for ln in cmp.output.splitlines() if ln.startswith("auth config"))
    before, after = json.loads(ja.read_text())["results"][0]["percentage"], 100.0
    assert f"{after - before:+6.1f}" in line


def test_score_only_reads_truncated_flags_and_counts_breakage_per_run(tmp_path):
    repeated = "lex: auth auth auth\nlex: authentication configuration file\nvec: where is the authentication configuration for the app stored"
    a = tmp_path / "a.jsonl"
    a.write_text(
        json.dumps({"query": "auth config", "text": GOOD, "truncated": True})
        + "\n"
        + json.dumps({"query": "webhooks", "text": repeated.replace("auth", "webhooks")})
        + "\n"
    )
    b = write_outputs(tmp_path / "b.jsonl", [("auth config", GOOD, "short"), ("webhooks", GOOD, "short")])
    ja, jb = tmp_path / "a.json", tmp_path / "b.json"
    ra = CliRunner().invoke(ev.cli, ["--score-only", str(a), "-o", str(ja)])
    assert ra.exit_code == 0, ra.output
    assert "breakage (outputs with each kind):" in ra.output
    assert "truncated 1" in ra.output and "repeated words 1" in ra.output
    sa = json.loads(ja.read_text())
    assert sa["summary"]["truncated"] == 1 and sa["results"][0]["score"] == 0.0
    assert sa["summary"]["issues"] == {"truncated": 1, "repeated words": 1}
    assert CliRunner().invoke(ev.cli, ["--score-only", str(b), "-o", str(jb)]).exit_code == 0
    cmp = CliRunner().invoke(ev.cli, ["--compare", str(ja), str(jb)])
    assert cmp.exit_code == 0, cmp.output
    rows = {
        ln.split()[0] + " " + ln.split()[1]: ln.split()[2:] for ln in cmp.output.splitlines() if ln.startswith("  ")
    }
    assert rows["truncated 1"] == ["0", "-1"] and rows["repeated words"] == ["1", "0", "-1"]


def test_compare_rescores_runs_written_before_breakage_counts(tmp_path):
    old = {"summary": {"average": 0.9, "format_valid_rate": 1.0, "qmd_survival_rate": 1.0, "excellent": 1}}
    old["results"] = [
        {
            "query": "who wrote this line",
            "percentage": 91.4,
            "text": "lex: line line line\nvec: who wrote this line of code",
        }
    ]
    pa, pb = tmp_path / "old.json", tmp_path / "old2.json"
    pa.write_text(json.dumps(old))
    pb.write_text(json.dumps(old))
    cmp = CliRunner().invoke(ev.cli, ["--compare", str(pa), str(pb)])
    assert cmp.exit_code == 0, cmp.output
    assert any(ln.split()[:4] == ["repeated", "words", "1", "1"] for ln in cmp.output.splitlines())


def test_score_only_bad_file_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"query": "x", "text": "lex: x"}\n{"query": 1}\nnope\n')
    result = CliRunner().invoke(ev.cli, ["--score-only", str(p)])
    assert result.exit_code == 2
    assert f"{p}:2:" in result.output and f"{p}:3: not valid JSON" in result.output


def test_malformed_query_file_is_a_clear_error(tiny_model_path, tmp_path):
    p = tmp_path / "q.txt"
    p.write_text("auth config\nwebhooks\nAuth  Config\n")
    result = CliRunner().invoke(ev.cli, ["--model", str(tiny_model_path), "--queries", str(p)])
    assert result.exit_code == 2
    assert f"{p}:3: duplicate query (first on line 1)" in result.output
    empty = tmp_path / "empty.txt"
    empty.write_text("# only comments\n")
    result = CliRunner().invoke(ev.cli, ["--model", str(tiny_model_path), "--queries", str(empty)])
    assert result.exit_code == 2 and "no queries" in result.output


def test_missing_model_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(ev.cli, ["--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "neither a local folder, a .gguf file nor a Hugging Face id" in result.output


def test_interactive_scores_typed_queries_and_quits_on_eof(tiny_model_path):
    result = CliRunner().invoke(
        ev.cli, ["--model", str(tiny_model_path), "--interactive", "--max-tokens", "4"], input="auth config\n\n"
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("query>") == 3  # two inputs, then end of input
    assert "-- 0.0% Failed" in out or "Excellent" in out or "Good" in out  # the score line
    assert "HARD FAILURE" in out or "format" in out  # the breakdown


def test_query_file_errors_talk_about_evaluation_not_training(tiny_model_path, tmp_path):
    p = tmp_path / "q.txt"
    p.write_text("auth config\nauth config\n")
    result = CliRunner().invoke(ev.cli, ["--model", str(tiny_model_path), "--queries", str(p)])
    assert result.exit_code == 2 and "in the query file" in result.output
    assert "before training" not in result.output


def test_min_score_is_a_fraction_and_a_percentage_is_refused(tmp_path):
    """--min-score 80 used to be accepted and always fail (averages are 0-1)."""
    b = write_outputs(tmp_path / "b.jsonl", [("auth config", GOOD, "short")])
    result = CliRunner().invoke(ev.cli, ["--score-only", str(b), "--min-score", "80"])
    assert result.exit_code == 2
    assert "80 is not a fraction in [0, 1] (for 80% write 0.8)" in result.output
    assert CliRunner().invoke(ev.cli, ["--score-only", str(b), "--min-score", "0.8"]).exit_code == 0


def test_adapter_without_model_uses_the_base_model_it_records(tiny_model_path, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model": str(tiny_model_path)}))
    from runtime import adapter_base_model

    assert adapter_base_model(adapter) == str(tiny_model_path)
    (adapter / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora"}))
    result = CliRunner().invoke(ev.cli, ["--adapter", str(adapter), "--queries", str(queries_file(tmp_path))])
    assert result.exit_code == 2 and "does not name its base model; pass --model" in result.output


def test_adapter_without_model_evaluates(sft_like_adapter, tmp_path):
    result = CliRunner().invoke(
        ev.cli, ["--adapter", str(sft_like_adapter), "--queries", str(queries_file(tmp_path)), "--max-tokens", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "per category:" in result.output


def test_compare_on_a_file_that_is_not_a_report_is_a_clear_error(tmp_path):
    """--compare used to end in KeyError: 'results'."""
    good = tmp_path / "good.json"
    b = write_outputs(tmp_path / "b.jsonl", [("auth config", GOOD, "short")])
    assert CliRunner().invoke(ev.cli, ["--score-only", str(b), "-o", str(good)]).exit_code == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"query": "auth config"}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    for bad in (other, broken):
        result = CliRunner().invoke(ev.cli, ["--compare", str(good), str(bad)])
        assert result.exit_code == 2, result.output
        assert str(bad) in result.output and isinstance(result.exception, SystemExit)
    result = CliRunner().invoke(ev.cli, ["--compare", str(other), str(good)])
    assert "not an eval report" in result.output and "eval.py -o" in result.output


def test_generation_reports_progress_with_an_eta(tiny_model_path, tmp_path):
    """make demo's eval used to print nothing for ten minutes while it generated."""
    args = ["--model", str(tiny_model_path), "--queries", str(queries_file(tmp_path)), "--max-tokens", "4"]
    result = CliRunner().invoke(ev.cli, [*args, "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "generating 3 expansions in batches of 2" in result.stderr
    assert "2/3 queries" in result.stderr and "3/3 queries" in result.stderr and "ETA" in result.stderr
    assert "ETA" not in result.stdout  # stdout stays the report


def test_progress_prints_first_last_and_at_most_every_interval():
    import runtime

    lines = []
    p = runtime.Progress(100, "gen", lines.append, every=3600)
    for i in range(1, 101):
        p(i)
    assert len(lines) == 2 and lines[0].startswith("gen: 1/100") and lines[1].startswith("gen: 100/100")
