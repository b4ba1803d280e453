"""decode.py: the batched decoder behind eval.py and GRPO rollouts, checked against mlx-lm's
one-sequence-at-a-time generate_step on the tiny Qwen3 model."""

import mlx.core as mx
import pytest

import decode
import runtime
from prompt import prompt_ids

QUERIES = ["auth config", "how do I rotate the webhook signing secret", "rust borrow checker", "日本語 検索"]


def qmd_penalty(prompt_len, penalty, exempt):
    """node-llama-cpp's presence penalty, written out for the test: the distinct ids among the last
    64 generated tokens, `exempt` aside, lose `penalty` (nothing from the prompt)."""

    def process(tokens, logits):
        ids = sorted(set(tokens[prompt_len:].tolist()[-64:]) - set(exempt))
        return logits - mx.array([[penalty if i in ids else 0.0 for i in range(logits.shape[-1])]])

    return process


def reference(model, prompt, max_tokens, stops=(), presence_penalty=0.0, exempt=()):
    """Greedy tokens from mlx-lm's generate_step, cut after the first stop token."""
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    procs = [qmd_penalty(len(prompt), presence_penalty, exempt)] if presence_penalty else []
    out = []
    for tok, _ in generate_step(
        mx.array(prompt), model, max_tokens=max_tokens, sampler=make_sampler(0.0), logits_processors=procs
    ):
        out.append(int(tok))
        if out[-1] in stops:
            break
    return out


def reference_with(model, prompt, max_tokens, procs):
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    steps = generate_step(
        mx.array(prompt), model, max_tokens=max_tokens, sampler=make_sampler(0.0), logits_processors=procs
    )
    return [int(tok) for tok, _ in steps]


@pytest.fixture(scope="module")
def prompts(tiny_model):
    _, tok = tiny_model
    ps = [prompt_ids(tok, q) for q in QUERIES]
    assert len({len(p) for p in ps}) > 1  # different lengths: the batch cache is left-padded
    return ps


def test_greedy_matches_one_at_a_time_generation(tiny_model, prompts):
    model, _ = tiny_model
    groups = decode.generate(model, prompts, n=2, max_tokens=12)
    for p, group in zip(prompts, groups):
        ref = reference(model, p, 12)
        assert [s.tokens for s in group] == [ref, ref]  # both samples of a greedy group agree
        assert not any(s.finished for s in group) and len(ref) == 12


def test_stop_tokens_end_rows_and_finished_rows_leave_the_batch(tiny_model, prompts):
    model, _ = tiny_model
    full = [reference(model, p, 16) for p in prompts]
    # stop on the 2nd token of three of the four rows: they finish at once and the batch is compacted
    stops = {full[0][1], full[1][1], full[2][1]}
    groups = decode.generate(model, prompts, max_tokens=16, stop_ids=stops)
    finished = 0
    for p, (sample,) in zip(prompts, groups):
        ref = reference(model, p, 16, stops)
        assert sample.tokens == ref
        assert sample.finished == (ref[-1] in stops)
        finished += sample.finished
    assert finished >= 3


def test_presence_penalty_counts_generated_tokens_only_as_node_llama_cpp_does(tiny_model, prompts):
    model, _ = tiny_model
    groups = decode.generate(model, prompts, max_tokens=10, presence_penalty=3.0)
    changed = False
    for p, (sample,) in zip(prompts, groups):
        assert sample.tokens == reference(model, p, 10, presence_penalty=3.0)
        changed |= sample.tokens != reference(model, p, 10)
    assert changed  # the penalty did something
    # the one-sequence processor eval.py uses is the same rule
    for p, (sample,) in zip(prompts, groups):
        procs = [decode.presence_processor(len(p), 3.0, 64)]
        assert sample.tokens == reference_with(model, p, 10, procs)


def test_exempt_tokens_are_never_penalised(tiny_model, prompts):
    model, _ = tiny_model
    plain = [s.tokens for (s,) in decode.generate(model, prompts, max_tokens=10, presence_penalty=3.0)]
    # exempt the token the unpenalised model repeats most (the newline's role in QMD): the penalty
    # keeps it from repeating, the exemption lets it
    free = [reference(model, p, 10) for p in prompts]
    common = max({t for row in free for t in row}, key=lambda t: max(row.count(t) for row in free))
    assert any(row.count(common) > 1 for row in free) and not any(row.count(common) > 1 for row in plain)
    groups = decode.generate(model, prompts, max_tokens=10, presence_penalty=3.0, penalty_exempt=[common])
    for p, (sample,) in zip(prompts, groups):
        assert sample.tokens == reference(model, p, 10, presence_penalty=3.0, exempt=[common])
    assert [s.tokens for (s,) in groups] != plain


