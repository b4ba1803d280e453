// QMD's own private helpers from the installed dist/store.js, run on given inputs (tests only).
//
//   node store_fns.mjs < calls.jsonl > results.jsonl
//
// buildFTS5Query, extractTitle and chunkDocument are not exported by QMD, so their source text (and
// that of the helpers and constants they use) is cut out of store.js as it is installed and
// evaluated on its own: the test compares retrieval.py with QMD's code, not with a copy of it.
// stdin lines: {"fn": "buildFTS5Query", "args": [...]}; stdout: {"result": ...} or {"error": "..."}.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const src = readFileSync(path.join(here, "node_modules", "@tobilu", "qmd", "dist", "store.js"), "utf8");

function grab(name) {
  const m = new RegExp(`^(?:export )?(?:const ${name} =|function ${name}\\()`, "m").exec(src);
  if (!m) throw new Error(`store.js has no ${name}`);
  const start = m.index;
  const lineEnd = src.indexOf("\n", start);
  const first = src.slice(start, lineEnd);
  let end;
  if (/function /.test(first)) end = src.indexOf("\n}\n", start) + 2;
  else if (/[[{]\s*$/.test(first)) end = src.indexOf("\n", src.indexOf(/\[\s*$/.test(first) ? "\n];" : "\n};", start) + 1);
  else end = lineEnd;
  return src.slice(start, end).replace(/^export /, "");
}

const names = [
  "CHUNK_SIZE_TOKENS", "CHUNK_OVERLAP_TOKENS", "CHUNK_SIZE_CHARS", "CHUNK_OVERLAP_CHARS", "CHUNK_WINDOW_TOKENS",
  "CHUNK_WINDOW_CHARS", "CJK_CHAR_PATTERN", "CJK_RUN_PATTERN", "normalizeCjkForFTS", "containsCjk",
  "sanitizeFTS5Phrase", "sanitizeFTS5Term", "isHyphenatedToken", "sanitizeHyphenatedTerm", "isDottedToken",
  "sanitizeDottedTerm", "buildFTS5Query", "titleExtractors", "extractTitle", "BREAK_PATTERNS", "scanBreakPoints",
  "findCodeFences", "isInsideCodeFence", "findBestCutoff", "isSurrogatePairBoundary", "adjustSurrogateBoundary",
  "chunkDocumentWithBreakPoints", "chunkDocument",
];
const fns = new Function(names.map(grab).join("\n") + "\nreturn { buildFTS5Query, extractTitle, chunkDocument };")();

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (!line.trim()) continue;
  const { fn, args } = JSON.parse(line);
  try {
    process.stdout.write(JSON.stringify({ result: fns[fn](...args) ?? null }) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ error: String(err?.message ?? err) }) + "\n");
  }
}
