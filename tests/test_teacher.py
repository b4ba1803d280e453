"""teacher.py against a real local HTTP server speaking the chat-completions API (no mocked client).

The server's answers are scripted per test: good expansions (which score Excellent with the real
reward.py), <think> blocks, invalid lines, low scores, HTTP errors, malformed JSON and slow replies.
"""

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

import data
import reward
import teacher
from prompt import USER_TEMPLATE, parse_output, user_message

GOOD = {
    "kafka consumer lag": (
        "lex: kafka consumer lag offsets\nlex: kafka consumer group lag monitoring\n"
        "vec: how to measure and reduce kafka consumer lag for a consumer group\n"
        "vec: why kafka consumers fall behind the latest partition offsets\n"
        "hyde: Consumer lag is the gap between the latest offset of a Kafka partition and the committed offset "
        "of the consumer group reading it."
    ),
    "sourdough hydration": (
        "lex: sourdough hydration percentage\nlex: sourdough dough water flour ratio\n"
        "vec: what hydration level works best for a sourdough bread dough\n"
        "vec: how sourdough hydration changes the crumb and handling of the dough\n"
        "hyde: A 75% hydration sourdough uses 750 g water per 1 kg flour; higher hydration gives an open crumb "
        "but a stickier dough."
    ),
    "Lisbon tram 28": (
        "lex: Lisbon tram 28 route\nlex: Lisbon tram 28 Alfama stops tickets\n"
        "vec: which sights the Lisbon tram 28 passes on its route through the old town\n"
        "vec: tips for riding the Lisbon tram 28 without long queues\n"
        "hyde: Lisbon tram 28 runs from Martim Moniz through Graça, Alfama and Baixa to Campo de Ourique; "
        "board early to avoid the queues."
    ),
    "git rebase onto": (
        "lex: git rebase --onto branch\nlex: git rebase onto upstream commits\n"
        "vec: how to move a branch to a new base with git rebase --onto\n"
        "vec: when to use git rebase onto instead of a plain rebase\n"
        "hyde: Run git rebase --onto main feature-a feature-b to replay only the commits of feature-b that are "
        "not in feature-a onto main."
    ),
}
LOW_SCORE = "lex: message queue monitoring\nvec: streaming platform performance tips"
PROPOSE = "<propose>"  # the key of requests that ask for new queries
PREFIX = USER_TEMPLATE.split("{query}")[0]


# ----------------------------------------------------------------------------
# The fake teacher: a real ThreadingHTTPServer on 127.0.0.1, port 0


def completion(text, usage=True):
    body = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 100, "completion_tokens": 60, "total_tokens": 160}
    return body


def reply(text=None, status=200, body=None, delay=0.0, headers=None):
    """One scripted response; text=None and body=None means the query's good answer."""
    return {"text": text, "status": status, "body": body, "delay": delay, "headers": headers or {}}


def error(status, message):
    return reply(status=status, body={"error": {"message": message, "type": "api_error"}})


@dataclass
class Seen:
    path: str
    headers: dict
    body: dict
    query: str


@dataclass
class FakeTeacher:
    url: str = ""
    answers: dict = field(default_factory=lambda: dict(GOOD))
    plan: dict = field(default_factory=dict)  # query -> [response, ...] consumed in order, then the good answer
    always: dict | None = None  # a response for every request
    seen: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: object = None

    def count(self, query=None):
        return sum(1 for r in self.seen if query is None or r.query == query)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        fake = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        query = user.split(PREFIX, 1)[1] if user.startswith(PREFIX) else PROPOSE
        with fake.lock:
            fake.seen.append(Seen(self.path, dict(self.headers), body, query))
            queue = fake.plan.get(query)
            r = fake.always or (queue.pop(0) if queue else reply())
        if self.path != "/v1/chat/completions":
            r = error(404, "404 page not found")
        time.sleep(r["delay"])
        payload = r["body"] if r["body"] is not None else completion(r["text"] or fake.answers[query])
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(r["status"])
            for k, v in {"Content-Type": "application/json", **r["headers"]}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
            pass

    def log_message(self, *args):  # keep the test output clean
        pass


class Server(ThreadingHTTPServer):
    block_on_close = False  # do not wait for a handler still sleeping in a timeout test


