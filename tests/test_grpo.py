"""grpo.py: advantages, KL, the clipped objective, shared-prefill rollouts, a real run, resume, --eval-only."""

import hashlib
import json
import math

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
    twice = CliRunner().invoke(
        grpo.cli, ["--eval-only", "--adapter", str(sft_adapter / "sft"), "--queries", str(q), "-o", str(out),
                   "--eval-samples", "2"],
    )  # fmt: skip
    assert twice.exit_code == 0, twice.output
    report = json.loads(out.read_text())
    assert report["summary"]["queries"] == 4 and report["config"]["samples"] == 2
    assert report["config"]["sampling"] == "qmd" and report["config"]["temp"] == grpo.QMD_SAMPLING["temp"]


def test_heldout_eval_samples_as_qmd_samples_with_the_same_draw_every_time(sft_adapter):
    import eval as ev

    model, tok = runtime.load_model(policy_cfg(sft_adapter)["model"], sft_adapter / "sft")
    queries = [("auth config 1", "short"), ("webhooks", "short")]
    cfg = policy_cfg(sft_adapter, eval_samples=3, eval_max_tokens=12)
    a, b = grpo.heldout_eval(model, tok, queries, cfg), grpo.heldout_eval(model, tok, queries, cfg)
    texts = [r["text"] for r in a["results"]]
    assert [r["query"] for r in a["results"]] == ["auth config 1"] * 3 + ["webhooks"] * 3
    assert texts == [r["text"] for r in b["results"]]  # reseeded: every evaluation draws the same noise
    assert len(set(texts[:3])) > 1  # but the samples of one query differ: it is sampling
    mx.random.seed(123)  # an evaluation's draw does not depend on the random state it finds
    assert [r["text"] for r in grpo.heldout_eval(model, tok, queries, cfg)["results"]] == texts
    greedy = grpo.heldout_eval(model, tok, queries, {**cfg, "eval_sampling": "greedy"})
    assert [r["text"] for r in greedy["results"]] == [
        r["text"] for r in ev.evaluate(model, tok, queries, 12)["results"]
    ]
    assert grpo.eval_settings(cfg) == {
        "sampling": "qmd",
        "max_tokens": 12,
        "samples": 3,
        "seed": 0,
        **grpo.QMD_SAMPLING,
    }


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
    model, tok = runtime.load_model(cfg["model"], sft_adapter / "stack")
    assert any(hasattr(m, "lora_a") for _, m in model.named_modules())
    # eval.py's loading: the last adapter folded in too, the same function with no LoRA layers left
    fused, _ = runtime.load_model(cfg["model"], sft_adapter / "stack", fuse=True)
    assert not any(hasattr(m, "lora_a") for _, m in fused.named_modules())
    x = mx.array(tok.encode("auth config", add_special_tokens=False))[None]
    want, got = model(x), fused(x)
    moved = mx.abs(want - runtime.load_model(cfg["model"])[0](x)).max().item()  # what the adapters change
    assert mx.abs(got - want).max().item() < min(1e-5, moved / 100)


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


# ----------------------------------------------------------------------------
# Objectives, each against a direct numpy computation


def _np_k3(logp, ref):
    d = ref - logp
    return np.exp(d) - d - 1


