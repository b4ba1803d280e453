"""reward.py's near-duplicate count for many lines: the hashed count equals the pairwise one."""

from hypothesis import given, settings
from hypothesis import strategies as st

import reward

WORDS = ["auth", "config", "file", "where", "is", "the", "stored", "token", "登录", "配置"]
lines = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join), min_size=17, max_size=60)


def pairwise(lows, min_diff):
    sets = [set(reward._tokens(x)) for x in lows]
    return sum(1 for i in range(len(sets)) for j in range(i + 1, len(sets)) if len(sets[i] ^ sets[j]) < min_diff)


@settings(max_examples=150, deadline=None)
@given(lows=lines, min_diff=st.sampled_from([1, 2, 3]))
def test_hashed_near_duplicate_count_equals_the_pairwise_count(lows, min_diff):
    sets = [frozenset(reward._tokens(x)) for x in lows]
    assert reward._near_duplicates_hashed(sets, min_diff) == pairwise(lows, min_diff)
    assert reward._near_duplicates(lows, min_diff) == pairwise(lows, min_diff)


def test_many_identical_and_one_token_apart_lines_are_counted_exactly():
    lows = ["auth config"] * 30 + ["auth config file"] * 5 + ["auth file"] * 3
    for d in (1, 2, 3):
        assert reward._near_duplicates_hashed([frozenset(x.split()) for x in lows], d) == pairwise(lows, d)
