// One model session in a worker of its own (app.js starts one a core): the page hands it
// batches of decoded pixels and gets the graph's outputs back. Several of these run batches
// side by side, one thread each, which keeps every core busy with whole pictures where one
// session's threads would split each small convolution; one thread needs no cross-origin
// isolation, so this runs on any host.
//
// Messages in: {model: bytes, wasmPaths, threads, options} once, then {batch: Uint8Array, dims};
// out: {ready: true} or {error}, then for each batch {outputs: {name: data}} or {error}.

import * as ort from "./ort/ort.wasm.min.mjs";

let session = null;

async function create({ model, wasmPaths, threads, options }) {
  ort.env.wasm.wasmPaths = wasmPaths;
  ort.env.wasm.numThreads = threads;
  session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"], ...options });
  return { ready: true };
}

async function run({ batch, dims }) {
  const outputs = await session.run({ image: new ort.Tensor("uint8", batch, dims) });
  return { outputs: Object.fromEntries(Object.entries(outputs).map(([name, tensor]) => [name, tensor.data])) };
}

self.onmessage = async ({ data }) => {
  try {
    self.postMessage(await (data.model ? create(data) : run(data)));
  } catch (error) {
    self.postMessage({ error: String(error?.message || error).split("\n")[0] });
  }
};