def _objective_case(seed=0):
    rng = np.random.default_rng(seed)
    G, C = 3, 5
    logp = rng.normal(-2.0, 0.5, (G, C))
    old = logp + rng.normal(0, 0.3, (G, C))  # a reused rollout: ratios away from 1, some clipped
    ref = logp + rng.normal(0, 0.2, (G, C))
    mask = np.ones((G, C))
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    adv = np.array([1.2, -0.7, 0.4])
    group = grpo.Group(query="q", prompt=[1], completions=[[1] * C, [1] * 3, [1]], finished=[True] * 3)
    group.advantages, group.ref_logp, group.mask = adv, mx.array(ref, mx.float32), mx.array(mask, mx.float32)
    batch = {"tokens": 20, "sequences": 7, "budget": 2 * 4 * 8}
    return logp, old, ref, mask, adv, group, batch


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("correction", [False, True])
def test_token_level_objectives_match_numpy(loss_type, correction):
    logp, old, ref, mask, adv, group, batch = _objective_case()
    args = {
        **grpo.GRPO_DEFAULTS,
        "loss_type": loss_type,
        "beta": 0.1,
        "clip_eps": 0.2,
        "kl_ratio_correction": correction,
    }
    lo, hi = 0.2, (0.28 if loss_type == "dapo" else 0.2)
    loss, stats = grpo.OBJECTIVES[loss_type](mx.array(logp, mx.float32), mx.array(old, mx.float32), group, batch, args)
    r = np.exp(logp - old)
    a = adv[:, None]
    pg = -np.minimum(r * a, np.clip(r, 1 - lo, 1 + hi) * a)
    kl = _np_k3(logp, ref) * (r if correction else 1.0)
    norm = batch["budget"] if loss_type == "dr_grpo" else batch["tokens"]
    expected = ((pg + 0.1 * kl) * mask).sum() / norm
    assert abs(loss.item() - expected) < 1e-5 * max(1, abs(expected))
    assert abs(stats["kl"].item() - (kl * mask).sum()) < 1e-4
    binding = (((r > 1 + hi) & (a > 0)) | ((r < 1 - lo) & (a < 0))) * mask
    assert stats["binding"].item() == binding.sum() and binding.sum() > 0  # the case makes the clip bind


@pytest.mark.parametrize("correction", [False, True])
def test_gspo_objective_matches_numpy(correction):
    logp, old, ref, mask, adv, group, batch = _objective_case(1)
    lo, hi = 0.05, 0.08
    args = {
        **grpo.GRPO_DEFAULTS,
        **{"loss_type": "gspo", "beta": 0.1, "clip_eps": lo, "epsilon_high": hi, "kl_ratio_correction": correction},
    }
    loss, stats = grpo.gspo_objective(mx.array(logp, mx.float32), mx.array(old, mx.float32), group, batch, args)
    lens = mask.sum(1)
    s = np.exp(((logp - old) * mask).sum(1) / lens)
    pg = -np.minimum(s * adv, np.clip(s, 1 - lo, 1 + hi) * adv)
    kl = _np_k3(logp, ref) * (np.exp(logp - old) if correction else 1.0)
    expected = (pg + 0.1 * (kl * mask).sum(1) / lens).sum() / batch["sequences"]
    assert abs(loss.item() - expected) < 1e-5 * max(1, abs(expected))
    assert stats["clipped"].item() == (((s < 1 - lo) | (s > 1 + hi)) * lens).sum()


