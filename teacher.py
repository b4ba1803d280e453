"""Make more training data with a teacher model behind an OpenAI-compatible chat-completions endpoint.

    python teacher.py expand my_queries.txt --out data/mydomain.jsonl           # local Ollama, qwen3:8b
    python teacher.py expand queries_de.txt --language de --out data/de_extra.jsonl
    python teacher.py propose --category "home lab" --count 50 --out data/homelab.jsonl
    QMD_TEACHER_BASE_URL=https://api.openai.com/v1 QMD_TEACHER_API_KEY=sk-... \\
        python teacher.py expand my_queries.txt --model gpt-4.1-mini --out data/mydomain.jsonl
    python data.py validate data/mydomain.jsonl                                  # then check and train as usual

`expand` reads a query file (one query per line, `#` comments, `# category: NAME` headers - the
format of evals/queries.txt). `propose` first asks the teacher for COUNT new queries of a category
(kept in OUT.proposed.txt, a query file you can edit and pass to `expand`), then expands them.

For every query the teacher's answer goes through the same bar as the hand-written data: parsed with
prompt.py's parser, rejected if any line lacks a lex:/vec:/hyde: prefix, scored by reward.py and kept
only when `data.check_example` finds nothing wrong at --min-score (Excellent by default). Kept
records are appended to OUT in the data/*.jsonl schema, one atomic rewrite per record, so an
interrupted run never leaves a half-written line. Running the same command again resumes: queries
already in OUT are skipped, and so are the ones rejected before (listed in OUT.rejected, with the
teacher's answer, so you can see why) unless --retry-rejected is given. Queries that already exist
anywhere in --data-dir or in the eval set are never asked, so the eval stays disjoint from training.

Endpoint: --base-url, --model and --api-key, or the environment (QMD_TEACHER_BASE_URL / OPENAI_BASE_URL,
QMD_TEACHER_MODEL, QMD_TEACHER_API_KEY / OPENAI_API_KEY). The default is a local Ollama
(`ollama serve`, `ollama pull qwen3:8b`). Rate limits, server errors, timeouts and malformed replies
are retried with exponential backoff; a wrong URL, model name or API key stops the run at once with
what to fix. Needs only the standard library (urllib) - no MLX, no extra packages.
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click

import reward
from data import DATA_DIR, EVAL_QUERIES, DataError, Example, check_example, normalize_query, read_jsonl, read_queries
from prompt import LINE_TYPES, OUTPUT_CONTRACT, line_count_text, parse_output, user_message
from runtime import MetricsLog, atomic_write, hms

DEFAULT_BASE_URL = "http://localhost:11434/v1"  # Ollama's OpenAI-compatible API
DEFAULT_MODEL = "qwen3:8b"
EXCELLENT = next(bound for bound, name in reward.RATINGS if name == "Excellent")
MAX_CONSECUTIVE_ERRORS = 5  # this many failed queries in a row: the teacher is down, stop asking
PROPOSE_ROUNDS = 5  # requests `propose` makes at most to collect COUNT new queries
MAX_RETRY_AFTER = 60.0  # seconds; a server asking for a longer pause is not waited on that long

# ----------------------------------------------------------------------------
# What the teacher is told

# What each line type is for, from the output contract (prompt.OUTPUT_CONTRACT).
_CONTRACT_LINES = "\n".join(f"{t.name}: {t.teach.format(count=line_count_text(t))}" for t in OUTPUT_CONTRACT)
_PREFIXES = ", ".join(f'"{t}: "' for t in LINE_TYPES[:-1]) + f' or "{LINE_TYPES[-1]}: "'

EXPAND_SYSTEM = (
    """\
You expand search queries for QMD, a local search engine over a person's markdown notes and documents.
QMD runs three kinds of search at once, and you write lines for each:

"""
    + _CONTRACT_LINES
    + """

