"""GRPO refinement on top of the SFT adapter - NOT IMPLEMENTED YET (issue #6).

python grpo.py --steps 200
python grpo.py --eval-only --adapter adapters/grpo
"""

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def cli():
    """NOT IMPLEMENTED YET: the GRPO loop (group-relative advantages, KL to the SFT reference,
    reward.py as the reward) is built by issue #6. This command only prints this notice and exits 2."""
    click.echo("grpo.py is not implemented yet (issue #6).", err=True)
    sys.exit(2)


if __name__ == "__main__":
    cli()
