// CPU threads for QMD's llama.cpp contexts: QMD_THREADS, default this machine's cores.
//
//   node --import ./threads.mjs node_modules/@tobilu/qmd/dist/cli/qmd.js query ...
//
// node-llama-cpp gives every CPU context max(4, cores) threads; on a 2-core machine the extra threads
// fight for the cores and decoding slows down several times. QMD has no option for it, so this
// preload gives LlamaModel.createContext a `threads` default (a caller's own value still wins).
// node-llama-cpp tests its native binary in a forked child that inherits `--import`: leave that child
// alone (loading node-llama-cpp inside its own binary test makes the test fail).
import { availableParallelism } from "node:os";

if (!(process.argv[1] ?? "").endsWith("testBindingBinary.js")) {
  const nlc = await import("node-llama-cpp");
  const threads = Number(process.env.QMD_THREADS || availableParallelism());
  const createContext = nlc.LlamaModel.prototype.createContext;
  nlc.LlamaModel.prototype.createContext = function (options = {}) {
    return createContext.call(this, { threads, ...options });
  };
}
