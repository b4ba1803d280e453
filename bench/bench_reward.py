"""reward.py throughput: scores per second over the whole training data set.

    python bench/bench_reward.py [--repeats 5] [--quick]

Every example of data/*.jsonl is scored as a model output would be (its target rendered as
`type: text` lines by prompt.render_target), one reward.score(query, text) call each. Two figures:
  * cold: reward.py's per-query caches (query analysis, the query's lexicon mask) are cleared before
    every pass, so each query is analysed once per pass - the conservative number, reported as "ours";
  * warm: the cache kept, as in GRPO where each query is scored G times per step.
One warm-up pass first (excluded; it also builds reward.py's lexicon from data/, once per process, about
0.4 s), then the median of --repeats passes. There is no third-party baseline: the target is an absolute
20,000 scores/s, and the ratio column is cold throughput / 20,000.

A second row checks that one long output costs time linear in its lines (users point reward.py at
any file): the data's lex/vec/hyde lines concatenated into one output of 1,000 and of 10,000 lines;
ratio = 10 x time(1,000) / time(10,000), about 1 when linear and 0.1 when quadratic.

A third row times the near-duplicate count on its own (issue 16 item 10), on the word sets of the
10,000 lines (lex lines with min_diff 2, vec lines with 3, as reward.py counts them): the near-linear
_near_duplicates_fast against the pairwise reference it must equal (the counts are checked equal);
ratio = pairwise time / fast time. --quick times the pairwise count on 2,000 lines instead.
"""

import statistics
import time

import click
import common


@click.command()
@click.option("--repeats", default=5, show_default=True, help="Timed passes over the data (median).")
@click.option("--quick", is_flag=True, help="Smoke run: 300 examples, 2 passes.")
def main(repeats, quick):
    import data
    import reward
    from prompt import render_target

    examples = data.load_examples()
    if quick:
        examples, repeats = examples[:300], 2
    items = [(e.query, render_target(e.output)) for e in examples]

    def one_pass(cold: bool) -> float:
        if cold:
            reward.clear_query_caches()
        t = time.perf_counter()
        for q, text in items:
            reward.score(q, text)
        return len(items) / (time.perf_counter() - t)

    one_pass(cold=True)  # warm-up (imports, regex compilation), excluded
    cold = statistics.median(one_pass(cold=True) for _ in range(repeats))
    warm = statistics.median(one_pass(cold=False) for _ in range(repeats))
    target = 20_000
    common.record(
        f"reward: reward.score over {len(items)} data examples",
        f"{cold:,.0f} scores/s (warm query cache {warm:,.0f}/s)",
        f"target {target:,}/s",
        cold / target,
        ">=1x",
        f"cold query cache per pass; median of {repeats} passes after a warm-up pass; single process",
        save=not quick,
    )

    lines = [ln for _, text in items for ln in text.splitlines()]
    times = {}
    for n in (1_000, 10_000):
        text = "\n".join((lines * (n // len(lines) + 1))[:n])
        times[n] = common.median_time(lambda text=text: reward.score("auth config file", text), repeats=3)
    common.record(
        "reward: one output of 10,000 lines vs 1,000 lines",
        f"{times[10_000]:.3f}s for 10,000 lines",
        f"{times[1_000]:.3f}s for 1,000 lines",
        10 * times[1_000] / times[10_000],
        ">=0.5x",
        "ratio = 10 x time(1k) / time(10k): 1 = linear, 0.1 = quadratic; median of 3 after a warm-up",
        save=not quick,
    )

    n = 2_000 if quick else 10_000
    sets = {"lex": [], "vec": []}
    for ln in (lines * (n // len(lines) + 1))[:n]:
        kind, _, body = ln.partition(":")
        if kind in sets:
            sets[kind].append(set(body.strip().lower().split()))
    diffs = {"lex": 2, "vec": 3}

    def count(fn):
        return sum(fn(sets[k], diffs[k]) for k in sets)

    pairs = count(reward._near_duplicates_fast)
    assert pairs == count(reward._near_duplicates), "fast and pairwise near-duplicate counts differ"
    fast = common.median_time(lambda: count(reward._near_duplicates_fast), repeats=3)
    pairwise = common.median_time(lambda: count(reward._near_duplicates), repeats=1, warmup=0)
    common.record(
        f"reward: near-duplicate pairs among {n:,} lines",
        f"{fast:.3f}s near-linear",
        f"{pairwise:.2f}s pairwise",
        pairwise / fast,
        ">=10x",
        f"{len(sets['lex'])} lex + {len(sets['vec'])} vec lines, {pairs} near-duplicate pairs, the same in both;"
        " fast: median of 3 after a warm-up, pairwise: one run",
        save=not quick,
    )


if __name__ == "__main__":
    main()