def test_clipped_tokens_get_no_policy_gradient():
    logp, old, ref, mask, adv, group, batch = _objective_case()
    args = {**grpo.GRPO_DEFAULTS, "beta": 0.0}

    def f(lp):
        return grpo.grpo_objective(lp, mx.array(old, mx.float32), group, batch, args)[0]

    g = np.array(mx.grad(f)(mx.array(logp, mx.float32)))
    r, a = np.exp(logp - old), adv[:, None]
    binding = (((r > 1.2) & (a > 0)) | ((r < 0.8) & (a < 0))) & (mask > 0)
    assert binding.any() and np.all(g[binding] == 0)
    assert np.all(g[~binding & (mask > 0)] != 0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_reward_scaling_and_min_group_std_match_numpy(scale):
    rewards = [np.array([0.1, 0.9, 0.5, 0.5]), np.array([0.50, 0.51, 0.50, 0.52]), np.array([0.3, 0.3, 0.3, 0.3])]
    groups = [grpo.Group(query="q", prompt=[1], completions=[[1]] * 4, finished=[True] * 4, rewards=r) for r in rewards]
    args = {**grpo.GRPO_DEFAULTS, "scale_rewards": scale, "min_group_std": 0.0}
    grpo.compute_advantages(groups, args)
    allr = np.concatenate(rewards)
    for g, r in zip(groups, rewards):
        if r.std() == 0:
            expected = np.zeros(4)
        else:
            expected = {"group": (r - r.mean()) / (r.std() + 1e-4), "batch": (r - r.mean()) / (allr.std() + 1e-4)}.get(
                scale, r - r.mean()
            )
        assert np.allclose(g.advantages, expected, atol=1e-12)
    assert [g.trains for g in groups] == [True, True, False]
    # the near-tie group (std 0.008) is dropped by min_group_std, the real spread is not
    grpo.compute_advantages(groups, {**args, "min_group_std": 0.05})
    assert [g.trains for g in groups] == [True, False, False]
    assert grpo.reward_scaling({"scale_rewards": None, "loss_type": "dr_grpo"}) == "none"
    assert grpo.reward_scaling({"scale_rewards": None, "loss_type": "grpo"}) == "group"


def _one_step(sft_adapter, sharpen=1.0, **kw):
    """One train_grpo step on the tiny model with a reward that varies within groups: (groups, stats,
    LoRA weights before, after). `sharpen` scales the tied embedding: the random tiny model's logits
    are nearly flat, and no learning rate moves a token's probability far from them."""
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    cfg = policy_cfg(sft_adapter, steps=1, **kw)
    mx.random.seed(0)
    model, tok, _, _ = grpo.build_policy(cfg)
    if sharpen != 1.0:
        model.model.embed_tokens.weight = model.model.embed_tokens.weight * sharpen
    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    seen = []

    class Record(grpo.Callback):
        def on_step(self, step, groups, stats):
            seen.append((groups, stats))

    grpo.train_grpo(
        model,
        optim.Adam(learning_rate=cfg["learning_rate"]),
        [f"auth config {i}" for i in range(10)],
        cfg,
        tokenizer=tok,
        reward_fn=lambda q, t, truncated=False: ((len(t) % 5) / 4, True),
        callback=Record(),
    )
    after = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    return seen[0][0], seen[0][1], before, after


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_one_grpo_step_changes_the_lora_weights(sft_adapter, loss_type):
    """The peers' most reported RL bug: a loop that runs, logs and learns nothing."""
    groups, stats, before, after = _one_step(sft_adapter, loss_type=loss_type, updates_per_batch=1)
    assert any(g.trains for g in groups)
    assert stats["grad_norm"] > 0 and math.isfinite(stats["grad_norm"])
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert any(k.endswith("lora_b") for k in changed), changed  # lora_b starts at 0: it must move first


def test_reused_rollouts_clip_and_truncated_completions_are_masked(sft_adapter):
    groups, stats, _, _ = _one_step(sft_adapter, sharpen=10.0, updates_per_batch=1, learning_rate=0.01)
    assert stats["clipped"] == 0  # one update: on-policy, the ratio is exactly 1
    groups, stats, _, _ = _one_step(sft_adapter, sharpen=10.0, updates_per_batch=2, learning_rate=0.01)
    assert stats["binding"] > 0  # the second update reuses the rollouts: ratios leave the range and the clip binds
    # every completion of the tiny model runs to the cap: masked, nothing is trained
    assert all(not f for g in groups for f in g.finished)
    groups, stats, before, after = _one_step(sft_adapter, mask_truncated_completions=True)
    assert stats["tokens"] == 0 and stats["grad_norm"] == 0
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_grpo_holds_out_exactly_the_sft_runs_validation_split(tmp_path):
    """SFT split with the run's seed and deduped; GRPO split with its own split_seed=0 and did not
    dedupe, so after `train.py sft --seed 1` GRPO's "held-out" queries included SFT training queries."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {"query": f"topic {i} setup", "output": [["lex", f"topic {i}"], ["vec", f"how to set up topic {i}"]]}
        for i in range(200)
    ]
    rows += [{**rows[i], "query": rows[i]["query"].upper()} for i in range(0, 200, 10)]  # duplicates: dedupe matters
    (data / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = tmp_path / "sft"
    sft.mkdir()
    sft_cfg = {**train.SFT_DEFAULTS, "data": str(data), "seed": 1, "valid_fraction": 0.2}
    (sft / "adapter_config.json").write_text(json.dumps(runtime.adapter_config(sft_cfg, 2)))
    sft_train, sft_valid = train.load_sft_data(sft_cfg)  # what SFT trained on and validated with

    train_q, heldout = grpo.load_prompts({**grpo.GRPO_DEFAULTS, "sft_adapter": str(sft)}, echo=pytest.fail)
    held = [q for q, _ in heldout]
    assert held and not {q.lower() for q in held} & {e.query.lower() for e in sft_train}
    assert sorted(held) == sorted(e.query for e in sft_valid)
    assert sorted(train_q) == sorted(e.query for e in sft_train)