Rules:
- Keep the query's named entities (products, people, places, acronyms, versions) in every lex line and in the vec lines.
- Every lex and vec line must share at least one word with the query; QMD drops lines that do not.
- Every line says something new: do not repeat the query, do not write near-identical lines.
- Write in the same language as the query.{language}
- Answer with these lines only, each starting with """
    + _PREFIXES
    + """. No numbering, no markdown, no explanation.

Query: sqlite wal mode
lex: sqlite wal journal_mode
lex: sqlite write-ahead log checkpoint
vec: how to turn on write-ahead logging in sqlite and what it changes
vec: why sqlite wal mode allows readers and a writer at the same time
hyde: Run PRAGMA journal_mode=WAL; once per database. SQLite then appends changes to a -wal file, so readers never \
block the writer.

Query: Kubernetes Pod Neustart
lex: Kubernetes Pod Neustart kubectl
lex: Kubernetes Pod neu starten rollout restart
vec: wie startet man einen Kubernetes Pod neu, ohne das Deployment zu löschen
vec: warum ein Kubernetes Pod ständig neu startet und wie man die Ursache findet
hyde: Mit kubectl rollout restart deployment/web startet Kubernetes alle Pods des Deployments nacheinander neu."""
)

PROPOSE_SYSTEM = """\
You write realistic search queries that people type into QMD, a local search engine over their own markdown \
notes, documentation and saved articles."""

PROPOSE_USER = """\
Write {n} new, varied search queries for the category "{category}".{language}
Mix very short keyword queries (1-2 words), medium ones (3-5 words) and a few full questions; include names of \
real tools, places or people where they fit. Each query on its own line, nothing else: no numbering, no quotes, \
no explanation.{examples}"""


def _language_hint(lang: str | None, what: str) -> str:
    return f"\n- {what} are in the language with ISO 639-1 code '{lang}'." if lang else ""


def expand_messages(query: str, lang: str | None = None) -> list:
    # The user turn is exactly what QMD sends the student (prompt.user_message); its /no_think also
    # switches off Qwen3 teachers' reasoning, which makes a local teacher several times faster.
    system = EXPAND_SYSTEM.format(language=_language_hint(lang, "The queries"))
    return [{"role": "system", "content": system}, {"role": "user", "content": user_message(query)}]


def propose_messages(category: str, n: int, lang: str | None = None, examples=()) -> list:
    language = f" Write them in the language with ISO 639-1 code '{lang}'." if lang else ""
    shown = "\n".join(list(examples)[:20])
    more = f"\n\nThese already exist; match their style but do not repeat them:\n{shown}" if shown else ""
    user = PROPOSE_USER.format(n=n, category=category, language=language, examples=more)
    return [{"role": "system", "content": PROPOSE_SYSTEM}, {"role": "user", "content": user}]


# ----------------------------------------------------------------------------
# Talking to the teacher: one POST per request, retries with exponential backoff


class TeacherError(RuntimeError):
    """A request that failed (after its retries, if it was worth retrying): the query counts as an error."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # short label for the summary: "timeout", "HTTP 500", "malformed reply", ...


class _Retry(TeacherError):
    """A failure that may go away on its own: rate limit, server error, timeout, malformed reply."""

    def __init__(self, message: str, kind: str, after: float | None = None):
        super().__init__(message, kind)
        self.after = after  # the server's Retry-After, in seconds


class FatalError(RuntimeError):
    """Retrying cannot help (wrong URL, model name or API key): stop the run and say what to fix."""


@dataclass
class Reply:
    text: str
    seconds: float
    tokens: int | None  # completion tokens, when the server reports usage


