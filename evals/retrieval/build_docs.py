"""Build the documentation corpus of the retrieval eval: Flask's and pytest's docs as markdown.

Why these: real documentation that nobody on this project wrote, searched the way people search their
own notes ("how do I upload a file", "fixture not found", "secret key"), two domains that overlap a
little (testing a Flask app vs pytest itself), and sources that never change: the reStructuredText
pages inside two source distributions on PyPI, pinned by version and sha256 (SDISTS below). The
corpus is built at run time, never committed: `make setup-dev` downloads the two archives once
(`build_docs.py --fetch`), and `build_docs.py OUTDIR` needs no network after that.

The conversion is deterministic (sorted files, no dates): one markdown file per page, at the page's
path (`flask/patterns/fileuploads.md`, `pytest/how-to/fixtures.md`); a page longer than SPLIT_CHARS
of markdown is cut at its second-level headings into `PAGE/NN-slug.md`, each starting with
`# Page title: section title`, so relevance can be judged per section. Sphinx markup becomes plain
markdown: headings, code fences for literal blocks and code-block directives, admonitions as quoted
paragraphs, roles as their text (`:func:`~flask.url_for`` -> `url_for`), autodoc directives as the
object's name (their text lives in docstrings, not in the docs). Changelogs, the pytest plugin list,
release announcements and table-of-contents pages are left out: they are lists, not documents.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import click

# name, version, sha256 of the sdist on PyPI, the docs folder inside it, pages left out
SDISTS = [
    (
        "flask",
        "3.1.0",
        "5f873c5184c897c8d9d1b05df1e3d01b14910ce69607a117bd3277098a5836ac",
        "docs",
        {"changes.rst", "license.rst", "contributing.rst"},
    ),
    (
        "pytest",
        "8.3.4",
        "965370d062bce11e73868e0335abac31b4d3de0e82f4007408d242b4f8610761",
        "doc/en",
        {
            "changelog.rst",
            "reference/plugin_list.rst",
            "contents.rst",
            "license.rst",
            "contributing.rst",
            "sponsor.rst",
            "tidelift.rst",
            "contact.rst",
            "talks.rst",
            "naming20.rst",
        },
    ),
]
SKIP_DIRS = {"announce", "_templates", "img", "_static"}
SPLIT_CHARS = 24000
MIN_CHARS = 300  # pages shorter than this after conversion are tables of contents
MERGE_CHARS = 600
SETUP_HINT = "run `make setup-dev` (it downloads the pinned Flask and pytest sdists once)"


def sdist_dir() -> Path:
    """Where the pinned sdists live: outside the repo, like the other caches of this project."""
    env = os.environ.get("QMD_RETRIEVAL_SDISTS")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "qmd-query-expansion" / "sdists"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sdist_path(name: str, version: str) -> Path:
    return sdist_dir() / f"{name}-{version}.tar.gz"


def fetch() -> None:
    """Download the pinned sdists with pip (the only network step) and check their hashes."""
    dest = sdist_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name, version, digest, _, _ in SDISTS:
        path = sdist_path(name, version)
        if path.exists() and sha256(path) == digest:
            continue
        path.unlink(missing_ok=True)  # pip would keep a damaged file of the same name
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, f"{name}=={version}", "-d", str(dest)], check=True)
        if sha256(path) != digest:
            raise click.ClickException(f"{path}: sha256 {sha256(path)} is not the pinned {digest}")


def check_sdists() -> None:
    """Fail with the set-up hint, never silently, when an archive is missing or differs."""
    for name, version, digest, _, _ in SDISTS:
        path = sdist_path(name, version)
        if not path.exists():
            raise click.ClickException(f"{path} is missing: {SETUP_HINT}")
        if sha256(path) != digest:
            raise click.ClickException(f"{path} is not the pinned {name} {version}: {SETUP_HINT}")


# ---------------------------------------------------------------- reStructuredText -> markdown

ADORN = re.compile(r"^([=\-~^\"'`#*+_.:])\1{2,}\s*$")
DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
CODE_DIRECTIVES = {"code-block", "sourcecode", "code", "code-tab"}
ADMONITIONS = {
    "note": "Note",
    "warning": "Warning",
    "tip": "Tip",
    "hint": "Hint",
    "important": "Important",
    "attention": "Attention",
    "caution": "Caution",
    "danger": "Danger",
    "seealso": "See also",
    "versionadded": "New in version",
    "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version",
    "versionremoved": "Removed in version",
    "sidebar": "",
    "admonition": "",
}
# directives whose argument names an object: kept as a line with its name so BM25 can find it
OBJECTS = {
    "autofunction",
    "autoclass",
    "autoexception",
    "autodata",
    "automodule",
    "automethod",
    "autoattribute",
    "function",
    "py:function",
    "class",
    "py:class",
    "method",
    "attribute",
    "data",
    "py:data",
    "confval",
    "envvar",
    "option",
    "hook",
    "fixture",
    "globalvar",
    "module",
}
DROP = {
    "toctree",
    "currentmodule",
    "image",
    "figure",
    "include",
    "literalinclude",
    "only",
    "raw",
    "highlight",
    "index",
    "rst-class",
    "contents",
    "meta",
    "testsetup",
    "testcleanup",
}
CODE_ROLES = {
    "func",
    "meth",
    "class",
    "attr",
    "data",
    "exc",
    "mod",
    "obj",
    "confval",
    "envvar",
    "option",
    "fixture",
    "hook",
    "globalvar",
    "file",
    "code",
    "command",
    "program",
}


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def block_end(lines: list[str], start: int, base: int) -> int:
    """Index after the indented block that starts at `start` (lines indented more than `base`)."""
    i = start
    while i < len(lines) and (not lines[i].strip() or indent_of(lines[i]) > base):
        i += 1
    while i > start and not lines[i - 1].strip():
        i -= 1
    return i


def dedent(lines: list[str]) -> list[str]:
    widths = [indent_of(x) for x in lines if x.strip()]
    cut = min(widths) if widths else 0
    return [x[cut:] if x.strip() else "" for x in lines]


def role_text(match: re.Match) -> str:
    role, text = match.group(1), match.group(2)
    role = role.split(":")[-1]
    label = re.match(r"^(.*?)\s*<([^<>]+)>$", text, re.S)
    if label and label.group(1):
        text = label.group(1)
    elif label:
        text = label.group(2)
    text = text.lstrip("!")
    if text.startswith("~"):
        text = text[1:].split(".")[-1]
    if role in {"pep"}:
        return f"PEP {text}"
    if role in {"issue", "pr", "gh"}:
        return f"#{text}"
    if role in CODE_ROLES:
        return f"`{text}`"
    return text


def inline(text: str) -> str:
    """Inline markup: roles, links and literals, as markdown."""
    text = re.sub(r":([\w:+-]+):`([^`]+)`", role_text, text)
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    text = re.sub(r"`([^`<]+?)\s*<([^`>]+)>`__?", lambda m: f"[{m.group(1)}]({m.group(2)})", text)
    text = re.sub(r"`([^`]+)`__?(?=\W|$)", r"\1", text)
    text = re.sub(r"\|([\w -]+)\|", r"\1", text)
    return text


def join_spans(raw: str) -> str:
    """Put roles and links that wrap over two lines (`:ref:`long\n   text <x>``) on one line."""
    span = re.compile(r":[\w:+-]+:`[^`]+`|`[^`]+<[^`>]+>`_{1,2}")
    return span.sub(lambda m: re.sub(r"\s*\n\s*", " ", m.group(0)), raw)


def fence(body: list[str], lang: str = "") -> list[str]:
    body = dedent(body)
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    return ["```" + lang, *body, "```", ""]


def convert(lines: list[str], levels: list[str] | None = None) -> list[str]:
    """Convert RST lines to markdown lines; `levels` keeps the order of heading adornments."""
    levels = [] if levels is None else levels
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        nxt = lines[i + 1].rstrip() if i + 1 < len(lines) else ""
        # heading with overline
        if ADORN.match(line) and i + 2 < len(lines) and ADORN.match(lines[i + 2].rstrip()) and nxt.strip():
            key = "o" + line[0]
            if key not in levels:
                levels.append(key)
            out += ["#" * min(levels.index(key) + 1, 6) + " " + inline(nxt.strip()), ""]
            i += 3
            continue
        # heading with underline
        if line.strip() and not line.startswith(" ") and ADORN.match(nxt) and len(nxt) >= len(line.strip()) - 1:
            key = "u" + nxt[0]
            if key not in levels:
                levels.append(key)
            out += ["#" * min(levels.index(key) + 1, 6) + " " + inline(line.strip()), ""]
            i += 2
            continue
        m = DIRECTIVE.match(line)
        if m:
            base, name, arg = len(m.group(1)), m.group(2), m.group(3).strip()
            end = block_end(lines, i + 1, base)
            body = lines[i + 1 : end]
            opts = []
            while body and body[0].strip().startswith(":") and re.match(r"^\s*:[\w-]+:", body[0]):
                opts.append(body.pop(0))
            if name in CODE_DIRECTIVES:
                out += fence(body, arg.split()[0] if arg else "")
            elif name in ADMONITIONS:
                label = ADMONITIONS[name]
                head = f"**{' '.join(x for x in (label, inline(arg)) if x)}**" if arg or label else ""
                inner = convert(dedent(body), levels[:])
                quoted = [head] if head else []
                out += ["> " + x if x else ">" for x in quoted + inner] + [""]
            elif name in OBJECTS:
                out += [f"`{arg}`", ""] + convert(dedent(body), levels[:])
            elif name in {"tabs"}:
                out += convert(dedent(body), levels[:])
            elif name in {"group-tab", "tab"}:
                out += [f"**{arg}**", ""] + convert(dedent(body), levels[:])
            elif name in DROP:
                pass
            else:
                out += convert(dedent(body), levels[:])
            i = end
            continue
        # comments and link targets: `.. _label:`, `.. anything` with its indented block
        if re.match(r"^\s*\.\.(\s|$)", line):
            i = block_end(lines, i + 1, indent_of(line))
            continue
        # literal block after a paragraph ending in `::`
        if line.rstrip().endswith("::"):
            text = line.rstrip()[:-2].rstrip()
            if text.strip():
                out.append(inline(text) + (":" if not text.endswith(":") else ""))
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and indent_of(lines[j]) > indent_of(line):
                end = block_end(lines, j, indent_of(line))
                out += ["", *fence(lines[j:end])]
                i = end
                continue
            i += 1
            continue
        # doctest blocks
        if line.lstrip().startswith(">>> "):
            end = i
            while end < len(lines) and lines[end].strip():
                end += 1
            out += fence(lines[i:end], "pycon")
            i = end
            continue
        text = re.sub(r"^(\s*)#\.\s", r"\g<1>1. ", line)
        out.append(inline(text.lstrip()) if not text.lstrip().startswith(("* ", "- ", "1. ")) else inline(text))
        i += 1
    return out


def tidy(lines: list[str]) -> str:
    """Collapse runs of blank lines; one trailing newline."""
    text = "\n".join(x.rstrip() for x in lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text + "\n"


def slug(text: str) -> str:
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    s = ""
    for w in words:
        if len(s) + len(w) + 1 > 40:
            break
        s = f"{s}-{w}" if s else w
    return s or (words[0][:40] if words else "section")


def split_page(md: str) -> list[tuple[str, str]]:
    """Cut a long page at its `## ` headings: (file stem, markdown) per part.

    A section shorter than MERGE_CHARS stays with the part before it (a one-paragraph section is no
    document of its own), and a short intro goes with the first section.
    """
    lines = md.split("\n")
    title = next((x[2:].strip() for x in lines if x.startswith("# ")), "")
    start = next((n + 1 for n, x in enumerate(lines) if x.startswith("# ")), 0)
    parts: list[list[str]] = [[]]
    fenced = False
    for line in lines[start:]:
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("## ") and not fenced:
            parts.append([])
        parts[-1].append(line)
    merged: list[list[str]] = []
    for n, part in enumerate(parts):
        if n == 1 and len("\n".join(merged[0]).strip()) < MIN_CHARS:
            intro = merged.pop()
            merged.append([part[0], *intro, "", *part[1:]])
        elif n > 1 and len("\n".join(part).strip()) < MERGE_CHARS:
            merged[-1] += ["", *part]
        else:
            merged.append(part)
    out = []
    for part in merged:
        if part and part[0].startswith("## "):
            sect = part[0][3:].strip()
            num = sum(stem != "00-intro" for stem, _ in out) + 1
            out.append((f"{num:02d}-{slug(sect)}", tidy([f"# {title}: {sect}", "", *part[1:]])))
        else:
            out.append(("00-intro", tidy([f"# {title}", "", *part])))
    return out


def pages(name: str, version: str, docs: str, skip: set[str]):
    """Yield (relative path without suffix, markdown) for each kept page of one sdist."""
    prefix = f"{name}-{version}/{docs}/"
    with tarfile.open(sdist_path(name, version)) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix) and m.name.endswith(".rst")),
            key=lambda m: m.name,
        )
        for member in members:
            rel = member.name[len(prefix) :]
            if rel in skip or set(rel.split("/")[:-1]) & SKIP_DIRS or rel.endswith("index.rst"):
                continue
            raw = tar.extractfile(member).read().decode("utf-8")
            raw = re.sub(r"\A(\s*:[\w-]+:.*\n)+", "", raw)  # file-wide fields (:orphan:, :tocdepth:)
            raw = join_spans(raw)
            md = tidy(convert(raw.replace("\t", "    ").split("\n")))
            if len(md) < MIN_CHARS:
                continue
            yield f"{name}/{rel[:-4]}", md


MARKER = ".qmd-docs-corpus"  # written into every corpus this script builds


def build(outdir: Path) -> list[str]:
    """Write the corpus into outdir; returns the sorted relative paths written.

    Written by write_corpus: atomically, and never over a folder this script did not build.
    """
    check_sdists()

    def files():
        for name, version, _, docs, skip in SDISTS:
            for rel, md in pages(name, version, docs, skip):
                parts = split_page(md) if len(md) > SPLIT_CHARS else []
                if len(parts) > 1:
                    yield from ((f"{rel}/{stem}.md", text) for stem, text in parts)
                else:
                    yield f"{rel}.md", md

    return write_corpus(outdir, files(), MARKER, "evals/retrieval/build_docs.py")


def write_corpus(outdir: Path, files, marker: str, builder: str) -> list:
    """Write (relative path, text) files as the corpus in outdir; sorted paths written.

    Built in a sibling temp folder and swapped in whole, so an interrupted build leaves the old corpus
    or none. An existing outdir is replaced only if `builder` made it (its `marker` file is there) or
    it is empty: never a folder of someone's own notes. Shared with build_pip_docs.py."""
    if outdir.exists() and any(outdir.iterdir()) and not (outdir / marker).exists():
        raise click.ClickException(
            f"{outdir} exists and was not built by this script (no {marker} in it): give an empty or new folder"
        )
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    try:
        written = []
        for path, text in files:
            dest = tmp / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text, encoding="utf-8")
            written.append(path)
        (tmp / marker).write_text(f"built by {builder}\n", encoding="utf-8")
        if outdir.exists():
            old = outdir.with_name(f".{outdir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            outdir.rename(old)
            tmp.rename(outdir)
            shutil.rmtree(old)
        else:
            tmp.rename(outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(written)


@click.command()
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--fetch", "do_fetch", is_flag=True, help="Download the pinned sdists first (make setup-dev).")
def main(outdir: Path | None, do_fetch: bool) -> None:
    """Build the Flask + pytest documentation corpus as markdown in OUTDIR."""
    fetch_and_build(outdir, do_fetch, fetch, build, "the sdists")


def fetch_and_build(outdir, do_fetch: bool, fetch, build, what: str) -> None:
    """The corpus builders' CLI body (also build_pip_docs.py): fetch if asked, build OUTDIR if given."""
    if do_fetch:
        fetch()
    if outdir is None:
        if not do_fetch:
            raise click.UsageError(f"give OUTDIR, or --fetch to only download {what}")
        return
    paths = build(outdir)
    size = sum((outdir / p).stat().st_size for p in paths)
    click.echo(f"{len(paths)} markdown files, {size / 1e6:.2f} MB in {outdir}")


if __name__ == "__main__":
    main()
