"""Supervised fine-tuning (LoRA on mlx-lm) and machine checks.

python train.py doctor               # MLX device, BLAS in use, measured matmul GFLOP/s
python train.py sft --iters 3500     # LoRA SFT (not built yet: see `python train.py sft --help`)
"""

import runtime

runtime.ensure_fast_blas()  # before MLX is imported: re-executes with OpenBLAS on Linux

import json  # noqa: E402
import sys  # noqa: E402

import click  # noqa: E402


@click.group()
def cli():
    """Train query-expansion models for QMD on MLX."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts and tests).")
@click.option("--quick", is_flag=True, help="Smaller matmul (512) and no bfloat16 measurement: about a second.")
def doctor(as_json, quick):
    """Print the MLX device, the BLAS library in use and measured matmul GFLOP/s.

    On Linux CPU the scripts preload OpenBLAS automatically; a report that says "bundled reference BLAS"
    means libopenblas0-pthread is missing (`make setup` installs it).
    """
    report = runtime.doctor_report(quick=quick)
    if as_json:
        click.echo(json.dumps(report))
        return
    for key, value in report.items():
        click.echo(f"{key:24} {value}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def sft():
    """NOT IMPLEMENTED YET: LoRA supervised fine-tuning on mlx-lm is built by issue #5.

    This command currently only prints this notice and exits with status 2.
    """
    click.echo("train.py sft is not implemented yet (issue #5).", err=True)
    sys.exit(2)


if __name__ == "__main__":
    cli()
