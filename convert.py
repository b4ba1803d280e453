"""Fuse adapters and export GGUF + an Ollama Modelfile - NOT IMPLEMENTED YET (issue #7).

python convert.py && ollama create qmd-expand -f adapters/gguf/Modelfile
"""

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def cli():
    """NOT IMPLEMENTED YET: fusing base + SFT (+ GRPO) adapters and writing a qwen3/llama GGUF with
    the training chat template and an Ollama Modelfile is built by issue #7.
    This command only prints this notice and exits 2."""
    click.echo("convert.py is not implemented yet (issue #7).", err=True)
    sys.exit(2)


if __name__ == "__main__":
    cli()
