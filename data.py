"""Training data: the JSONL schema, its loader, and the data tools.

    python data.py validate [FILES...]     # schema + score + hard failures; prints file:line: reason
    python data.py stats [FILES...]        # counts per category/language, scores, duplicates, sameness
    python data.py split [FILES...]        # writes data/splits/{train,valid}.jsonl for train.py

FILES default to data/*.jsonl. One record per line:

    {"query": "auth config", "output": [["lex", "..."], ["vec", "..."], ["hyde", "..."]], ...}

Extra fields are kept (`category` and `lang` are used by the reports). The loader reports every
malformed line as `file:line: reason` and refuses to return data from a broken file: nothing is
silently skipped. Queries are deduplicated by their normalised form (case and whitespace folded).
The train/valid split is a hash of the normalised query, so it is deterministic, independent of
file order, and a query keeps its side of the split when more data is added.
"""

from __future__ import annotations

import hashlib
import json
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from prompt import HYDE_CHARS, LINE_TYPES, OUTPUT_CONTRACT, messages

DATA_DIR = Path(__file__).parent / "data"
SPLIT_DIR = DATA_DIR / "splits"

# Length limits (characters) that validate and the query-file reader flag. A search query that long is
# a pasted document: QMD runs the expansion prompt in a 2048-token context and train.py skips examples
# over max_seq_length (512 tokens by default), yet reward.py would still score it Excellent.
MAX_QUERY_CHARS = 500
# QMD generates at most 600 tokens for all lines together, so a line this long crowds out the others
# (a hyde passage is meant to be 50-200 characters, lex and vec lines are search queries).
MAX_LINE_CHARS = 500
BOM = "\ufeff"  # editors on Windows start UTF-8 files with it; json.loads refuses it


class DataError(ValueError):
    """One or more malformed records; `problems` holds every `file:line: reason`."""

    def __init__(self, problems, what: str = "in the training data - fix them before training"):
        self.problems = list(problems)
        shown = "\n".join(self.problems[:50])
        more = f"\n... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{len(self.problems)} problem(s) {what}:\n{shown}{more}")


@dataclass
class Example:
    query: str
    output: list  # [(type, text)]
    source: str = ""  # "file:line"
    extra: dict = field(default_factory=dict)

    @property
    def category(self) -> str:
        return str(self.extra.get("category", "uncategorised"))

    @property
    def lang(self) -> str:
        return str(self.extra.get("lang", "en"))

    def to_record(self) -> dict:
        return {"query": self.query, "output": [list(p) for p in self.output], **self.extra}

    def to_messages(self) -> list:
        return messages(self.query, self.output)


