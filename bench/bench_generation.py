"""eval.py's generation at the settings users run, against llama.cpp on the same model.

    python bench/bench_generation.py [--adapter adapters/demo] [--max-tokens 256] [--quick]

Both sides expand the 64 queries of evals/queries.txt with QMD's sampling (temperature 0.7, top-k 20,
top-p 0.8; prompt.QMD_SAMPLING) and the same cap (eval.py's default, 256 tokens;
expansions average ~80). The model is the demo model (SmolLM2-135M-Instruct) with the SFT adapter of
`make demo` - a tuned model, so completions end where real ones do, not at the cap.
  * ours: eval.generate_batch - decode.py's batched sampler, `--batch-size` prompts together, in MLX
    (float32 weights on the CPU, matmuls in the project's BLAS).
  * baseline: the tool a user would pick instead - the same fused model exported by convert.py to
    GGUF and run by llama.cpp (llama-cpp-python, all cores), one query at a time as QMD asks
    (eval.generate_gguf, no grammar: like-for-like with the MLX side; the row with QMD's grammar is
    printed too). Both q8_0 (convert.py's default) and q4_1 (the demo GGUF's own type) are timed and
    the faster is the baseline. llama-cpp-python offers no batched generation in its API (its
    `Llama` runs one sequence), so there is no batched llama.cpp row.
Each side is warmed up on 2 queries (excluded), then timed over all 64; wall time and generated
tokens per second are reported. Target: ours finishes in at most half of llama.cpp's wall time.
"""

import tempfile
import time
from pathlib import Path

import click
import common


@click.command()
@click.option(
    "--adapter", default="adapters/demo", show_default=True, help="SFT adapter of the demo model (make demo)."
)
@click.option("--max-tokens", default=256, show_default=True, help="Token cap per query (eval.py's default).")
@click.option("--batch-size", default=64, show_default=True, help="Prompts decoded together on the MLX side.")
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Smoke run: 8 queries, 64 tokens, q8_0 only.")
def main(adapter, max_tokens, batch_size, seed, quick):
    import mlx.core as mx

    import convert
    import eval as ev
    from data import read_queries
    from prompt import QMD_SAMPLING  # temp 0.7, top-p 0.8, top-k 20

    if not (Path(adapter) / "adapters.safetensors").exists():
        common.record(
            "generation: eval.py batched vs llama.cpp",
            "-",
            "-",
            None,
            ">=2x",
            status=f"BLOCKED: no adapter in {adapter} (run make demo first)",
            save=not quick,
        )
        return
    queries = [q for q, _ in read_queries()]
    quants = ("q8_0", "q4_1")
    if quick:
        queries, max_tokens, quants = queries[:8], 64, ("q8_0",)

    # -- ours: MLX, batched
    model, tok = common.runtime.load_model(common.DEMO_MODEL, adapter, fuse=True)  # as eval.py loads it
    mx.random.seed(seed)
    ev.generate_batch(model, tok, queries[:2], 8, batch_size, **QMD_SAMPLING)  # warm-up, excluded
    t = time.perf_counter()
    _, ours = ev.generate_batch(model, tok, queries, max_tokens, batch_size, **QMD_SAMPLING)
    ours_wall = time.perf_counter() - t
    print(
        f"MLX batched ({batch_size}): {ours_wall:.1f}s, {ours['generated_tokens']} tokens, {ours['tokens_per_sec']:.0f} tok/s"
    )
    del model

    # -- the alternative: the same model as GGUF in llama.cpp, one query at a time
    out_dir = Path(tempfile.mkdtemp(prefix="qmd-bench-gguf-"))
    plan = convert.make_plan(common.DEMO_MODEL, adapter, False, None, quants, "bench", out_dir, "adapters")
    files = convert.export(plan, verify=False)
    runs = {}
    for quant, path in zip(quants, files):
        llm = ev.load_gguf(path, seed=seed)
        settings = {"max_tokens": max_tokens, "seed": seed, **QMD_SAMPLING}
        ev.generate_gguf(llm, queries[:2], **{**settings, "max_tokens": 8}, grammar=False)  # warm-up
        t = time.perf_counter()
        _, stats = ev.generate_gguf(llm, queries, **settings, grammar=False)
        runs[quant] = (time.perf_counter() - t, stats)
        print(
            f"llama.cpp {quant}: {runs[quant][0]:.1f}s, {stats['generated_tokens']} tokens, {stats['tokens_per_sec']:.0f} tok/s"
        )
        if quant == quants[0] and not quick:
            t = time.perf_counter()
            _, g = ev.generate_gguf(llm, queries, **settings, grammar=True)
            print(
                f"llama.cpp {quant} with QMD's grammar: {time.perf_counter() - t:.1f}s, "
                f"{g['generated_tokens']} tokens, {g['tokens_per_sec']:.0f} tok/s"
            )
        del llm
    best = min(runs, key=lambda q: runs[q][0])
    base_wall, base = runs[best]
    for f in out_dir.iterdir():
        f.unlink()
    out_dir.rmdir()
    common.record(
        f"generation: {len(queries)} queries, QMD sampling, {max_tokens} tok cap, eval.py batched ({batch_size}) "
        f"vs llama.cpp {best} one at a time (demo + SFT)",
        f"{ours_wall:.1f}s ({ours['tokens_per_sec']:.0f} tok/s, {ours['generated_tokens']} tokens)",
        f"{base_wall:.1f}s ({base['tokens_per_sec']:.0f} tok/s, {base['generated_tokens']} tokens)",
        base_wall / ours_wall,
        ">=2x",
        "wall time ratio (llama.cpp / ours); llama.cpp: "
        + ", ".join(f"{q} {w:.1f}s" for q, (w, _) in runs.items())
        + ", all cores, no grammar; warm-ups excluded",
        save=not quick,
    )


if __name__ == "__main__":
    main()