@dataclass
class Teacher:
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    temperature: float = 0.7
    max_tokens: int = 1024
    echo: object = print
    requests: int = 0  # HTTP requests sent, retries included
    reached: bool = False  # the server has answered at least once (with anything)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def chat(self, messages: list) -> Reply:
        """The assistant text for `messages`; raises TeacherError or FatalError."""
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stream": False,
        }
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        for attempt in range(self.retries + 1):
            try:
                return self._post(data)
            except _Retry as exc:
                if attempt == self.retries:
                    raise TeacherError(f"{exc} (gave up after {attempt + 1} attempts)", exc.kind) from None
                delay = self.backoff * 2**attempt
                if exc.after is not None:
                    delay = max(delay, min(exc.after, MAX_RETRY_AFTER))
                self.echo(f"    retry {attempt + 1}/{self.retries} in {delay:.1f}s: {exc}")
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _post(self, data: bytes) -> Reply:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:  # Ollama needs none; sending an empty Bearer confuses some proxies
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        self.requests += 1
        start = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:  # before URLError: it is a subclass
            self.reached = True
            self._http_error(exc)
        except urllib.error.URLError as exc:
            self._unreachable(exc.reason)
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            # Raised while reading the reply: a read timeout, or the server hung up mid-answer.
            if isinstance(exc, TimeoutError):
                raise self._timed_out() from None
            raise _Retry(f"connection lost: {type(exc).__name__}: {exc}", "connection") from None
        self.reached = True
        seconds = time.monotonic() - start
        try:
            reply = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Retry(f"malformed reply: not JSON: {raw[:120]!r}", "malformed reply") from None
        text = _message_text(reply)
        if text is None:
            shown = json.dumps(reply, ensure_ascii=False)[:160]
            raise _Retry(f"malformed reply: no choices[0].message.content in {shown}", "malformed reply")
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        tokens = usage.get("completion_tokens")
        return Reply(text, seconds, tokens if isinstance(tokens, int) else None)

    def _http_error(self, exc: urllib.error.HTTPError):
        status, detail = exc.code, _error_detail(exc)
        where = f"HTTP {status} from {self.url}: {detail}"
        if status in (401, 403):
            key = "an API key was sent" if self.api_key else "no API key was sent"
            raise FatalError(
                f"{where}\nThe server refused the request ({key}). Pass --api-key or set QMD_TEACHER_API_KEY "
                "(or OPENAI_API_KEY); a local Ollama needs none - check --base-url."
            )
        if status == 404:
            raise FatalError(
                f"{where}\nEither the model '{self.model}' does not exist there (check --model; for Ollama: "
                f"`ollama list`, `ollama pull {self.model}`) or --base-url is wrong (it ends in /v1, e.g. "
                f"{DEFAULT_BASE_URL})."
            )
        if status in (408, 409, 425, 429) or status >= 500:
            raise _Retry(f"HTTP {status}: {detail}", f"HTTP {status}", _retry_after(exc))
        # Any other 4xx: this request is wrong (too long, a bad parameter); sending it again cannot help.
        raise TeacherError(where, f"HTTP {status}")

    def _timed_out(self) -> _Retry:
        return _Retry(f"no reply within {self.timeout:g}s (raise --timeout for a slow teacher)", "timeout")

    def _unreachable(self, reason):
        if isinstance(reason, TimeoutError):
            raise self._timed_out()
        if not self.reached:
            # Nothing has ever answered at this address: retrying will not start the server.
            raise FatalError(
                f"cannot connect to {self.url}: {reason}\nIs the server running? For Ollama: `ollama serve` "
                "(and `ollama pull MODEL`). Or point --base-url (QMD_TEACHER_BASE_URL) at your OpenAI-compatible server."
            )
        raise _Retry(f"cannot connect to {self.url}: {reason}", "connection")


def _message_text(reply) -> str | None:
    try:
        text = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) else None


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's own explanation: OpenAI/Ollama send {"error": {"message": ...}}, others plain text."""
    try:
        raw = exc.read().decode("utf-8", "replace")
    except OSError:
        return exc.reason or "no details"
    try:
        err = json.loads(raw).get("error")
        message = err.get("message") if isinstance(err, dict) else err
        if isinstance(message, str) and message:
            return message[:300]
    except (json.JSONDecodeError, AttributeError):
        pass
    return " ".join(raw.split())[:300] or str(exc.reason)


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    try:
        return max(0.0, float(exc.headers.get("Retry-After", "")))
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------
# Judging an answer: the same bar as the hand-written data

