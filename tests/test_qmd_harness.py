"""The real QMD from `make qmd` runs in a sandbox: BM25 search and a structured lex query, no model."""

import qmd_harness


def _notes(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "auth.md").write_text("# Auth config\n\nThe authentication settings live in config/auth.yml.\n")
    (notes / "docker.md").write_text("# Docker networking\n\nContainers talk over a bridge network.\n")
    return notes


def test_qmd_searches_a_sandboxed_collection(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")  # QMD refuses LLM calls under CI; the sandbox removes it for QMD only
    with qmd_harness.Sandbox(folder=tmp_path / "sandbox") as qmd:
        qmd.run("collection", "add", _notes(tmp_path), "--name", "notes")
        hits = qmd.json("search", "bridge network")
        assert [h["file"] for h in hits] == ["qmd://notes/docker.md"]
        # a structured query of lex lines needs no model (no expansion, no embeddings, no reranker)
        hits = qmd.json("query", "lex: authentication\nlex: auth.yml", "--no-rerank", timeout=120)
        assert hits and hits[0]["file"] == "qmd://notes/auth.md"
        assert "CI" not in qmd.env()
    assert (tmp_path / "sandbox" / "config" / "index.yml").read_text().count(".gguf") == 3


def test_sandbox_is_removed_unless_kept():
    with qmd_harness.Sandbox() as qmd:
        folder = qmd.folder
        assert (folder / "config" / "index.yml").exists()
    assert not folder.exists()
