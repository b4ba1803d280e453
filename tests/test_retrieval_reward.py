"""corpus_queries.py and retrieval_reward.py: label-free queries split by document, the gated
retrieval reward, and `grpo.py --reward retrieval --corpus DIR` on the tiny model."""

import json

import pytest
import yaml
from click.testing import CliRunner

import corpus_queries as cq
import grpo
import retrieval
import retrieval_reward as rr
import train

NOTES = {
    "garden/tomatoes.md": "# Growing tomatoes on the balcony\n\nWater the tomato plants every morning in summer. "
    "Pinch the side shoots so the plant puts its energy into fruit.\n\n## Blight on the leaves\n\nBrown leaf spots mean "
    "blight: remove the infected leaves and keep the foliage dry.\n",
    "garden/compost.md": "# Compost heap\n\nMix green kitchen scraps with brown cardboard and dry leaves. "
    "Turn the heap every two weeks so the bacteria get oxygen.\n\n## Bad smell from the heap\n\nA rotten smell means too much "
    "nitrogen and too little air.\n",
    "work/standup.md": "# Standup with Priya and Marco\n\nPriya finished the billing migration. Marco is blocked "
    "on the staging database credentials and asked the platform team.\n\n## Action items\n\nRotate the staging "
    "password before Friday.\n",
    "work/oncall.md": "# On-call handbook\n\nPage the secondary engineer when the primary does not acknowledge "
    "within fifteen minutes. Write the incident timeline in the shared document.\n",
    "home/boiler.md": "# Boiler service\n\nThe heating engineer replaced the pressure valve in October. "
    "Top the system pressure up to 1.5 bar when the gauge drops below one.\n",
    "home/insurance.md": "# Home insurance renewal\n\nThe policy renews in March. Compare quotes from three "
    "brokers and check the excess on water damage claims.\n",
}


def write_corpus(folder, notes=NOTES):
    for rel, text in notes.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return folder


def test_queries_are_deterministic_tied_to_their_page_and_split_by_document(tmp_path):
    corpus = write_corpus(tmp_path / "notes")
    a = cq.build_queries(corpus, seed=0, heldout=0.34)
    b = cq.build_queries(corpus, seed=0, heldout=0.34)
    assert [q.record() for q in a["train"] + a["heldout"]] == [q.record() for q in b["train"] + b["heldout"]]
    train_docs, held_docs = set(a["docs"]["train"]), set(a["docs"]["heldout"])
    assert held_docs and train_docs and not train_docs & held_docs and train_docs | held_docs == set(NOTES)
    assert {q.doc for q in a["train"]} <= train_docs and {q.doc for q in a["heldout"]} <= held_docs
    for q in a["train"] + a["heldout"]:
        # every word of a query is its page's (or a paraphrase of one, or a question word)
        page = set(cq.words_of(NOTES[q.doc])) | set(" ".join(cq.PARAPHRASES.values()).split())
        assert set(q.query.split()) - {"how", "to", "what", "is"} <= page, q
        assert q.record()["relevant"] == {q.doc: 1}
    other = cq.build_queries(corpus, seed=1, heldout=0.34)
    assert [q.query for q in other["train"]] != [q.query for q in a["train"]]


def test_engine_filter_drops_strong_signal_queries_and_prefers_hard_ones(tmp_path):
    corpus = write_corpus(tmp_path / "notes")
    engine = retrieval.Engine(corpus, vectors=False)
    plain = cq.build_queries(corpus, per_doc=100, heldout=0.34)
    all_q = plain["train"] + plain["heldout"]
    assert any(engine.strong_signal(q.query) for q in all_q)  # the filter has something to drop
    built = cq.build_queries(corpus, per_doc=2, heldout=0.34, engine=engine)
    kept = built["train"] + built["heldout"]
    assert kept and not any(engine.strong_signal(q.query) for q in kept)
    for q in kept:
        assert q.none_ndcg == engine.score(q.query, None, {q.doc: 1})
        if q.none_ndcg >= 1.0:  # an easy query is kept only when its page has no second hard one
            hard = [c for c in all_q if c.doc == q.doc and not engine.strong_signal(c.query)]
            assert sum(engine.score(c.query, None, {c.doc: 1}) < 1.0 for c in hard) <= 1


def test_split_documents_holds_out_whole_documents():
    paths = [f"d{i}.md" for i in range(10)]
    train, held = cq.split_documents(paths, 0.2, seed=3)
    assert len(held) == 2 and sorted(train + held) == paths and not set(train) & set(held)
    assert cq.split_documents(paths, 0.2, seed=3) == (train, held)
    assert cq.split_documents(paths, 0.0) == (paths, [])
    with pytest.raises(cq.CorpusError, match="at least 2"):
        cq.split_documents(["one.md"], 0.2)


