"""reward.py on long outputs (issue 16 item 10): the near-linear near-duplicate count gives exactly the
pairwise count of issue 21's rule (differ by under min_diff words, or by a word and its plural), on
random line sets drawn from a small vocabulary rich in plurals and near-plurals, and under a hash that
collides on purpose. Timing is in bench/bench_reward.py, not here."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reward

# plurals (time/times), words whose stem is shared in odd ways (bass/bas, class/clas), short words the
# stem leaves alone (as/ass), CJK characters as _dup_set gives them
VOCAB = "time times expiry expiries jwt token tokens as ass bas bass class clas gas gass cat cats 认 证 a s".split()
token_set = st.sets(st.sampled_from(VOCAB), max_size=6)
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(sets=st.lists(token_set, max_size=40), min_diff=st.sampled_from([2, 3]))
def test_fast_count_equals_pairwise(sets, min_diff):
    assert reward._near_duplicates_fast(sets, min_diff) == reward._near_duplicates(sets, min_diff)


@SETTINGS
@given(sets=st.lists(token_set, max_size=25), min_diff=st.sampled_from([2, 3]))
def test_fast_count_survives_hash_collisions(monkeypatch, sets, min_diff):
    # every word of a length hashes alike: each lookup hits many wrong sets, which must be rejected
    monkeypatch.setattr(reward, "hash", len, raising=False)
    assert reward._near_duplicates_fast(sets, min_diff) == reward._near_duplicates(sets, min_diff)


def test_a_collision_cannot_pass_off_two_other_words_as_a_plural_pair(monkeypatch):
    # with hash=len, removing (token, tokens) sums like removing (time, times) would not, and the subset
    # found differs from the line by "times tokens": no word and its plural, so no near-duplicate
    monkeypatch.setattr(reward, "hash", len, raising=False)
    sets = [{"expiry", "jwt", "time", "token"}, {"expiry", "jwt", "time", "times", "token", "tokens"}]
    assert reward._near_duplicates_fast(sets, 2) == reward._near_duplicates(sets, 2) == 0


@pytest.mark.parametrize("min_diff", [2, 3])
def test_fast_count_on_large_families(min_diff):
    # a thousand swaps of one word, plurals among them, supersets by one and two words, exact copies
    sets = [{"jwt", "token", f"w{i}"} for i in range(300)] + [{"jwt", "token", f"w{i}s"} for i in range(100)]
    sets += [{"jwt", "token"}] * 3 + [{"jwt"}, {"jwt", "token", "w1", "w2"}, {"jwt", "times", "time"}]
    assert reward._near_duplicates_fast(sets, min_diff) == reward._near_duplicates(sets, min_diff)


def test_score_uses_the_fast_count_past_a_few_lines(monkeypatch):
    lines = [f"lex: jwt token expiry {w}" for w in ("time", "times", "check", "checks", "limit")] * 4
    text = "\n".join(lines + ["vec: how long does a jwt token stay valid"])
    slow = reward.score("jwt token expiry", text).to_dict()
    monkeypatch.setattr(reward, "PAIRWISE_MAX", 2)
    assert reward.score("jwt token expiry", text).to_dict() == slow


QUERIES = ["auth config file", "python 3.10 match statement", "sqlite wal mode", "jwt token expiry", "认证 配置"]
WORDS = (
    "auth config file settings python 3.10 3.11 match statement case sqlite wal mode journal banana bicycle "
    "pep-9921 rfc-7731 v2 2024 jwt token tokens expiry expiries time times refresh oauth authentication "
    "configuration yaml env -car how do i set the up 认证 配置 文件 guide tips aaaa aaaaa abab"
).split()
line = st.tuples(st.sampled_from(["lex", "vec", "hyde"]), st.lists(st.sampled_from(WORDS), min_size=1, max_size=7))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.sampled_from(QUERIES), lines=st.lists(line, min_size=1, max_size=40))
def test_long_output_path_scores_exactly_as_the_plain_one(monkeypatch, query, lines):
    # _LongOutput's substring index and the fast near-duplicate count against str.count and every pair
    text = "\n".join(f"{k}: {' '.join(ws)}" for k, ws in lines)
    monkeypatch.setattr(reward, "LONG_OUTPUT", 10**9)
    monkeypatch.setattr(reward, "PAIRWISE_MAX", 10**9)
    plain = reward.score(query, text).to_dict()
    monkeypatch.setattr(reward, "LONG_OUTPUT", 1)
    monkeypatch.setattr(reward, "PAIRWISE_MAX", 2)
    assert reward.score(query, text).to_dict() == plain


def test_long_output_index_answers_as_str_count():
    lows = ["aaaaa abab ababab", "python 3.10 and 3.1", "x", "", "认证配置", "3.10"]
    long, full = reward._LongOutput(lows), "\n".join(lows)
    for t in ["a", "aa", "aaaa", "aaaaa", "abab", "ab", "3.1", "3.10", "x", "认证", "配置文件", "zz", "python 3"]:
        assert long.once(t) == (full.count(t) == 1), t
        for i, low in enumerate(lows):
            assert long.elsewhere(t, i) == (full.count(t) > low.count(t)), (t, i)


def test_long_output_specific_mask_equals_the_or_over_the_other_keys():
    import random

    import data
    from prompt import render_target

    lex = reward._lexicon()
    examples = data.load_examples()[:60]
    lows = [ln.lower() for e in examples for ln in render_target(e.output).splitlines()]
    keys = sorted(reward._keys("\n".join(lows)))
    specific = [k for k in keys if 0 < lex.get(k, 0).bit_count() <= reward.SPECIFIC_DF]
    assert len(specific) > 20  # the data gives the check something to do
    long, rng = reward._LongOutput(lows), random.Random(0)
    for n in (0, 1, 2, 5, 20, len(specific)):
        own = set(rng.sample(specific, n)) | {"zzzzz"}
        want = 0
        for k in set(keys) - own:
            if (m := lex.get(k, 0)) and m.bit_count() <= reward.SPECIFIC_DF:
                want |= m
        assert long.specific(own) == want, n