def normalize_query(query: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


# ----------------------------------------------------------------------------
# Loading


def check_record(rec) -> str | None:
    """Why a decoded JSON value is not a valid record, or None if it is."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    query = rec.get("query")
    if not isinstance(query, str) or not query.strip():
        return 'missing or empty "query" (a non-empty string)'
    if "\n" in query:
        return '"query" contains a newline'
    out = rec.get("output")
    if not isinstance(out, list) or not out:
        return '"output" must be a non-empty list of [type, text] pairs'
    for i, pair in enumerate(out):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            return f'"output"[{i}] must be a [type, text] pair, got {json.dumps(pair, ensure_ascii=False)[:60]}'
        kind, text = pair
        if kind not in LINE_TYPES:
            return f'"output"[{i}] has type {kind!r}; use one of {", ".join(LINE_TYPES)}'
        if not isinstance(text, str) or not text.strip():
            return f'"output"[{i}] ({kind}) has empty text'
        if "\n" in text or "\r" in text:
            return f'"output"[{i}] ({kind}) contains a newline; each expansion must be one line'
    return None


def jsonl_records(path) -> tuple[list, list]:
    """([(where, record)], [problem]) for every non-blank line of a JSONL file, `where` = "file:line".

    The one JSONL reader (training data, score files): lines end at "\n" only - str.splitlines() also
    splits at U+0085/U+2028/U+2029, which JSON writes unescaped inside strings (ensure_ascii=False),
    and would cut such a record in two - and a BOM is dropped wherever a line starts with one (cat
    a.jsonl b.jsonl keeps b's). A missing or non-UTF-8 file is a problem, not an exception."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return [], [f"{path}: file not found"]
    except UnicodeDecodeError as exc:
        return [], [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    records, problems = [], []
    for lineno, raw in enumerate(text.split("\n"), 1):
        raw = raw.rstrip("\r").lstrip(BOM)
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            records.append((where, json.loads(raw)))
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
    return records, problems


def read_jsonl(path) -> tuple[list, list]:
    """All valid examples of one file and a `file:line: reason` string per bad line."""
    records, problems = jsonl_records(path)
    examples = []
    for where, rec in records:
        reason = check_record(rec)
        if reason:
            problems.append(f"{where}: {reason}")
            continue
        extra = {k: v for k, v in rec.items() if k not in ("query", "output")}
        pairs = [(k, t.strip()) for k, t in rec["output"]]
        examples.append(Example(rec["query"].strip(), pairs, where, extra))
    if not examples and not problems:
        problems.append(f"{path}: no records")
    return examples, problems


def default_files() -> list:
    return sorted(DATA_DIR.glob("*.jsonl"))


def load_examples(paths=None) -> list:
    """Load and validate every file; raise DataError listing all problems if any line is bad."""
    paths = [Path(p) for p in (paths or default_files())]
    if not paths:
        raise DataError([f"{DATA_DIR}: no *.jsonl files"])
    examples, problems = [], []
    for p in paths:
        ex, pr = read_jsonl(p)
        examples += ex
        problems += pr
    if problems:
        raise DataError(problems)
    return examples


def dedupe(examples) -> tuple[list, list]:
    """Keep the first example of each normalised query; return (unique, [(dropped, kept)])."""
    seen, unique, dups = {}, [], []
    for ex in examples:
        key = normalize_query(ex.query)
        if key in seen:
            dups.append((ex, seen[key]))
        else:
            seen[key] = ex
            unique.append(ex)
    return unique, dups


def split(examples, valid_fraction: float = 0.05, seed: int = 0) -> tuple[list, list]:
    """Deterministic train/valid split by a hash of (seed, normalised query)."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    train, valid = [], []
    for ex in examples:
        h = hashlib.sha256(f"{seed}:{normalize_query(ex.query)}".encode()).digest()
        (valid if int.from_bytes(h[:8], "big") / 2**64 < valid_fraction else train).append(ex)
    return train, valid


def load_split(folder, valid_fraction: float = 0.05, seed: int = 0) -> tuple[list, list]:
    """(train, valid) examples of a data folder: the one split both stages use.

    SFT trains on `train` and reports its loss on `valid`; GRPO, given the SFT run's folder, fraction
    and seed (from its adapter_config.json), samples rollout prompts from `train` and scores `valid`
    as its held-out set - so no query GRPO selects its best adapter on was trained on by SFT.
    A folder with train.jsonl (and valid.jsonl) from `data.py split` is taken as it is; otherwise
    every *.jsonl is read, deduplicated and split by a hash of (seed, query).
    """
    folder = Path(folder)
    if folder.is_file():
        raise DataError([f"{folder}: --data must be a folder of *.jsonl files, not a file"])
    if (folder / "train.jsonl").exists():
        train, _ = dedupe(load_examples([folder / "train.jsonl"]))
        valid_file = folder / "valid.jsonl"
        valid = load_examples([valid_file]) if valid_file.exists() else []
        return train, valid
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise DataError([f"{folder}: no *.jsonl files (see data/README or `python data.py --help`)"])
    unique, _ = dedupe(load_examples(files))
    return split(unique, valid_fraction, seed)


def write_jsonl(path, examples) -> None:
    from runtime import atomic_write

    atomic_write(path, "".join(json.dumps(ex.to_record(), ensure_ascii=False) + "\n" for ex in examples))


# ----------------------------------------------------------------------------
# Evaluation query files: one query per line, `# category: name` headers, other `#` lines are comments

EVAL_QUERIES = Path(__file__).parent / "evals" / "queries.txt"


def read_queries(path=EVAL_QUERIES) -> list:
    """[(query, category)] from a query file; raises DataError naming file:line on bad content."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError([f"{path}: file not found"], "in the query file") from None
    except UnicodeDecodeError as exc:
        raise DataError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"], "in the query file") from None
    out, problems, seen, category = [], [], {}, "uncategorised"
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip().lstrip(BOM).strip()
        if not line:
            continue
        if line.startswith("#"):
            header = line.lstrip("#").strip()
            if header.lower().startswith("category:"):
                category = header.split(":", 1)[1].strip() or "uncategorised"
            continue
        if "\t" in line or any(ord(c) < 32 for c in line):
            problems.append(f"{path}:{lineno}: control characters in the query; write one plain query per line")
            continue
        if len(line) > MAX_QUERY_CHARS:
            problems.append(f"{path}:{lineno}: {too_long_query(line)}")
            continue
        key = normalize_query(line)
        if key in seen:
            problems.append(f"{path}:{lineno}: duplicate query (first on line {seen[key]})")
            continue
        seen[key] = lineno
        out.append((line, category))
    if not out and not problems:
        problems.append(f"{path}: no queries (one query per line; '#' starts a comment)")
    if problems:
        raise DataError(problems, "in the query file - fix them before evaluating")
    return out


# ----------------------------------------------------------------------------
# Reports


def _first_words(text: str, n: int = 3) -> str:
    return " ".join(text.lower().split()[:n])


def sameness(examples, top: int = 5) -> dict:
    """Most frequent first-three-word skeletons per line type: {type: (n_lines, [(skeleton, count)])}."""
    from collections import Counter

    out = {}
    for kind in ("lex", "vec", "hyde"):
        counts = Counter(_first_words(t) for ex in examples for k, t in ex.output if k == kind)
        out[kind] = (sum(counts.values()), counts.most_common(top))
    return out


def near_duplicates(examples) -> list:
    """Pairs of distinct queries that differ only in word order/punctuation or by one word."""
    import re

    groups: dict = {}
    for ex in examples:
        words = re.sub(r"[^\w\s]", " ", normalize_query(ex.query)).split()
        keys = {("bag", " ".join(sorted(words)))}
        if len(words) >= 3:  # one word removed, substituted or inserted
            keys |= {("del", " ".join(words[:i] + words[i + 1 :])) for i in range(len(words))}
        elif len(words) == 2 or len(words) == 1:
            keys.add(("del", " ".join(words)))
        for k in keys:
            groups.setdefault(k, []).append(ex)
    pairs = set()
    for members in groups.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                a, b = members[i], members[j]
                if normalize_query(a.query) != normalize_query(b.query) and len(members) <= 20:
                    pairs.add(tuple(sorted((a.query, b.query))))
    return sorted(pairs)


def is_short(query: str) -> bool:
    """One or two words (CJK: up to four characters without spaces)."""
    words = query.split()
    if len(words) == 1 and len(query) > 4 and any("\u3040" <= c <= "\u9fff" for c in query):
        return False
    return len(words) <= 2


def too_long_query(query: str) -> str:
    return (
        f"query is {len(query):,} characters; the limit is {MAX_QUERY_CHARS} (a search query, not a document: "
        "QMD expands it in a 2048-token context and train.py skips examples over max_seq_length)"
    )


def check_example(ex, min_score: float = 0.8) -> list:
    """Content problems of one example (beyond the schema): lengths, counts, QMD survival, score band."""
    import reward

    probs = []
    if len(ex.query) > MAX_QUERY_CHARS:
        probs.append(too_long_query(ex.query))
    for kind, text in ex.output:
        if len(text) > MAX_LINE_CHARS:
            probs.append(
                f"{kind} line is {len(text):,} characters; the limit is {MAX_LINE_CHARS} (QMD generates at most 600 "
                f"tokens for all lines together; hyde is meant to be {HYDE_CHARS[0]}-{HYDE_CHARS[1]} characters)"
            )
    kinds = [k for k, _ in ex.output]
    for t in OUTPUT_CONTRACT:
        n = kinds.count(t.name)
        if not t.min_lines <= n <= t.max_lines:
            probs.append(f"{n} {t.name} line(s); want {t.min_lines}-{t.max_lines}")
    s = reward.score(ex.query, "\n".join(f"{k}: {t}" for k, t in ex.output))
    if s.hard_failure:
        probs.append(f"hard failure: {s.hard_failure}")
    elif s.reward < min_score:
        worst = max(s.deductions, key=lambda d: d[1])[2] if s.deductions else "?"
        kinds = f"; breakage: {', '.join(s.issues)}" if s.issues else ""
        probs.append(f"score {s.reward:.2f} below {min_score:.2f} ({s.rating}); biggest deduction: {worst}{kinds}")
    for kind, text in ex.output:
        if kind in ("lex", "vec") and not __import__("prompt").qmd_keeps(
            text, reward.analyze_query(ex.query).qmd_terms
        ):
            probs.append(f"{kind} line {text[:50]!r} shares no word with the query, so QMD drops it")
    return probs


# ----------------------------------------------------------------------------
# CLI

import click  # noqa: E402

files_arg = click.argument("files", nargs=-1, type=click.Path(dir_okay=False))


def _load_or_exit(files) -> list:
    try:
        return load_examples(files or None)
    except DataError as err:
        for p in err.problems:
            click.echo(p)
        click.echo(f"{len(err.problems)} schema problem(s)", err=True)
        sys.exit(1)


@click.group()
def cli():
    """Validate, inspect and split the training data (data/*.jsonl)."""


@cli.command()
@files_arg
@click.option("--min-score", default=0.8, show_default=True, help="Lowest acceptable reward.py score per example.")
@click.option(
    "--evals",
    "evals_path",
    default=str(EVAL_QUERIES),
    show_default=True,
    help="Eval queries that must not appear in the data.",
)
def validate(files, min_score, evals_path):
    """Check schema, scores, hard failures, QMD survival, duplicates and eval overlap.

    Prints `file:line: reason` for every problem and exits 1 if there is any.
    """
    examples = _load_or_exit(files)
    problems = []
    for ex in examples:
        problems += [f"{ex.source}: {p}" for p in check_example(ex, min_score)]
    _, dups = dedupe(examples)
    problems += [f"{d.source}: duplicate query {d.query!r} (first at {k.source})" for d, k in dups]
    if evals_path and Path(evals_path).exists():
        evals = {normalize_query(q) for q, _ in read_queries(evals_path)}
        problems += [
            f"{ex.source}: query {ex.query!r} is also in {evals_path}"
            for ex in examples
            if normalize_query(ex.query) in evals
        ]
    for p in problems:
        click.echo(p)
    click.echo(f"{len(examples)} examples checked, {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


@cli.command()
@files_arg
def stats(files):
    """Counts per category and language, scores, duplicates, line counts and template sameness."""
    from collections import Counter

    import reward

    examples = _load_or_exit(files)
    unique, dups = dedupe(examples)
    n = len(unique)
    click.echo(f"examples: {len(examples)}  unique queries: {n}  duplicates: {len(dups)}")
    click.echo(
        f"short (1-2 word) queries: {sum(map(is_short, (e.query for e in unique)))} ({100 * sum(map(is_short, (e.query for e in unique))) / max(n, 1):.1f}%)"
    )
    non_en = sum(1 for e in unique if e.lang != "en")
    click.echo(f"non-English queries: {non_en} ({100 * non_en / max(n, 1):.1f}%)")

    for title, counter in (
        ("category", Counter(e.category for e in unique)),
        ("language", Counter(e.lang for e in unique)),
    ):
        click.echo(f"\nper {title}:")
        for name, c in counter.most_common():
            click.echo(f"  {name:24} {c:6}  {100 * c / max(n, 1):5.1f}%")

    scores = [reward.score(e.query, "\n".join(f"{k}: {t}" for k, t in e.output)).reward for e in unique]
    click.echo("\nscores (reward.py):")
    if scores:
        click.echo(f"  mean {sum(scores) / len(scores):.3f}  min {min(scores):.3f}")
        for lo, hi, name in (
            (0.8, 1.01, "Excellent"),
            (0.6, 0.8, "Good"),
            (0.4, 0.6, "Acceptable"),
            (0.0, 0.4, "Poor/Failed"),
        ):
            click.echo(f"  {name:12} {sum(1 for s in scores if lo <= s < hi):6}")

    click.echo("\nlines per example:")
    for kind in ("lex", "vec", "hyde"):
        dist = Counter(sum(1 for k, _ in e.output if k == kind) for e in unique)
        lengths = [len(t) for e in unique for k, t in e.output if k == kind]
        avg = sum(lengths) / max(len(lengths), 1)
        click.echo(
            f"  {kind:5} " + "  ".join(f"{c} lines: {dist[c]}" for c in sorted(dist)) + f"   avg {avg:.0f} chars"
        )

    near = near_duplicates(unique)
    click.echo(f"\nnear-duplicate query pairs: {len(near)}")
    for a, b in near[:20]:
        click.echo(f"  {a!r} ~ {b!r}")

    click.echo("\ntemplate sameness (most frequent first three words; limit 2% of lines):")
    worst = 0.0
    for kind, (total, top) in sameness(unique).items():
        click.echo(f"  {kind} ({total} lines):")
        for skel, c in top:
            share = 100 * c / max(total, 1)
            worst = max(worst, share)
            click.echo(f"    {share:5.2f}%  {c:5}  {skel!r}" + ("   <-- over 2%" if share > 2 else ""))
    click.echo(f"  largest skeleton share: {worst:.2f}%")


@cli.command("split")
@files_arg
@click.option("--valid-fraction", default=0.05, show_default=True, help="Share of queries held out for validation.")
@click.option("--seed", default=0, show_default=True, help="Changes which queries land in validation.")
@click.option(
    "--out", "out_dir", default=str(SPLIT_DIR), show_default=True, help="Folder for train.jsonl and valid.jsonl."
)
def split_cmd(files, valid_fraction, seed, out_dir):
    """Dedupe and write the deterministic train/valid split that train.py consumes."""
    examples = _load_or_exit(files)
    train, valid = write_split(examples, out_dir, valid_fraction, seed)
    click.echo(f"wrote {out_dir}/train.jsonl ({len(train)}) and {out_dir}/valid.jsonl ({len(valid)})")


def write_split(examples, out_dir=SPLIT_DIR, valid_fraction: float = 0.05, seed: int = 0):
    unique, _ = dedupe(examples)
    train, valid = split(unique, valid_fraction, seed)
    write_jsonl(Path(out_dir) / "train.jsonl", train)
    write_jsonl(Path(out_dir) / "valid.jsonl", valid)
    return train, valid


if __name__ == "__main__":
    cli()