@pytest.fixture
def fake():
    server = Server(("127.0.0.1", 0), Handler)
    server.fake = FakeTeacher(url=f"http://127.0.0.1:{server.server_address[1]}/v1", server=server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server.fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def world(tmp_path):
    """A data dir with one existing example, an eval set, and the paths a run uses."""
    d = tmp_path / "data"
    d.mkdir()
    existing = {"query": "Kafka  Consumer Lag", "category": "howto", "lang": "en", "output": [["lex", "kafka lag"]]}
    (d / "existing.jsonl").write_text(json.dumps(existing) + "\n")
    (tmp_path / "evals.txt").write_text("# category: short\nsourdough hydration\n")
    return tmp_path


NO_ENV = {k: None for k in ("QMD_TEACHER_BASE_URL", "OPENAI_BASE_URL", "QMD_TEACHER_MODEL")} | {
    "QMD_TEACHER_API_KEY": None,
    "OPENAI_API_KEY": None,
}


def invoke(args, env=None):
    return CliRunner().invoke(teacher.cli, [str(a) for a in args], env={**NO_ENV, **(env or {})})


def expand(fake, world, queries, *extra, env=None, url=True):
    qfile = world / "queries.txt"
    qfile.write_text("# my queries\n" + "".join(q + "\n" for q in queries))
    args = ["expand", qfile, "--out", world / "data" / "new.jsonl", "--data-dir", world / "data"]
    args += ["--evals", world / "evals.txt", "--backoff", "0", "--timeout", "2", *extra]
    return invoke(args + (["--base-url", fake.url] if url else []), env)


def kept(world):
    path = world / "data" / "new.jsonl"
    if not path.exists():
        return []
    examples, problems = data.read_jsonl(path)  # the real schema check
    assert problems == []
    return examples


def rejected(world):
    path = world / "data" / "new.jsonl.rejected"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ----------------------------------------------------------------------------
# Good answers


def test_good_answers_are_scored_and_kept_in_the_data_schema(fake, world):
    r = expand(fake, world, ["Lisbon tram 28", "git rebase onto"], "--category", "travel", "--model", "teach:1b")
    assert r.exit_code == 0, r.output
    assert "[1/2] Lisbon tram 28 -> kept 100%" in r.output and "[2/2] git rebase onto -> kept" in r.output
    assert "tok/s" in r.output and "eta" in r.output
    assert "kept 2, rejected 0, errors 0" in r.output
    examples = kept(world)
    assert [e.query for e in examples] == ["Lisbon tram 28", "git rebase onto"]
    for ex in examples:
        assert ex.extra == {"category": "travel", "lang": "en", "teacher": "teach:1b"}
        assert ex.output == parse_output(GOOD[ex.query]).lines
        assert data.check_example(ex, 0.8) == []  # passes data.py validate
    # What the server got: the chat-completions body, QMD's own user turn, no key when none is set.
    req = fake.seen[0]
    assert req.path == "/v1/chat/completions" and "Authorization" not in req.headers
    assert req.body["model"] == "teach:1b" and req.body["stream"] is False
    assert req.body["messages"][0]["role"] == "system" and "lex:" in req.body["messages"][0]["content"]
    assert req.body["messages"][1] == {"role": "user", "content": user_message("Lisbon tram 28")}


def test_think_block_and_code_fences_are_stripped_before_parsing(fake, world):
    fake.answers["Lisbon tram 28"] = (
        "<think>\nThe user wants tram info.\n</think>\n```\n" + GOOD["Lisbon tram 28"] + "\n```"
    )
    r = expand(fake, world, ["Lisbon tram 28"])
    assert r.exit_code == 0, r.output
    assert kept(world)[0].output == parse_output(GOOD["Lisbon tram 28"]).lines


def test_environment_sets_url_model_and_bearer_key(fake, world):
    env = {"QMD_TEACHER_BASE_URL": fake.url, "QMD_TEACHER_MODEL": "env-model", "OPENAI_API_KEY": "sk-test"}
    r = expand(fake, world, ["git rebase onto"], env=env, url=False)
    assert r.exit_code == 0, r.output
    assert fake.seen[0].headers["Authorization"] == "Bearer sk-test"
    assert fake.seen[0].body["model"] == "env-model"
    assert kept(world)[0].extra["teacher"] == "env-model"


def test_language_hint_reaches_the_teacher_and_the_record(fake, world):
    r = expand(fake, world, ["git rebase onto"], "--language", "de")
    assert r.exit_code == 0, r.output
    assert "'de'" in fake.seen[0].body["messages"][0]["content"]
    assert kept(world)[0].lang == "de"


def test_the_prompt_examples_meet_the_bar():
    # The few-shot examples in the teacher's system prompt must themselves be Excellent data.
    blocks = teacher.EXPAND_SYSTEM.split("Query: ")[1:]
    assert len(blocks) == 2
    for block in blocks:
        query, answer = block.split("\n", 1)
        ex = data.Example(query, parse_output(answer).lines)
        assert data.check_example(ex, 0.8) == [], query
        assert not parse_output(answer).invalid


# ----------------------------------------------------------------------------
# Bad answers: rejected with a reason, recorded, not asked again on resume


def test_invalid_lines_are_rejected_resampled_and_recorded(fake, world):
    chatty = "Sure! Here are the expansions:\n" + GOOD["kafka consumer lag"]
    fake.answers["git rebase onto"] = chatty
    fake.plan["Lisbon tram 28"] = [reply(chatty)]  # bad once, then good: the resample saves it
    r = expand(fake, world, ["git rebase onto", "Lisbon tram 28"])
    assert r.exit_code == 0, r.output
    assert "git rebase onto -> rejected (line without lex:/vec:/hyde: prefix: 'Sure! Here are" in r.output
    assert fake.count("git rebase onto") == 2 and fake.count("Lisbon tram 28") == 2
    assert [e.query for e in kept(world)] == ["Lisbon tram 28"]
    [rec] = rejected(world)
    assert rec["query"] == "git rebase onto" and "prefix" in rec["reason"] and rec["answer"] == chatty
    assert "rejected 1 (invalid line: 1)" in r.output

    # A resumed run does not ask about the rejected query again, unless told to.
    r = expand(fake, world, ["git rebase onto", "Lisbon tram 28"])
    assert r.exit_code == 0 and fake.count() == 4
    assert "rejected before" in r.output and "already in new.jsonl: 1" in r.output
    fake.answers["git rebase onto"] = GOOD["git rebase onto"]
    r = expand(fake, world, ["git rebase onto", "Lisbon tram 28"], "--retry-rejected")
    assert r.exit_code == 0 and fake.count() == 5
    assert [e.query for e in kept(world)] == ["Lisbon tram 28", "git rebase onto"]


def test_low_score_answer_is_rejected_with_the_reward_reason(fake, world):
    fake.answers["git rebase onto"] = LOW_SCORE
    assert reward.score("git rebase onto", LOW_SCORE).reward < 0.8
    r = expand(fake, world, ["git rebase onto"], "--resample", "0")
    assert r.exit_code == 0, r.output
    assert "-> rejected (score 0." in r.output and "below 0.80" in r.output
    assert fake.count() == 1 and kept(world) == []
    assert "below 0.80" in rejected(world)[0]["reason"] and "shares no word" in rejected(world)[0]["reason"]


def test_unfinished_think_and_empty_answers_are_rejected(fake, world):
    fake.answers["git rebase onto"] = "<think>\nLet me think about rebasing for a long"
    fake.answers["Lisbon tram 28"] = "   \n"
    r = expand(fake, world, ["git rebase onto", "Lisbon tram 28"], "--resample", "0")
    assert r.exit_code == 0, r.output
    assert "ends inside <think> (raise --max-tokens)" in r.output and "rejected (empty answer)" in r.output


# ----------------------------------------------------------------------------
# Transport errors: retried with backoff, or stopped with what to fix


@pytest.mark.parametrize(
    "bad", [error(500, "boom"), error(429, "slow down"), reply(body=b"<html>bad gateway</html>"), reply(body={"x": 1})]
)
def test_transient_failures_are_retried(fake, world, bad):
    fake.plan["git rebase onto"] = [bad]
    r = expand(fake, world, ["git rebase onto"])
    assert r.exit_code == 0, r.output
    assert "retry 1/3" in r.output
    assert fake.count() == 2 and len(kept(world)) == 1


def test_persistent_server_error_counts_as_error_and_the_run_goes_on(fake, world):
    fake.plan["git rebase onto"] = [error(503, "model is loading")] * 3
    fake.plan["Lisbon tram 28"] = [reply(body=b"not json")] * 3
    r = expand(fake, world, ["git rebase onto", "Lisbon tram 28", "kafka consumer lag "], "--retries", "2")
    assert r.exit_code == 1, r.output
    assert "git rebase onto -> error: HTTP 503: model is loading (gave up after 3 attempts)" in r.output
    assert "Lisbon tram 28 -> error: malformed reply: not JSON" in r.output
    assert fake.count("git rebase onto") == 3 and fake.count("Lisbon tram 28") == 3
    assert "errors 2 (" in r.output and "HTTP 503: 1" in r.output and "malformed reply: 1" in r.output
    assert "run the same command again" in r.output
    assert kept(world) == [] and rejected(world) == []  # errors are not rejections: a rerun asks again
    # (and "kafka consumer lag " was never asked: it is in the data dir, spelled differently)
    assert fake.count("kafka consumer lag") == 0 and "already in " in r.output

    r = expand(fake, world, ["git rebase onto", "Lisbon tram 28"])
    assert r.exit_code == 0, r.output
    assert [e.query for e in kept(world)] == ["git rebase onto", "Lisbon tram 28"]


def test_slow_reply_times_out_and_is_retried(fake, world):
    fake.plan["git rebase onto"] = [reply(delay=0.6)]
    start = time.monotonic()
    r = expand(fake, world, ["git rebase onto"], "--timeout", "0.2")
    assert r.exit_code == 0, r.output
    assert "no reply within 0.2s" in r.output and fake.count() == 2
    assert len(kept(world)) == 1 and time.monotonic() - start < 1.5


def test_401_stops_at_once_with_the_api_key_fix(fake, world):
    fake.always = error(401, "invalid api key")
    r = expand(fake, world, ["git rebase onto", "Lisbon tram 28"], "--api-key", "wrong")
    assert r.exit_code == 2
    assert "HTTP 401" in r.output and "invalid api key" in r.output and "QMD_TEACHER_API_KEY" in r.output
    assert fake.count() == 1  # not retried, and the second query is not tried
    assert fake.seen[0].headers["Authorization"] == "Bearer wrong"


def test_404_names_the_model_and_the_url(fake, world):
    fake.always = error(404, 'model "qwen9:1t" not found, try pulling it first')
    r = expand(fake, world, ["git rebase onto"], "--model", "qwen9:1t")
    assert r.exit_code == 2 and fake.count() == 1
    assert "not found, try pulling it first" in r.output and "ollama pull qwen9:1t" in r.output
    fake.always = None
    r = expand(fake, world, ["git rebase onto"], "--base-url", fake.url.removesuffix("/v1"), url=False)
    assert r.exit_code == 2 and "ends in /v1" in r.output and fake.seen[-1].path == "/chat/completions"


def test_other_4xx_is_an_error_for_that_query_only(fake, world):
    fake.plan["git rebase onto"] = [error(400, "context length exceeded")]
    r = expand(fake, world, ["git rebase onto", "Lisbon tram 28"])
    assert r.exit_code == 1
    assert "HTTP 400" in r.output and "context length exceeded" in r.output
    assert fake.count("git rebase onto") == 1 and [e.query for e in kept(world)] == ["Lisbon tram 28"]


def test_connection_refused_at_start_says_how_to_start_ollama(world):
    dead = FakeTeacher(url=f"http://127.0.0.1:{free_port()}/v1")
    r = expand(dead, world, ["git rebase onto"])
    assert r.exit_code == 2
    assert "cannot connect to" in r.output and "Connection refused" in r.output
    assert "ollama serve" in r.output and "--base-url" in r.output


def free_port():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_teacher_going_away_mid_run_is_retried_then_an_error(fake):
    t = teacher.Teacher(base_url=fake.url, retries=1, backoff=0, echo=lambda msg: None)
    assert t.chat([{"role": "user", "content": user_message("git rebase onto")}]).text == GOOD["git rebase onto"]
    fake.server.shutdown()
    fake.server.server_close()
    with pytest.raises(teacher.TeacherError, match="gave up after 2 attempts") as err:
        t.chat([{"role": "user", "content": user_message("git rebase onto")}])
    assert err.value.kind == "connection" and t.requests == 3


def test_many_failures_in_a_row_stop_the_run(tmp_path):
    t = teacher.Teacher(base_url=f"http://127.0.0.1:{free_port()}/v1", retries=0, reached=True, echo=lambda m: None)
    out = teacher.OutFile(tmp_path / "o.jsonl")
    items = [(f"query {i}", "x") for i in range(8)]
    with pytest.raises(teacher.FatalError, match="5 queries in a row failed"):
        teacher.expand_queries(t, items, out, {}, echo=lambda m: None)
    assert t.requests == teacher.MAX_CONSECUTIVE_ERRORS


def test_retry_after_header_sets_the_pause(fake, world):
    fake.plan["git rebase onto"] = [{**error(429, "rate limited"), "headers": {"Retry-After": "0.2"}}]
    r = expand(fake, world, ["git rebase onto"])
    assert r.exit_code == 0 and "retry 1/3 in 0.2s: HTTP 429: rate limited" in r.output


def test_bad_base_url_is_a_usage_error(world):
    r = invoke(["expand", world / "evals.txt", "--out", world / "o.jsonl", "--base-url", "localhost:11434/v1"])
    assert r.exit_code == 2 and "not an http(s) URL" in r.output


# ----------------------------------------------------------------------------
# Dedupe, resume, atomic output


def test_queries_in_data_evals_or_output_are_never_asked(fake, world):
    r = expand(fake, world, ["KAFKA consumer   lag", "Sourdough Hydration", "git rebase onto"])
    assert r.exit_code == 0, r.output
    assert [s.query for s in fake.seen] == ["git rebase onto"]
    assert "existing.jsonl:1" in r.output and "evals.txt (eval set)" in r.output
    assert "skipped 2" in r.output


def test_resume_after_a_fatal_error_asks_only_the_rest(fake, world):
    queries = ["git rebase onto", "Lisbon tram 28", "kafka streams"]
    fake.answers["kafka streams"] = GOOD["kafka consumer lag"].replace("consumer lag", "streams")
    fake.plan["Lisbon tram 28"] = [error(401, "key revoked")]
    r = expand(fake, world, queries)
    assert r.exit_code == 2 and "the same command resumes" in r.output
    assert [e.query for e in kept(world)] == ["git rebase onto"]
    before = (world / "data" / "new.jsonl").read_text()

    r = expand(fake, world, queries)
    assert r.exit_code == 0, r.output
    assert [s.query for s in fake.seen] == ["git rebase onto", "Lisbon tram 28", "Lisbon tram 28", "kafka streams"]
    assert "3 queries, 2 to ask" in r.output
    text = (world / "data" / "new.jsonl").read_text()
    assert text.startswith(before) and [e.query for e in kept(world)] == queries
    assert not list((world / "data").glob(".*tmp"))  # no temp files left behind

    r = expand(fake, world, queries)
    assert r.exit_code == 0 and fake.count() == 4  # everything done: no requests at all


def test_a_broken_output_file_is_refused_not_overwritten(fake, world):
    out = world / "data" / "new.jsonl"
    out.write_text('{"query": "x", "output": [["lex", "x y"]]}\n{broken\n')
    r = expand(fake, world, ["git rebase onto"])
    assert r.exit_code == 2 and "new.jsonl:2: not valid JSON" in r.output and "resume state" in r.output
    assert out.read_text().endswith("{broken\n") and fake.count() == 0


# ----------------------------------------------------------------------------
# propose


def propose(fake, world, *extra):
    args = ["propose", "--category", "devops", "--count", "2", "--out", world / "data" / "new.jsonl"]
    args += ["--data-dir", world / "data", "--evals", world / "evals.txt", "--backoff", "0", "--base-url", fake.url]
    return invoke(args + list(extra))


def test_propose_asks_for_new_queries_then_expands_them(fake, world):
    # Numbered, with a preamble, a duplicate of the data set and one of the eval set: only 2 are new.
    fake.answers[PROPOSE] = (
        "<think>ok</think>Here are some queries:\n1. Kafka consumer lag\n2. sourdough hydration\n"
        '3. "git rebase onto"\n- Lisbon tram 28\n- kafka streams\n'
    )
    r = propose(fake, world)
    assert r.exit_code == 0, r.output
    assert "proposed 2 new 'devops' queries (2/2)" in r.output
    assert [s.query for s in fake.seen] == [PROPOSE, "git rebase onto", "Lisbon tram 28"]
    assert "devops" in fake.seen[0].body["messages"][1]["content"]
    examples = kept(world)
    assert [e.query for e in examples] == ["git rebase onto", "Lisbon tram 28"]
    assert {e.category for e in examples} == {"devops"}
    proposed = world / "data" / "new.jsonl.proposed.txt"
    assert data.read_queries(proposed) == [("git rebase onto", "devops"), ("Lisbon tram 28", "devops")]

    r = propose(fake, world)  # resume: same queries, all done, no requests
    assert r.exit_code == 0, r.output
    assert fake.count() == 3


def test_propose_asks_again_until_it_has_enough(fake, world):
    fake.plan[PROPOSE] = [reply("Kafka consumer lag\ngit rebase onto"), reply("git rebase onto\nLisbon tram 28")]
    r = propose(fake, world)
    assert r.exit_code == 0, r.output
    assert fake.count(PROPOSE) == 2 and [e.query for e in kept(world)] == ["git rebase onto", "Lisbon tram 28"]


def test_parse_query_list_and_clean_answer():
    answer = "<think>hm</think>\nSure, here you go:\n```\n1) alpha beta\n* `gamma`\n\n10. delta\n```"
    assert teacher.parse_query_list(answer) == ["alpha beta", "gamma", "delta"]
    assert teacher.clean_answer("```text\nlex: a b\n```") == "lex: a b"
