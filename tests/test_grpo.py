"""grpo.py: advantages, KL, the clipped objective, shared-prefill rollouts, a real run, resume, --eval-only."""

import hashlib
import json

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

import grpo
import runtime
import train


def test_advantages_are_group_relative_and_zero_for_equal_rewards():
    assert np.all(grpo.group_advantages([0.5, 0.5, 0.5, 0.5]) == 0)
    a = grpo.group_advantages([0.0, 1.0, 0.5, 0.5])
    assert abs(a.mean()) < 1e-9 and abs(a.std() - 1.0) < 1e-3
    assert a[1] > a[2] == a[3] > a[0]


def test_clipped_objective_matches_hand_computation():
    # one token per row: ratios e^0.5 (clipped from above for A>0) and e^-0.5 (clipped from below for A<0)
    logp = mx.array([[0.5], [-0.5], [0.1]])
    old = mx.zeros((3, 1))
    ref = mx.zeros((3, 1))
    adv = mx.array([1.0, -1.0, -2.0])
    mask = mx.ones((3, 1))
    per_tok, kl, clipped = grpo.grpo_token_loss(logp, old, ref, adv, mask, beta=0.1, clip_eps=0.2)
    r = np.exp([0.5, -0.5, 0.1])
    pg = [-min(r[0] * 1, 1.2 * 1), -min(r[1] * -1, 0.8 * -1), -min(r[2] * -2, 1.1052 * -2)]
    k3 = [np.exp(-x) + x - 1 for x in (0.5, -0.5, 0.1)]
    expected = [pg[i] + 0.1 * k3[i] for i in range(3)]
    assert np.allclose(np.array(per_tok)[:, 0], expected, atol=1e-4)
    assert np.array(clipped)[:, 0].tolist() == [1.0, 1.0, 0.0]
    assert np.allclose(np.array(kl)[:, 0], k3, atol=1e-6)


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    data = root / "data"
    data.mkdir()
    rows = []
    for i in range(40):
        out = [["lex", f"auth config {i}"], ["vec", f"where is auth config {i} stored"]]
        rows.append(json.dumps({"query": f"auth config {i}", "output": out}))
    (data / "d.jsonl").write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(
        train.cli,
        ["sft", "--model", str(tiny_model_path), "--data", str(data), "--adapter-path", str(root / "sft"), "--iters", "2",
         "--batch-size", "2", "--grad-accumulation-steps", "1", "--steps-per-report", "1", "--steps-per-eval", "100",
         "--max-seq-length", "128", "--rank", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


def policy_cfg(root, **kw):
    cfg = dict(grpo.GRPO_DEFAULTS)
    cfg.update(
        model=None, sft_adapter=str(root / "sft"), adapter_path=str(root / "grpo"), data=str(root / "data"),
        steps=2, batch_size=2, group_size=3, max_completion_tokens=8, eval_every=1000, eval_queries=2,
        eval_max_tokens=8, save_every=1, learning_rate=1e-2, warmup_steps=0, updates_per_batch=2,
    )  # fmt: skip
    cfg.update(kw)
    cfg["model"] = json.loads((root / "sft" / "adapter_config.json").read_text())["base_model"]
    return cfg


def test_kl_is_exactly_zero_at_init_and_when_lora_is_off(sft_adapter):
    cfg = policy_cfg(sft_adapter)
    model, tok, _, _ = grpo.build_policy(cfg)
    from prompt import prompt_ids

    p = prompt_ids(tok, "auth config 3")
    comps, mask = grpo.group_batch([[1, 2, 3], [4, 5]])
    logp = grpo.completion_logprobs(model, p, comps)
    with grpo.lora_off(model):
        ref = grpo.completion_logprobs(model, p, comps)
    _, kl, _ = grpo.grpo_token_loss(logp, logp, ref, mx.array([1.0, -1.0]), mask, 0.04, 0.2)
    assert mx.array_equal(logp, ref).item() and float(kl.sum()) == 0.0  # fresh LoRA: lora_b == 0
    # move the GRPO LoRA: the policy changes, the reference (LoRA off) does not
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = mx.ones_like(m.lora_b) * 0.05
    moved = grpo.completion_logprobs(model, p, comps)
    with grpo.lora_off(model):
        ref2 = grpo.completion_logprobs(model, p, comps)
    assert not mx.allclose(moved, ref).item()
    assert mx.array_equal(ref2, ref).item()
    _, kl2, _ = grpo.grpo_token_loss(moved, moved, ref2, mx.array([1.0, -1.0]), mask, 0.04, 0.2)
    assert float(kl2.sum()) > 0


def _naive_logprobs(model, prompt, comps):
    """The straightforward computation: every row is prompt + completion, full log-softmax."""
    P = len(prompt)
    rows = mx.concatenate([mx.broadcast_to(mx.array(prompt)[None], (comps.shape[0], P)), comps], axis=1)
    logits = model(rows[:, :-1])[:, P - 1 :].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return mx.take_along_axis(logprobs, comps[..., None], axis=-1)[..., 0]


def test_shared_prompt_logprobs_and_gradients_equal_the_naive_computation(sft_adapter):
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    model, tok, _, _ = grpo.build_policy(policy_cfg(sft_adapter))
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.05
    from prompt import prompt_ids

    p = prompt_ids(tok, "where is the auth config stored")
    comps, mask = grpo.group_batch([[5, 6, 7, 8, 9], [11, 12], [13, 14, 15]])
    shared, naive = grpo.completion_logprobs(model, p, comps), _naive_logprobs(model, p, comps)
    assert float((mx.abs(shared - naive) * mask).max()) < 1e-5
    adv = mx.array([1.0, -0.5, 0.25])

    def loss(fn):
        return lambda m: ((fn(m, p, comps) * adv[:, None]) * mask).sum()

    _, g_shared = nn.value_and_grad(model, loss(grpo.completion_logprobs))(model)
    _, g_naive = nn.value_and_grad(model, loss(_naive_logprobs))(model)
    a, b = dict(tree_flatten(g_shared)), dict(tree_flatten(g_naive))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        scale = float(mx.abs(b[k]).max())
        assert scale > 0 and float(mx.abs(a[k] - b[k]).max()) <= 1e-4 * scale, k


def test_token_logprobs_gradient_matches_autodiff_of_log_softmax():
    logits = mx.random.normal((3, 5, 50)) * 3
    targets = mx.random.randint(0, 50, (3, 5))
    weights = mx.random.normal((3, 5))

    def ours(x):
        return (grpo.token_logprobs(x, targets) * weights).sum()

    def plain(x):
        lp = x - mx.logsumexp(x, axis=-1, keepdims=True)
        return (mx.take_along_axis(lp, targets[..., None], axis=-1)[..., 0] * weights).sum()

    (v1, g1), (v2, g2) = mx.value_and_grad(ours)(logits), mx.value_and_grad(plain)(logits)
    assert abs(v1.item() - v2.item()) < 1e-4
    assert mx.allclose(g1, g2, atol=1e-6).item()


def _scorer(query, text):
    # a deterministic reward with variance within groups, so the update path runs
    return (len(text) % 5) / 4, True


def test_truncated_rollouts_score_as_failures():
    good = "lex: auth config settings\nvec: where is the authentication configuration for the app stored"
    assert grpo.default_scorer("auth config", good)[0] > 0.8
    assert grpo.default_scorer("auth config", good, truncated=True) == (0.0, False)
    assert grpo._takes_truncated(grpo.default_scorer) and grpo._takes_truncated(lambda q, t, **kw: 0)
    assert not grpo._takes_truncated(_scorer)  # (query, text) scorers are still called that way


class RecordingScorer:
    """_scorer's reward, recording the truncated flag each rollout came with."""

    def __init__(self):
        self.flags = []

    def __call__(self, query, text, truncated=False):
        self.flags.append(truncated)
        return _scorer(query, text)


@pytest.mark.slow
def test_two_step_run_trains_only_the_grpo_lora_and_resumes(sft_adapter):
    sft_file = sft_adapter / "sft" / "adapters.safetensors"
    sft_hash = hashlib.sha256(sft_file.read_bytes()).hexdigest()
    logs = []
    cfg = policy_cfg(sft_adapter, adapter_path=str(sft_adapter / "straight"), steps=3)
    recorder = RecordingScorer()
    grpo.run_grpo(cfg, echo=logs.append, scorer=recorder)
    out = sft_adapter / "straight"
    weights = mx.load(str(out / "adapters.safetensors"))
    assert weights and all(k.endswith(("lora_a", "lora_b")) for k in weights)
    assert all(".q_proj." in k or ".v_proj." in k for k in weights)
    assert any(float(mx.abs(v).max()) > 0 for k, v in weights.items() if k.endswith("lora_b"))
    assert hashlib.sha256(sft_file.read_bytes()).hexdigest() == sft_hash
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # every rollout's truncation reached the scorer, and agrees with the logged share
    per_step = len(recorder.flags) // 3
    for i, r in enumerate(steps):
        flags = recorder.flags[i * per_step : (i + 1) * per_step]
        assert abs(r["truncated"] - sum(flags) / len(flags)) < 1e-3
    for key in [
        "reward_mean",
        "reward_std",
        "format_valid",
        "zero_variance_groups",
        "kl",
        "clip_ratio",
        "completion_len_mean",
        "completion_len_max",
        "truncated",
        "tokens_per_sec",
        "step_s",
        "peak_memory_gb",
        "eta_s",
    ]:
        assert key in steps[-1], key  # fmt: skip
    assert (out / "grpo.png").exists() and (out / "config.yaml").exists()
    assert any("step    1/3 | reward" in line for line in logs)

    # 2 steps, then --resume to 3: the same adapter as 3 steps in one go
    half = policy_cfg(sft_adapter, adapter_path=str(sft_adapter / "half"), steps=2)
    grpo.run_grpo(half, echo=lambda s: None, scorer=_scorer)
    logs2 = []
    grpo.run_grpo({**half, "steps": 3}, resume=True, echo=logs2.append, scorer=_scorer)
    assert any("resuming" in line for line in logs2)
    resumed = mx.load(str(sft_adapter / "half" / "adapters.safetensors"))
    for k in weights:
        assert mx.allclose(weights[k], resumed[k], atol=1e-6).item(), k


@pytest.mark.slow
def test_drift_guard_stops_the_run(sft_adapter):
    cfg = policy_cfg(
        sft_adapter, adapter_path=str(sft_adapter / "drift"), steps=5, drift_window=2, drift_min_format=0.5
    )
    logs = []
    result = grpo.run_grpo(cfg, echo=logs.append, scorer=lambda q, t: ((len(t) % 3) / 2, False))
    assert result["stopped"] and "drift guard" in result["stopped"] and result["step"] == 2


def test_eval_only_reports_with_eval_py(sft_adapter, tiny_model_path):
    q = sft_adapter / "q.txt"
    q.write_text("# category: short\nauth config\nwebhooks\n")
    out = sft_adapter / "scores.json"
    result = CliRunner().invoke(
        grpo.cli, ["--eval-only", "--adapter", str(sft_adapter / "sft"), "--queries", str(q), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "per category:" in result.output and "format-valid" in result.output
    assert json.loads(out.read_text())["summary"]["queries"] == 2


def test_missing_sft_adapter_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(
        grpo.cli, ["--sft-adapter", str(tmp_path / "none"), "--adapter-path", str(tmp_path / "g")]
    )
    assert result.exit_code == 2 and "no SFT adapter here" in result.output


def test_stacked_adapter_loads_through_runtime(sft_adapter):
    cfg = policy_cfg(sft_adapter, adapter_path=str(sft_adapter / "stack"), steps=1)
    grpo.run_grpo(cfg, echo=lambda s: None, scorer=_scorer)
    chain = runtime.adapter_chain(sft_adapter / "stack")
    assert [p.name for p in chain] == ["sft", "stack"]
    model, _ = runtime.load_model(cfg["model"], sft_adapter / "stack")
    assert any(hasattr(m, "lora_a") for _, m in model.named_modules())


def _tree_hash(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_output_folder_that_is_holds_or_sits_in_an_input_is_refused(sft_adapter):
    """grpo.py --overwrite used to rmtree --adapter-path: pointed at the SFT adapter (or `adapters/`,
    which holds it) it deleted the adapter it was about to train on."""
    sft, data = sft_adapter / "sft", sft_adapter / "data"
    before = _tree_hash(sft_adapter)
    for out in [sft, sft_adapter, sft / "inner", data]:
        result = CliRunner().invoke(
            grpo.cli, ["--sft-adapter", str(sft), "--data", str(data), "--adapter-path", str(out), "--overwrite"]
        )
        assert result.exit_code == 2, (out, result.output)
        assert "must be a folder of its own" in result.output and str(out) in result.output
    assert _tree_hash(sft_adapter) == before


def test_overwrite_keeps_other_files_and_restores_the_old_run_on_failure(sft_adapter):
    out = sft_adapter / "ow"
    cfg = policy_cfg(sft_adapter, adapter_path=str(out), steps=1)
    grpo.run_grpo(cfg, echo=lambda s: None, scorer=_scorer)
    (out / "notes.txt").write_text("mine")
    old = _tree_hash(out)

    def broken(query, text):
        raise RuntimeError("scorer bug")

    with pytest.raises(RuntimeError, match="scorer bug"):
        grpo.run_grpo(cfg, overwrite=True, echo=lambda s: None, scorer=broken)
    assert _tree_hash(out) == old  # the old run is back, byte for byte
    assert not (out / runtime.ReplacedRun.ASIDE).exists()

    grpo.run_grpo({**cfg, "seed": 1}, overwrite=True, echo=lambda s: None, scorer=_scorer)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoints" / "step_0000001" / "state.json").exists()
    assert _tree_hash(out)["adapters.safetensors"] != old["adapters.safetensors"]
    assert not (out / runtime.ReplacedRun.ASIDE).exists()


def test_the_printed_grpo_resume_hint_works_verbatim(sft_adapter, monkeypatch):
    import shlex
    import signal

    import reward

    real, calls = reward.score, []

    def score_then_interrupt(query, text, **kw):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during the first step's rewards
        return real(query, text, **kw)

    monkeypatch.setattr(reward, "score", score_then_interrupt)
    out = sft_adapter / "hint run"
    args = [
        "--sft-adapter", str(sft_adapter / "sft"), "--data", str(sft_adapter / "data"), "--adapter-path", str(out),
        "--steps", "2", "--batch-size", "2", "--group-size", "2", "--max-completion-tokens", "4",
        "--eval-queries", "0", "--save-every", "1",
    ]  # fmt: skip
    first = CliRunner().invoke(grpo.cli, args)
    assert first.exit_code == 130 and "stopped at step 1" in first.output, first.output
    argv = shlex.split(first.output.split("Continue with: ", 1)[1].splitlines()[0])
    assert argv[:2] == ["python", "grpo.py"]
    monkeypatch.undo()
    resumed = CliRunner().invoke(grpo.cli, argv[2:])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "step    2/2 | reward" in resumed.output


def test_bad_grpo_values_are_refused_before_anything_loads(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("beta: -0.1\n")
    r = CliRunner().invoke(grpo.cli, ["--config", str(cfg), "--sft-adapter", str(tmp_path / "none")])
    assert r.exit_code == 2 and "g.yaml: beta: -0.1 is not allowed; beta must be a number >= 0" in r.output
    r = CliRunner().invoke(grpo.cli, ["--group-size", "1", "--sft-adapter", str(tmp_path / "none")])
    assert r.exit_code == 2 and "--group-size 1: group_size must be an integer >= 2" in r.output


def test_grpo_configs_hold_only_what_differs_from_the_defaults():
    """configs/grpo.yaml used to repeat all of GRPO_DEFAULTS: a new key was written three times."""
    import yaml

    for name in ["grpo.yaml", "grpo-demo.yaml"]:
        values = yaml.safe_load((runtime.Path(grpo.__file__).parent / "configs" / name).read_text()) or {}
        same = [k for k, v in values.items() if grpo.GRPO_DEFAULTS[k] == v]
        assert not same, (name, same)
