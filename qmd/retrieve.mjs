// The real QMD's search with given expansions, recorded: what eval_retrieval.py's `qmd` engine measures.
//
//   INDEX_PATH=.../index.sqlite node retrieve.mjs COLLECTION < requests.jsonl > results.jsonl
//
// The index is QMD's own (`qmd collection add` in a sandbox, qmd_harness.Sandbox). stdin: one JSON object
// per line: {query, expansion: [{type, query}], mode: "hybrid" | "structured", limit}. stdout, one per
// request: {files: [paths relative to the collection], strong_signal, error}.
//
// mode "hybrid" is `qmd query QUERY --no-rerank`: QMD's hybridQuery (BM25 probe, strong-signal skip,
// original-query lists at weight 2, expansion lists at 1, RRF, first 40 candidates) with QMD's
// expandQuery answered by the given lines - the lines QMD's model would have produced (after QMD's
// query-word filter, fallbacks and equal-to-query drop, which the caller applies). Nothing of QMD is
// changed; only the store's expandQuery is answered by the caller, as QMD's expansion cache would.
// mode "structured" is `qmd query $'lex: QUERY\nlex: ...' --no-rerank`: QMD's structuredSearch on the
// original query as the first lex line (weight 2) followed by the expansion lines (weight 1).
// Offline there is no embedding model, so vec/hyde lines find nothing (no vectors table): BM25 + lex.
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const qmdDist = path.join(here, "node_modules", "@tobilu", "qmd", "dist");
const { createStore, hybridQuery, structuredSearch } = await import(pathToFileURL(path.join(qmdDist, "store.js")).href);

const collection = process.argv[2];
const dbPath = process.env.INDEX_PATH;
if (!collection || !dbPath) {
  console.error("usage: INDEX_PATH=index.sqlite node retrieve.mjs COLLECTION < requests.jsonl");
  process.exit(2);
}
const store = createStore(dbPath);
const prefix = `qmd://${collection}/`;
const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
let status = 0;
try {
  for await (const line of input) {
    if (!line.trim()) continue;
    const { query, expansion = [], mode = "hybrid", limit = 10 } = JSON.parse(line);
    const out = { files: [], strong_signal: false, error: null };
    try {
      let results;
      if (mode === "structured") {
        const searches = [{ type: "lex", query }, ...expansion];
        results = await structuredSearch(store, searches, { collections: [collection], limit, skipRerank: true });
      } else {
        store.expandQuery = async () => expansion.map((e) => ({ type: e.type, query: e.query }));
        results = await hybridQuery(store, query, {
          collection,
          limit,
          skipRerank: true,
          hooks: { onStrongSignal: () => (out.strong_signal = true) },
        });
      }
      out.files = results.map((r) => (r.file.startsWith(prefix) ? r.file.slice(prefix.length) : r.file));
    } catch (err) {
      out.error = String(err?.message ?? err);
    }
    process.stdout.write(JSON.stringify(out) + "\n");
  }
} catch (err) {
  console.error(`retrieve.mjs: ${err?.stack ?? err}`);
  status = 1;
} finally {
  store.close();
}
process.exit(status);