_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE_RE = re.compile(r"^\s*```[\w-]*\s*$")


def clean_answer(text: str) -> str:
    """Drop what reasoning and chatty teachers wrap around the lines: a <think> block, ``` fences."""
    text = _THINK_RE.sub("", text)
    return "\n".join(line for line in text.split("\n") if not _FENCE_RE.match(line)).strip()


@dataclass
class Verdict:
    example: Example | None  # the record to keep, or None
    reason: str = ""  # why it was rejected (one line)
    kind: str = ""  # short label for the summary
    score: reward.Score | None = None


def judge(query: str, answer: str, min_score: float, extra: dict) -> Verdict:
    if "<think>" in answer and "</think>" not in answer:
        return Verdict(None, "the answer ends inside <think> (raise --max-tokens)", "unfinished <think>")
    p = parse_output(clean_answer(answer))
    if p.leaked:
        return Verdict(None, f"chat-template token in the answer: {p.leaked[0]}", "leaked token")
    if p.invalid:
        return Verdict(None, f"line without lex:/vec:/hyde: prefix: {p.invalid[0][:60]!r}", "invalid line")
    if p.empty:
        return Verdict(None, f"empty {p.empty[0]}: line", "empty line")
    if not p.lines:
        return Verdict(None, "empty answer", "empty answer")
    example = Example(query, p.lines, extra=dict(extra))
    s = reward.score(query, "\n".join(f"{k}: {t}" for k, t in p.lines))
    problems = check_example(example, min_score)  # line counts, hard failures, score, QMD survival
    if problems:
        kind = f"score below {min_score:.2f}" if s.reward < min_score else "data checks"
        return Verdict(None, "; ".join(problems), kind, s)
    return Verdict(example, score=s)


_BULLET_RE = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)])\s+")


def parse_query_list(answer: str) -> list:
    """Queries from a `propose` answer: one per line; bullets, numbers, quotes and preambles dropped."""
    out = []
    for line in clean_answer(answer).split("\n"):
        q = " ".join(_BULLET_RE.sub("", line).split()).strip("\"'`“”")
        q = "".join(c for c in q if ord(c) >= 32).strip()
        if not q or q.endswith(":") or q.startswith("#") or len(q) > 150:  # "Here are 20 queries:"
            continue
        out.append(q)
    return out


# ----------------------------------------------------------------------------
# What exists already: the data set, the eval set, and this run's own output (the resume state)


def existing_examples(data_dir, skip=None) -> list:
    """Every parseable example in data_dir/*.jsonl except `skip`. A broken line elsewhere is
    `data.py validate`'s business; it must not stop new data from being made."""
    skip = Path(skip).resolve() if skip else None
    out = []
    for path in sorted(Path(data_dir).glob("*.jsonl")):
        if path.resolve() != skip:
            out += read_jsonl(path)[0]
    return out


def known_queries(examples, evals_path) -> dict:
    """normalised query -> where it already is (file:line or the eval file)."""
    known = {normalize_query(ex.query): ex.source for ex in examples}
    if evals_path and Path(evals_path).exists():
        for q, _ in read_queries(evals_path):
            known.setdefault(normalize_query(q), f"{evals_path} (eval set)")
    return known


class OutFile:
    """The output JSONL and its OUT.rejected sidecar: together they are the resume state."""

    def __init__(self, path):
        self.path = Path(path)
        self.text = ""
        done = []
        raw = self.path.read_bytes() if self.path.exists() else b""
        if raw.strip():
            done, problems = read_jsonl(self.path)
            if problems:  # refuse: every kept record rewrites this file, and bad lines must not be lost
                raise DataError(problems)
            self.text = raw.decode("utf-8")
        self.done = {normalize_query(ex.query) for ex in done}
        self.rejected_log = MetricsLog(self.path.with_name(self.path.name + ".rejected"))
        self.rejected = {
            normalize_query(r["query"])
            for r in self.rejected_log.read()
            if isinstance(r, dict) and isinstance(r.get("query"), str)
        }

    def keep(self, example: Example) -> None:
        if self.text and not self.text.endswith("\n"):
            self.text += "\n"
        self.text += json.dumps(example.to_record(), ensure_ascii=False) + "\n"
        atomic_write(self.path, self.text)  # whole file via temp + rename: never a half-written line
        self.done.add(normalize_query(example.query))

    def reject(self, query: str, verdict: Verdict, answer: str) -> None:
        # A cut last line (crash mid-write) is skipped by MetricsLog.read: at worst that query is asked again.
        self.rejected_log.log({"query": query, "reason": verdict.reason, "answer": answer})
        self.rejected.add(normalize_query(query))