def test_long_lines_lose_part_of_their_phrasing():
    """A query keeps at most 4 content words of its line, so a sentence is never copied whole (a short
    title or heading may be: "Compost heap" is already a query)."""
    corpus = [retrieval.Doc(p, "", t, "") for p, t in NOTES.items()]
    found = cq.candidates(corpus, seed=0)
    assert {q.kind for q in found} == {"title", "heading", "sentence"}
    for q in found:
        assert len([w for w in q.query.split() if w not in ("how", "to", "what", "is")]) <= 4
        if q.kind == "sentence":  # fewer content words than the sentence has
            assert len(cq.words_of(q.query)) < len(cq.words_of(q.source)), q


def test_eval_queries_are_never_produced(tmp_path, monkeypatch):
    corpus = [retrieval.Doc(p, "", t, "") for p, t in NOTES.items()]
    produced = [q.query for q in cq.candidates(corpus, seed=0)]
    monkeypatch.setattr(cq, "_excluded", lambda: {produced[0].lower()})
    assert produced[0] not in [q.query for q in cq.candidates(corpus, seed=0)]
    monkeypatch.undo()
    notes_queries = [json.loads(x)["query"].lower() for x in open("evals/retrieval/notes.jsonl") if x.strip()]
    assert set(notes_queries) <= cq._excluded()


