"""Generate expansions for test queries and score them with reward.py - NOT IMPLEMENTED YET (issue #4).

python eval.py --model Qwen/Qwen3-1.7B --adapter adapters/sft
"""

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def cli():
    """NOT IMPLEMENTED YET: batched generation and scoring of evals/queries.txt is built by issue #4.
    Until then, score existing outputs with `python reward.py score FILE.jsonl`.
    This command only prints this notice and exits 2."""
    click.echo("eval.py is not implemented yet (issue #4); use `python reward.py score FILE.jsonl`.", err=True)
    sys.exit(2)


if __name__ == "__main__":
    cli()