# ----------------------------------------------------------------------------
# The loop: ask, judge, keep or reject, report


def _counts(c: Counter) -> str:
    return f"{sum(c.values())}" + (f" ({', '.join(f'{k}: {n}' for k, n in c.most_common())})" if c else "")


@dataclass
class Tally:
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason kind -> queries
    errors: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        return (
            f"kept {self.kept}, rejected {_counts(self.rejected)}, errors {_counts(self.errors)}, "
            f"skipped {_counts(self.skipped)}"
        )


def expand_queries(
    teacher: Teacher,
    items: list,
    out: OutFile,
    known: dict,
    min_score: float = EXCELLENT,
    lang: str | None = None,
    retry_rejected: bool = False,
    resample: int = 1,
    echo=print,
) -> Tally:
    """Ask the teacher about every (query, category) not done or known yet; keep the ones that pass."""
    tally, todo = Tally(), []
    for query, category in items:
        key = normalize_query(query)
        if key in out.done:
            tally.skipped[f"already in {out.path.name}"] += 1
        elif key in known:
            tally.skipped["already in the data or eval set"] += 1
            echo(f"skip {query!r}: already in {known[key]}")
        elif key in out.rejected and not retry_rejected:
            tally.skipped["rejected before (--retry-rejected asks again)"] += 1
        else:
            todo.append((query, category))
    if tally.skipped:
        echo(f"{len(items)} queries, {len(todo)} to ask; skipping {_counts(tally.skipped)}")

    start, in_a_row = time.monotonic(), 0
    for i, (query, category) in enumerate(todo, 1):
        extra = {"category": category, "lang": lang or "en", "teacher": teacher.model}
        verdict, answer, seconds, tokens = None, "", 0.0, 0
        try:
            for _ in range(resample + 1):  # a rejected answer may be a bad sample: ask again
                reply = teacher.chat(expand_messages(query, lang))
                answer, seconds, tokens = reply.text, seconds + reply.seconds, tokens + (reply.tokens or 0)
                verdict = judge(query, answer, min_score, extra)
                if verdict.example is not None:
                    break
        except TeacherError as exc:
            tally.errors[exc.kind] += 1
            echo(f"[{i}/{len(todo)}] {query} -> error: {exc}")
            in_a_row += 1
            if in_a_row >= MAX_CONSECUTIVE_ERRORS:
                raise FatalError(
                    f"{in_a_row} queries in a row failed; the teacher seems down or overloaded. "
                    "Fix it and run the same command again: kept records are saved, finished queries are skipped."
                ) from None
            continue
        in_a_row = 0
        if verdict.example is not None:
            out.keep(verdict.example)
            known[normalize_query(query)] = str(out.path)
            tally.kept += 1
            status = f"kept {verdict.score.percentage:.0f}%"
        else:
            out.reject(query, verdict, answer)
            tally.rejected[verdict.kind] += 1
            status = f"rejected ({verdict.reason.split('; ')[0][:150]})"  # all reasons are in OUT.rejected
        speed = f", {tokens / seconds:.0f} tok/s" if tokens and seconds > 0 else ""
        eta = (time.monotonic() - start) / i * (len(todo) - i)
        echo(f"[{i}/{len(todo)}] {query} -> {status}  [{seconds:.1f}s{speed}, eta {hms(eta)}]")
    return tally