def test_missing_and_empty_corpus_are_clear_errors(tmp_path):
    with pytest.raises(cq.CorpusError, match="no such corpus folder"):
        cq.build_queries(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.md").write_text("  \n")
    with pytest.raises(cq.CorpusError, match="no markdown files"):
        cq.build_queries(tmp_path / "empty")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.md").write_text("```\nonly code here\n```\n")
    with pytest.raises(cq.CorpusError, match="gave a query"):
        cq.build_queries(tmp_path / "code")
    r = CliRunner().invoke(cq.cli, [str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "no such corpus folder" in r.output


def test_cli_writes_train_and_heldout_in_eval_retrieval_format(tmp_path):
    corpus = write_corpus(tmp_path / "notes")
    r = CliRunner().invoke(cq.cli, [str(corpus), "-o", str(tmp_path / "q"), "--no-vectors", "--heldout", "0.34"])
    assert r.exit_code == 0, r.output
    import eval_retrieval

    docs = [d.path for d in retrieval.read_corpus(corpus)]
    train = eval_retrieval.read_retrieval_queries(tmp_path / "q" / "train.jsonl", docs)
    held = eval_retrieval.read_retrieval_queries(tmp_path / "q" / "heldout.jsonl", docs)
    assert train and held
    assert not {p for q in train for p in q["relevant"]} & {p for q in held for p in q["relevant"]}


# ----------------------------------------------------------------------------
# The reward


@pytest.fixture(scope="module")
def notes_reward():
    engine = retrieval.Engine("evals/notes", vectors=False)
    query = "docker using too much disk"
    return rr.RetrievalReward(engine, {query: {"docker-prune.md": 1}}, rubric_weight=0.3), query


def test_an_expansion_that_finds_the_page_beats_one_that_does_not(notes_reward):
    fn, query = notes_reward
    finds = (
        "lex: docker container volumes prune\nlex: docker disk space images\n"
        "vec: how to free disk space used by docker images and containers\n"
        "hyde: Run docker system prune to remove stopped containers and unused images.\n"
    )
    misses = (
        "lex: docker disk quota\nlex: docker using disk partition\n"
        "vec: how much disk does docker need for installation\n"
        "hyde: Docker needs about 10 GB of disk for a basic installation.\n"
    )
    p_find, p_miss = fn.parts(query, finds), fn.parts(query, misses)
    assert not p_find["gated"] and not p_miss["gated"]
    assert p_find["search"] > p_miss["search"]
    assert fn(query, finds)[0] > fn(query, misses)[0]
    assert fn(query, finds) == (pytest.approx(0.7 * p_find["search"] + 0.3 * p_find["rubric"]), True)


def test_malformed_invalid_and_truncated_completions_score_zero(notes_reward):
    fn, query = notes_reward
    good = "lex: docker container volumes prune\nvec: how to free disk space used by docker images\n"
    assert fn(query, good)[0] > 0
    assert fn(query, good, truncated=True) == (0.0, False)
    assert fn(query, "Sure! Here is an expansion of your docker query.") == (0.0, False)
    assert fn(query, "lex: docker container volumes prune\n")[0] == 0.0  # no vec line: QMD-unusable
    with pytest.raises(KeyError, match="not a query of this reward"):
        fn("some other query", good)


def test_prepare_embeds_a_steps_vec_and_hyde_lines_in_one_batch():
    class Counting:
        def __init__(self):
            self.batches = []

        def queries(self, texts):
            self.batches.append(list(texts))

    class FakeEngine:
        embedder = Counting()

        def embed_ahead(self, texts):
            self.embedder.queries(sorted(set(texts)))

    fn = rr.RetrievalReward(FakeEngine(), {"auth config": {"a.md": 1}})
    good = "lex: auth config file\nvec: where is the auth config\nhyde: The auth config is in x."
    cut = "lex: auth config file\nvec: how the auth config is loaded\nhyde: The auth config lives"
    no_vec = "lex: auth config file\nhyde: An auth config example."
    fn.prepare([("auth config", good)] * 3 + [("auth config", cut, True), ("auth config", no_vec, False)])
    # the truncated and the format-invalid completions score 0 unsearched: their lines are not embedded
    assert FakeEngine.embedder.batches == [["The auth config is in x.", "where is the auth config"]]
    assert fn.gated("auth config", cut, True) and fn.gated("auth config", no_vec) and not fn.gated("auth config", cut)


# ----------------------------------------------------------------------------
# grpo.py --reward retrieval --corpus DIR


@pytest.fixture(scope="module")
def tiny_sft(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("retreward")
    data = root / "data"
    data.mkdir()
    rows = [
        json.dumps(
            {"query": f"garden note {i}", "output": [["lex", f"garden note {i}"], ["vec", f"my garden note {i}"]]}
        )
        for i in range(20)
    ]
    (data / "d.jsonl").write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(
        train.cli,
        ["sft", "--model", str(tiny_model_path), "--data", str(data), "--adapter-path", str(root / "sft"), "--iters", "1",
         "--batch-size", "2", "--grad-accumulation-steps", "1", "--steps-per-report", "1", "--steps-per-eval", "100",
         "--max-seq-length", "128", "--rank", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.slow
def test_grpo_cli_trains_one_step_on_the_corpus_queries(tiny_sft, monkeypatch):
    root = tiny_sft
    corpus = write_corpus(root / "notes")
    cfg = root / "retrieval.yaml"
    cfg.write_text(
        "reward: retrieval\nretrieval_vectors: false\ncorpus_heldout: 0.34\nrubric_weight: 0.5\n"
        "batch_size: 2\ngroup_size: 2\nmax_completion_tokens: 8\neval_queries: 2\neval_max_tokens: 8\nwarmup_steps: 0\n"
    )
    seen = []
    parts = rr.RetrievalReward.parts

    def recording(self, query, text, truncated=False):
        seen.append(query)
        return parts(self, query, text, truncated)

    monkeypatch.setattr(rr.RetrievalReward, "parts", recording)
    out = root / "grpo-ret"
    args = ["--config", str(cfg), "--corpus", str(corpus), "--sft-adapter", str(root / "sft"), "--adapter-path",
            str(out), "--steps", "1"]  # fmt: skip
    r = CliRunner().invoke(grpo.cli, args)
    assert r.exit_code == 0, r.output
    assert "retrieval reward:" in r.output and "training queries" in r.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["reward"] == "retrieval" and saved["corpus"] == str(corpus) and saved["rubric_weight"] == 0.5
    train_q = [json.loads(x) for x in (out / "corpus-train.jsonl").read_text().splitlines()]
    held_q = [json.loads(x) for x in (out / "corpus-heldout.jsonl").read_text().splitlines()]
    assert train_q and held_q
    assert len(seen) == 4 and set(seen) <= {q["query"] for q in train_q}  # B x G rollouts, training queries only
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"reward_mean"' in x]
    assert [s["step"] for s in steps] == [1]
    # an output folder inside the corpus would be indexed by the next run: refused
    r = CliRunner().invoke(grpo.cli, [*args[:-4], "--adapter-path", str(corpus / "run"), "--steps", "1"])
    assert r.exit_code == 2 and "corpus" in r.output
    for bad, why in [(root / "nowhere", "no such corpus folder"), (None, "needs a corpus folder")]:
        more = ["--corpus", str(bad)] if bad else []
        r = CliRunner().invoke(grpo.cli, ["--reward", "retrieval", *more, "--sft-adapter", str(root / "sft"),
                                          "--adapter-path", str(root / "bad")])  # fmt: skip
        assert r.exit_code == 2 and why in r.output, r.output


def test_reward_keys_are_checked_before_anything_loads(tmp_path):
    r = CliRunner().invoke(
        grpo.cli, ["--reward", "retrieval", "--rubric-weight", "1.5", "--sft-adapter", str(tmp_path)]
    )
    assert r.exit_code == 2 and "rubric_weight" in r.output
    cfg = tmp_path / "g.yaml"
    cfg.write_text("retrieval_metric: map\n")
    r = CliRunner().invoke(grpo.cli, ["--config", str(cfg), "--sft-adapter", str(tmp_path)])
    assert r.exit_code == 2 and "retrieval_metric" in r.output


def test_retrieval_demo_config_is_valid_and_holds_only_what_differs():
    import runtime

    path = runtime.Path(grpo.__file__).parent / "configs" / "grpo-demo-retrieval.yaml"
    values = yaml.safe_load(path.read_text())
    assert values["reward"] == "retrieval" and values["corpus"]
    assert not [k for k, v in values.items() if grpo.GRPO_DEFAULTS[k] == v]
    runtime.check_config({**grpo.GRPO_DEFAULTS, **values}, grpo.GRPO_SCHEMA)