def test_top_k_1_and_tiny_top_p_are_greedy(tiny_model, prompts):
    model, _ = tiny_model
    greedy = [g[0].tokens for g in decode.generate(model, prompts, max_tokens=8)]
    mx.random.seed(3)
    top_k = [g[0].tokens for g in decode.generate(model, prompts, max_tokens=8, temp=1.0, top_k=1)]
    top_p = [g[0].tokens for g in decode.generate(model, prompts, max_tokens=8, temp=1.0, top_p=1e-6)]
    assert top_k == greedy and top_p == greedy


def test_sampling_is_seeded_and_varies_across_a_group(tiny_model, prompts):
    model, _ = tiny_model
    mx.random.seed(7)
    a = decode.generate(model, prompts[:2], n=4, max_tokens=8, temp=1.5)
    mx.random.seed(7)
    b = decode.generate(model, prompts[:2], n=4, max_tokens=8, temp=1.5)
    assert [[s.tokens for s in g] for g in a] == [[s.tokens for s in g] for g in b]
    assert len({tuple(s.tokens) for s in a[0]}) > 1


def test_rowwise_equals_the_unsplit_computation():
    x = mx.random.normal((5, 3, 1000))
    t = mx.random.randint(0, 1000, (5, 3))
    f = lambda a, b: (mx.logsumexp(a, axis=-1), mx.take_along_axis(a, b[..., None], axis=-1)[..., 0])  # noqa: E731
    for got, want in zip(runtime.rowwise(f, x, t), f(x, t)):
        assert mx.allclose(got, want, atol=1e-6).item()


def test_bad_arguments_are_clear_errors(tiny_model, prompts):
    model, _ = tiny_model
    with pytest.raises(ValueError, match="empty prompt"):
        decode.generate(model, [[]], max_tokens=4)
    with pytest.raises(ValueError, match="n >= 1"):
        decode.generate(model, prompts, n=0, max_tokens=4)


def test_prompts_of_very_different_lengths_prefill_in_buckets_and_match(tiny_model):
    # a shared prefix (the system prompt), tails from 1 to ~40 tokens: several length buckets, each
    # right-justified into one batch cache; every row must still decode as if it ran alone
    model, tok = tiny_model
    queries = ["a", "auth config", "why does the build fail " * 6, "日本語 検索", "rust", "x " * 18]
    ps = [prompt_ids(tok, q) for q in queries]
    tails = sorted(len(p) - 1 - decode._common_prefix_len([p[:-1] for p in ps]) for p in ps)
    assert len(decode._length_buckets(tails)) >= 2
    groups = decode.generate(model, ps, n=3, max_tokens=6)
    for p, group in zip(ps, groups):
        assert [s.tokens for s in group] == [reference(model, p, 6)] * 3


def test_length_buckets_cover_every_row_once_and_bound_padding():
    lengths = sorted([6, 6, 7, 8, 9, 9, 10, 12, 14, 15, 21, 22, 25, 32] * 3)
    chunks = decode._length_buckets(lengths)
    assert [j for c in chunks for j in c] == list(range(len(lengths)))
    for c in chunks:
        real = sum(lengths[j] for j in c)
        assert len(c) * lengths[c[-1]] <= 1.25 * real + 8 or len(c) == 1


def test_top_k_then_top_p_candidates_match_a_direct_computation():
    # llama.cpp's chain: keep the k most likely, then the smallest set of those whose renormalised
    # probability reaches p; the draw is over what is left, at the given temperature
    import numpy as np

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 300)).astype(np.float32) * 3
    for top_k, top_p in [(20, 0.8), (5, 1.0), (0, 0.5), (40, 0.3)]:
        ids, cand = decode._candidates(mx.array(logits), top_p, top_k)
        cand = np.array(cand)
        ids = np.array(ids) if ids is not None else np.tile(np.arange(300), (6, 1))
        for row in range(6):
            order = np.argsort(-logits[row])[: top_k or 300]
            probs = np.exp(logits[row, order] - logits[row, order].max())
            probs /= probs.sum()
            keep = order[: np.searchsorted(np.cumsum(probs), top_p - 1e-6) + 1] if top_p < 1 else order
            got = set(ids[row][np.isfinite(cand[row])].tolist())
            assert got == set(keep.tolist())


def test_two_stage_top_k_finds_the_k_largest_of_every_row():
    # the block-maxima shortcut must pick exactly the k largest values (ties: any of the equal ones)
    import numpy as np

    rng = np.random.default_rng(1)
    for rows, V, k in [(5, 128 * 96, 20), (3, 128 * 80, 1), (4, 1000, 7)]:  # the last: no whole blocks
        logits = (rng.normal(size=(rows, V)) * 3).astype(np.float32)
        logits[0, :128] = 9.0  # one block of equal maxima, larger than everything else
        logits[1, 5::128] = 8.0  # equal maxima spread over every block
        ids = np.array(decode._top_k_ids(mx.array(logits), k))
        assert ids.shape == (rows, k)
        for row in range(rows):
            got = np.sort(logits[row, ids[row]])
            assert len(set(ids[row].tolist())) == k
            assert np.array_equal(got, np.sort(logits[row])[-k:])
