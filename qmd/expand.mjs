// QMD's own query expansion, run on a GGUF and recorded: what eval.py --qmd and the tests measure.
//
//   node expand.mjs MODEL.gguf < queries.jsonl > expansions.jsonl
//
// stdin: one JSON object per line with "query". stdout: one JSON object per query:
//   {query, text, queryables, fallback, error, prompt_ids, completion_tokens, stop_reason, chat_wrapper,
//    seconds}
//
// It calls QMD's real LlamaCpp.expandQuery (QMD 2.8.3, dist/llm.js), so the prompt, chat wrapper,
// default system prompt, grammar, sampling, query-word filter and fallbacks are QMD's own. Three
// things are observed by wrapping node-llama-cpp's classes, not changed:
//   * prompt_ids: the tokens of the first evaluation of the context sequence - the prompt exactly as
//     node-llama-cpp rendered and tokenized it for this GGUF;
//   * text / stop_reason / completion_tokens: the raw completion before QMD parses and filters it
//     (LlamaChatSession.promptWithMeta, which QMD's session.prompt calls);
//   * error: the exception QMD catches and logs before its fallback ("Structured query expansion failed").
// One thing is changed: the CPU threads of each context (threads.mjs: QMD_THREADS, default the cores).
// QMD_EXPAND_PROMPT_ONLY=1 stops each query right after recording its prompt (no generation).
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const qmdDist = path.join(here, "node_modules", "@tobilu", "qmd", "dist");
await import("./threads.mjs"); // QMD_THREADS, see there
const { LlamaCpp } = await import(pathToFileURL(path.join(qmdDist, "llm.js")).href);
const nlc = await import("node-llama-cpp");

const modelPath = process.argv[2];
if (!modelPath) {
  console.error("usage: node expand.mjs MODEL.gguf < queries.jsonl");
  process.exit(2);
}
const promptOnly = process.env.QMD_EXPAND_PROMPT_ONLY === "1";

// ---------------------------------------------------------------------------
// Observation hooks (one query at a time, so a single "current" record is enough)

let current = null;
class PromptRecorded extends Error {}

const evaluate = nlc.LlamaContextSequence.prototype._evaluate;
nlc.LlamaContextSequence.prototype._evaluate = function (tokens, ...rest) {
  if (current && current.prompt_ids === null) {
    current.prompt_ids = Array.from(tokens, Number);
    if (promptOnly) {
      current.chat_wrapper = current.session?.chatWrapper?.wrapperName ?? null;
      throw new PromptRecorded("prompt recorded");
    }
  }
  return evaluate.call(this, tokens, ...rest);
};

const promptWithMeta = nlc.LlamaChatSession.prototype.promptWithMeta;
nlc.LlamaChatSession.prototype.promptWithMeta = async function (text, options) {
  if (current) current.session = this;
  const meta = await promptWithMeta.call(this, text, options);
  if (current) {
    current.text = meta.responseText;
    current.stop_reason = meta.stopReason ?? null;
    current.chat_wrapper = this.chatWrapper?.wrapperName ?? null;
    current.completion_tokens = this.model.tokenize(meta.responseText).length;
  }
  return meta;
};

const consoleError = console.error;
console.error = (...args) => {
  if (current && typeof args[0] === "string" && args[0].startsWith("Structured query expansion failed")) {
    const err = args[1];
    current.error = err instanceof PromptRecorded ? null : String(err?.message ?? err);
    return;
  }
  consoleError(...args);
};

// ---------------------------------------------------------------------------
// Run

const llm = new LlamaCpp({ generateModel: modelPath, embedModel: modelPath, rerankModel: modelPath });
const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
let status = 0;
try {
  for await (const line of input) {
    if (!line.trim()) continue;
    const { query } = JSON.parse(line);
    current = { query, text: null, queryables: null, fallback: false, error: null, prompt_ids: null,
                completion_tokens: 0, stop_reason: null, chat_wrapper: null, seconds: 0 };
    const start = performance.now();
    const queryables = await llm.expandQuery(query);
    current.seconds = (performance.now() - start) / 1000;
    current.queryables = queryables;
    // QMD's two fallbacks, recognised by their shape: every line filtered (hyde "Information about q")
    // or an exception (lex/vec = the query). Neither can come from a model line that survived.
    current.fallback =
      current.error !== null ||
      (queryables.length > 0 && queryables[0].type === "hyde" && queryables[0].text === `Information about ${query}`);
    delete current.session;
    process.stdout.write(JSON.stringify(current) + "\n");
    current = null;
  }
} catch (err) {
  consoleError(`expand.mjs: ${err?.stack ?? err}`);
  status = 1;
} finally {
  await llm.dispose();
}
process.exit(status);