def propose_queries(
    teacher: Teacher,
    category: str,
    count: int,
    proposed_path,
    taken: set,
    lang: str | None = None,
    examples=(),
    echo=print,
) -> list:
    """COUNT queries for `category`: the ones proposed before (resume) plus new ones from the teacher.

    New queries go to `proposed_path` (a query file with `# category:` headers) as soon as they
    arrive, so a resumed run expands the same queries instead of proposing different ones.
    """
    proposed_path = Path(proposed_path)
    before = read_queries(proposed_path) if proposed_path.exists() else []
    mine = [q for q, c in before if c == category]
    taken = set(taken) | {normalize_query(q) for q, _ in before}
    for _ in range(PROPOSE_ROUNDS):
        need = count - len(mine)
        if need <= 0:
            break
        try:
            reply = teacher.chat(propose_messages(category, need, lang, examples))
        except TeacherError as exc:
            echo(f"propose -> error: {exc}")
            continue
        fresh = []
        for q in parse_query_list(reply.text):
            if normalize_query(q) not in taken:
                taken.add(normalize_query(q))
                fresh.append(q)
        fresh = fresh[:need]
        echo(f"proposed {len(fresh)} new {category!r} queries ({len(mine) + len(fresh)}/{count})")
        if fresh:
            text = proposed_path.read_text(encoding="utf-8") if proposed_path.exists() else ""
            atomic_write(proposed_path, text + f"# category: {category}\n" + "".join(q + "\n" for q in fresh))
            mine += fresh
    if len(mine) < count:
        echo(f"warning: only {len(mine)} of {count} queries after {PROPOSE_ROUNDS} requests; expanding those")
    return mine[:count]


# ----------------------------------------------------------------------------
# CLI


def _fail(msg: str, code: int = 2):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _check_url(ctx, param, value):
    if value and not value.startswith(("http://", "https://")):
        raise click.BadParameter(f"{value!r} is not an http(s) URL, e.g. {DEFAULT_BASE_URL}")
    return value


_OPTIONS = [
    click.option(
        "--out",
        "out_path",
        required=True,
        type=click.Path(dir_okay=False),
        help="JSONL file to append kept records to (e.g. data/mydomain.jsonl); also the resume state.",
    ),
    click.option(
        "--base-url",
        envvar=["QMD_TEACHER_BASE_URL", "OPENAI_BASE_URL"],
        default=DEFAULT_BASE_URL,
        show_default=True,
        show_envvar=True,
        callback=_check_url,
        help="OpenAI-compatible API root (the part before /chat/completions).",
    ),
    click.option(
        "--model",
        envvar="QMD_TEACHER_MODEL",
        default=DEFAULT_MODEL,
        show_default=True,
        show_envvar=True,
        help="Model name as the server knows it (`ollama list`).",
    ),
    click.option(
        "--api-key",
        envvar=["QMD_TEACHER_API_KEY", "OPENAI_API_KEY"],
        show_envvar=True,
        help="Sent as a Bearer token; leave unset for a local Ollama.",
    ),
    click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for one reply."),
    click.option("--retries", default=3, show_default=True, help="Retries per request on timeouts, 429 and 5xx."),
    click.option("--backoff", default=1.0, show_default=True, help="First retry delay in seconds; doubles each time."),
    click.option("--temperature", default=0.7, show_default=True),
    click.option("--max-tokens", default=1024, show_default=True, help="Cap on the teacher's answer length."),
    click.option(
        "--min-score",
        default=EXCELLENT,
        show_default=True,
        help="Lowest reward.py score (0-1) a kept answer may have (data.py validate wants 0.8).",
    ),
    click.option("--resample", default=1, show_default=True, help="Ask again up to this often when an answer fails."),
    click.option("--language", "lang", help="ISO 639-1 code of the queries (e.g. de); written as the record's lang."),
    click.option("--retry-rejected", is_flag=True, help="Ask again about queries rejected by an earlier run."),
    click.option(
        "--data-dir",
        default=str(DATA_DIR),
        show_default=True,
        type=click.Path(file_okay=False),
        help="Existing data (*.jsonl): queries found there are not asked again.",
    ),
    click.option(
        "--evals",
        "evals_path",
        default=str(EVAL_QUERIES),
        show_default=True,
        help="Eval queries that must stay out of the training data.",
    ),
]


