// Does node-llama-cpp apply the presence penalty QMD asks for? Greedy completions of one prompt under
// three repeatPenalty settings, as JSON on stdout (tests/test_qmd_parity.py reads it):
//   none:          repeatPenalty false (no penalty at all)
//   qmd:           QMD 2.8.3's expandQuery setting, {lastTokens: 64, presencePenalty: 0.5}, here with a
//                  presence penalty of 50 so that an applied penalty must change a greedy completion
//   penalty_set:   the same with `penalty` (the repeat penalty) a hair above 1, which QMD leaves unset
//
//   node penalty_probe.mjs MODEL.gguf "prompt text"
import { getLlama, LlamaChatSession } from "node-llama-cpp";

const [modelPath, text] = process.argv.slice(2);
const llama = await getLlama({ gpu: false });
const model = await llama.loadModel({ modelPath });

async function complete(repeatPenalty) {
  const context = await model.createContext({ contextSize: 512, threads: 2 });
  const session = new LlamaChatSession({ contextSequence: context.getSequence() });
  const out = await session.prompt(text, { maxTokens: 24, temperature: 0, repeatPenalty });
  await context.dispose();
  return out;
}

const result = {
  none: await complete(false),
  qmd: await complete({ lastTokens: 64, presencePenalty: 50 }),
  penalty_set: await complete({ lastTokens: 64, presencePenalty: 50, penalty: 1.0000001 }),
};
process.stdout.write(JSON.stringify(result) + "\n");
