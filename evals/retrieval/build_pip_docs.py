"""Build a training corpus for retrieval-rewarded GRPO: pip 24.3.1's user documentation as markdown.

Why pip's docs, and why not the retrieval sets: GRPO with `--reward retrieval` (retrieval_reward.py)
trains on queries made from a corpus, and its evidence must be measured on corpora it never saw:
the notes and the Flask + pytest docs of evals/retrieval stay held out. pip's documentation is real
text nobody here wrote, the kind of pages people search ("where does pip keep its cache", "install
from a private index"), close enough in kind to the docs set for what is learnt to carry over and
different pages altogether. It comes the way build_docs.py's corpus does: the sdist on PyPI, pinned
by version and sha256, downloaded once into the same cache (`--fetch`), built offline after that.

Pages are `docs/html/**/*.md` (MyST markdown, kept as written) and `*.rst` (converted with
build_docs.py's reStructuredText converter); the changelog, index pages and pages that are only a
directive (the `cli/` stubs) are left out. Deterministic: sorted files, no dates.

    python evals/retrieval/build_pip_docs.py --fetch           # once, needs PyPI
    python evals/retrieval/build_pip_docs.py OUTDIR            # offline
"""

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_docs  # noqa: E402

NAME, VERSION = "pip", "24.3.1"
SHA256 = "ebcb60557f2aefabc2e0f918751cd24ea0d56d8ec5445fe1807f1d2109660b99"
DOCS = "docs/html"
SKIP = {"news.rst", "copyright.rst"}
MARKER = ".qmd-pip-docs-corpus"
MIN_CHARS = build_docs.MIN_CHARS


def sdist() -> Path:
    return build_docs.sdist_path(NAME, VERSION)


def fetch() -> None:
    """pip download the pinned sdist into build_docs.py's cache folder and check its hash."""
    path = sdist()
    if path.exists() and build_docs.sha256(path) == SHA256:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*cmd, f"{NAME}=={VERSION}", "-d", str(path.parent)], check=True)
    if build_docs.sha256(path) != SHA256:
        raise click.ClickException(f"{path}: sha256 {build_docs.sha256(path)} is not the pinned {SHA256}")


def pages():
    """(relative path without suffix, markdown) for every kept page, in path order."""
    path = sdist()
    if not path.exists() or build_docs.sha256(path) != SHA256:
        raise click.ClickException(f"{path} is missing or not pip {VERSION}: run with --fetch once (needs PyPI)")
    prefix = f"{NAME}-{VERSION}/{DOCS}/"
    with tarfile.open(path) as tar:
        members = sorted(
            (
                m
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith(prefix) and m.name.endswith((".md", ".rst"))
            ),
            key=lambda m: m.name,
        )
        for member in members:
            rel = member.name[len(prefix) :]
            if rel in SKIP or rel.rsplit("/", 1)[-1].startswith("index."):
                continue
            raw = tar.extractfile(member).read().decode("utf-8")
            if rel.endswith(".rst"):
                raw = re.sub(r"\A(\s*:[\w-]+:.*\n)+", "", raw)
                md = build_docs.tidy(build_docs.convert(build_docs.join_spans(raw).replace("\t", "    ").split("\n")))
            else:
                md = raw.strip() + "\n"
            if len(md) < MIN_CHARS:
                continue
            yield f"{NAME}/{rel.rsplit('.', 1)[0]}", md


def build(outdir: Path) -> list:
    """Write the corpus into outdir (replacing only a folder this script built, or an empty one)."""
    files = ((f"{rel}.md", md) for rel, md in pages())
    return build_docs.write_corpus(outdir, files, MARKER, "evals/retrieval/build_pip_docs.py")


@click.command()
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--fetch", "do_fetch", is_flag=True, help="Download the pinned pip sdist first (needs PyPI).")
def main(outdir, do_fetch):
    """Build pip's documentation as markdown in OUTDIR (a training corpus for --reward retrieval)."""
    build_docs.fetch_and_build(outdir, do_fetch, fetch, build, "the sdist")


if __name__ == "__main__":
    main()