def teacher_options(f):
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def _setup(opts: dict):
    """(teacher, out file, examples already in the data set, known queries) from the common options."""
    teacher = Teacher(
        base_url=opts["base_url"],
        model=opts["model"],
        api_key=opts["api_key"] or None,
        timeout=opts["timeout"],
        retries=max(0, opts["retries"]),
        backoff=max(0.0, opts["backoff"]),
        temperature=opts["temperature"],
        max_tokens=opts["max_tokens"],
        echo=click.echo,
    )
    try:
        out = OutFile(opts["out_path"])
        examples = existing_examples(opts["data_dir"], skip=opts["out_path"])
        known = known_queries(examples, opts["evals_path"])
    except DataError as err:
        _fail(f"{err}\n(the output file is the resume state: fix or move it, then run again)")
    click.echo(f"teacher: {teacher.model} at {teacher.url}; keeping answers scoring >= {opts['min_score']:.2f}")
    return teacher, out, examples, known


def _run(teacher, out, known, items, opts) -> None:
    start = time.monotonic()
    try:
        tally = expand_queries(
            teacher,
            items,
            out,
            known,
            min_score=opts["min_score"],
            lang=opts["lang"],
            retry_rejected=opts["retry_rejected"],
            resample=max(0, opts["resample"]),
            echo=click.echo,
        )
    except FatalError as exc:
        _fail(f"{exc}\nKept records so far are in {out.path}; the same command resumes.")
    except KeyboardInterrupt:
        _fail(f"interrupted. Kept records so far are in {out.path}; the same command resumes.", 130)
    click.echo(f"\n{tally.summary()}")
    click.echo(f"{teacher.requests} request(s) in {hms(time.monotonic() - start)}; output: {out.path}")
    if tally.rejected:
        click.echo(f"rejected answers and why: {out.rejected_log.path}")
    if tally.errors:
        _fail(f"{sum(tally.errors.values())} query(ies) failed; run the same command again to retry them", 1)


@click.group()
def cli():
    """Make more training data with a teacher model (Ollama or any OpenAI-compatible API)."""


@cli.command()
@click.argument("queries_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--category", help="Category for queries without a '# category:' header in the file.")
@teacher_options
def expand(queries_file, category, **opts):
    """Expand every query of QUERIES_FILE (one per line, '#' comments) and append the good answers to --out."""
    try:
        items = [(q, c if c != "uncategorised" else category or c) for q, c in read_queries(queries_file)]
    except DataError as err:
        _fail(str(err))
    teacher, out, _, known = _setup(opts)
    _run(teacher, out, known, items, opts)


@cli.command()
@click.option("--category", required=True, help="What the new queries are about, e.g. 'home lab' or 'cooking'.")
@click.option("--count", default=20, show_default=True, help="How many new queries to propose and expand.")
@teacher_options
def propose(category, count, **opts):
    """Ask the teacher for COUNT new queries of a category, then expand them like `expand` does."""
    teacher, out, examples, known = _setup(opts)
    proposed_path = out.path.with_name(out.path.name + ".proposed.txt")
    taken = set(known) | out.done | out.rejected
    same = [ex.query for ex in examples if ex.category == category]
    try:
        queries = propose_queries(teacher, category, count, proposed_path, taken, opts["lang"], same, echo=click.echo)
    except (FatalError, DataError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail(f"interrupted. The queries proposed so far are in {proposed_path}; the same command resumes.", 130)
    if not queries:
        _fail("the teacher proposed no usable queries; see the messages above", 1)
    click.echo(f"queries: {proposed_path} (edit it and use `teacher.py expand` to change them)")
    _run(teacher, out, known, [(q, category) for q in queries], opts)


if __name__ == "__main__":
    cli()
