// The page's whole logic: read the sidecar, check it describes the model file, load the
// portable model (uint8 RGB pixels in, calibrated probabilities and the open-set score out) on
// WebGPU where the browser has it and otherwise on WebAssembly, in a worker a core, then
// classify the pictures the user drops: the browser decodes each and draws the square the
// model looks at, the graph does the rest, a batch of pictures a run. Asked for more than one
// thread a session, the page makes itself cross-origin isolated first (sw.js).
//
// Query parameters, for measuring: ?backend=wasm skips WebGPU; ?workers=N sets the model's
// workers (0: the page's own thread, as the page ran before it used workers); ?threads=N the
// WebAssembly threads of each session.

const SIDECAR = "model.portable.json";
const WASM = "ort.wasm.min.mjs"; // onnxruntime-web's WebAssembly-only build
const TOP = 3;
const BATCH = 16; // pictures per model run (the first runs alone: a quick first answer)
const LOOKAHEAD = 2 * BATCH; // pictures decoding ahead of the model, for each model worker
const MAX_WORKERS = 4; // model workers on a machine with more cores (each holds the model)
// Idle WASM threads sleep rather than spin: the browser decodes the next pictures meanwhile.
const SLEEPING = { extra: { session: { intra_op: { allow_spinning: "0" } } } };
const RELOADED = "simpsons.isolation-reload"; // sessionStorage: when the page was first opened, set before reloading itself
const params = new URLSearchParams(location.search);

// What tests and curious people can read: readiness, one result per picture, timing, backend.
const state = (window.simpsons = {
  ready: false, error: null, results: [], seconds: 0, backend: null, workers: null, threads: null, cores: navigator.hardwareConcurrency,
  isolated: self.crossOriginIsolated, isolation: null, note: null, timings: {},
});
const $ = (id) => document.getElementById(id);

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
  if (isError) state.error = text;
}

// When the page was opened, in ms since the epoch: before the isolation reload, if there was one.
const reloaded = sessionStorage.getItem(RELOADED);
sessionStorage.removeItem(RELOADED);
const opened = Number(reloaded) || performance.timeOrigin;
const since = (start) => (performance.timeOrigin + performance.now() - start) / 1000;

// Cross-origin isolation where it is wanted, or why not (null: isolated, or not wanted). Only a
// session on more than one thread needs it (?threads=N, or the model on the page's thread,
// which takes every core): the default workers run one thread each, so the page does not
// reload for them. Not isolated yet: register sw.js, which adds the headers, and reload once
// through it (never twice in a row: a host that strips the headers again, or a browser
// without service workers, gets one thread instead of a reload loop).
async function isolate(reloadedAlready) {
  if (self.crossOriginIsolated || (workerCount() && !(asked("threads", 0) > 1))) return null;
  if (!self.isSecureContext || !("serviceWorker" in navigator)) return "no service worker here (needs https or localhost)";
  if (reloadedAlready) return "still not cross-origin isolated after the service worker's reload";
  try {
    await navigator.serviceWorker.register("sw.js");
    await navigator.serviceWorker.ready;
  } catch (error) {
    return `the service worker did not start (${error.message})`;
  }
  sessionStorage.setItem(RELOADED, String(opened));
  location.reload();
  return new Promise(() => {}); // the page is going away
}

// Why WebGPU is not tried, or null when it is: asked for off, absent, or no adapter.
async function webgpuMissing() {
  if (params.get("backend") === "wasm") return "WebGPU off (?backend=wasm)";
  if (!navigator.gpu) return "no WebGPU in this browser";
  try {
    return (await navigator.gpu.requestAdapter()) ? null : "WebGPU has no adapter here";
  } catch (error) {
    return `WebGPU adapter failed (${error.message})`;
  }
}

// onnxruntime-web from the page's own folder; its builds are SIMD-only. On the page's thread
// (?workers=0) WebAssembly runs on every core, which needs cross-origin isolation (the browser
// allows no threads otherwise); ?threads=N sets the threads.
async function runtime(file) {
  const ort = await import(`./ort/${file}`);
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  ort.env.wasm.numThreads = threads(navigator.hardwareConcurrency || 1);
  return ort;
}

// WebAssembly threads a session, as asked (?threads=N) and allowed (one, unless isolated).
function threads(fallback) {
  return self.crossOriginIsolated ? Math.min(navigator.hardwareConcurrency || 1, asked("threads", 0) || fallback) : 1;
}

// A whole number from the query, at least ``least``, or null where absent or not a number.
function asked(name, least) {
  const text = params.get(name);
  const value = text ? Number(text) : NaN;
  return Number.isFinite(value) ? Math.max(least, Math.floor(value)) : null;
}

// By default the model runs in workers of its own (model-worker.js), one a core and one thread
// each, each taking whole batches: on small pictures that keeps every core busy where one
// session's threads split each small convolution and wait on each other (measured:
// bench/bench_web.py), and it needs no cross-origin isolation. The page's thread only reads,
// decodes and draws. At most MAX_WORKERS: each holds its own copy of the model and of
// WebAssembly's memory. ?workers=N sets their number (up to that bound or the cores, whichever
// is more), ?workers=0 runs the model on the page's thread.
function workerCount() {
  const cores = navigator.hardwareConcurrency || 1;
  const wanted = asked("workers", 0);
  return wanted === null ? Math.min(MAX_WORKERS, cores) : Math.min(wanted, Math.max(MAX_WORKERS, cores));
}

// Sessions in ``count`` workers, behind one ``run`` that hands each batch to a free worker and
// answers as a session's run does.
async function workerSessions(bytes, count) {
  const url = new URL("./model-worker.js", import.meta.url);
  const workers = Array.from({ length: count }, () => new Worker(url, { type: "module" }));
  const ask = (worker, message, transfer = []) => new Promise((resolve, reject) => {
    worker.onmessage = ({ data }) => (data.error ? reject(new Error(data.error)) : resolve(data));
    worker.onerror = (event) => reject(new Error(event.message || "the model's worker did not start"));
    worker.postMessage(message, transfer);
  });
  const setup = { model: bytes, wasmPaths: new URL("./ort/", import.meta.url).href, threads: threads(1), options: SLEEPING };
  const idle = [];
  const waiting = [];
  const free = (worker) => (waiting.length ? waiting.shift()(worker) : idle.push(worker));
  // The sessions are created side by side; the page is ready with the first, the others join
  // as they come, and one that fails is left out (the rest take its batches). Only when none
  // starts is the model unusable.
  const starting = workers.map((worker) => ask(worker, setup).then(() => free(worker)));
  starting.forEach((started, i) => started.catch(() => workers[i].terminate()));
  try {
    await Promise.any(starting);
  } catch (error) {
    throw error.errors[0];
  }
  return {
    async run({ image }) {
      const worker = idle.pop() ?? (await new Promise((resolve) => waiting.push(resolve)));
      try {
        const { outputs } = await ask(worker, { batch: image.data, dims: image.dims }, [image.data.buffer]);
        return Object.fromEntries(Object.entries(outputs).map(([name, data]) => [name, { data }]));
      } finally {
        free(worker);
      }
    },
    release: () => workers.forEach((worker) => worker.terminate()),
  };
}

// An inference session on WebGPU when the browser has it, else on WebAssembly. WebGPU must
// also answer a first, blank picture: a GPU can fail at creating the session or at its first
// run (a kernel it lacks, a lost device), and either falls back to WebAssembly, saying why.
async function session(bytes, meta) {
  let note = await webgpuMissing();
  if (!note) {
    try {
      const ort = await runtime("ort.webgpu.min.mjs");
      const created = await ort.InferenceSession.create(bytes, { executionProviders: ["webgpu"], ...SLEEPING });
      const side = meta.preprocessing.resize_size;
      await created.run({ image: new ort.Tensor("uint8", new Uint8Array(side * side * 3), [1, side, side, 3]) });
      return { ort, backend: "webgpu", note, workers: 0, threads: null, session: created };
    } catch (error) {
      note = `WebGPU failed (${String(error?.message || error).split("\n")[0]}), using WebAssembly`;
    }
  }
  const workers = workerCount();
  if (workers) return { ort: null, backend: "wasm", note, workers, threads: threads(1), session: await workerSessions(bytes, workers) };
  const ort = await runtime(WASM);
  const created = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], ...SLEEPING });
  return { ort, backend: "wasm", note, workers, threads: ort.env.wasm.numThreads, session: created };
}

async function sha256(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// The sidecar and the model it names; the checksum is computed while the session is created,
// since both take a while and neither needs the other.
async function loadModel() {
  const response = await fetch(SIDECAR);
  if (!response.ok) throw new Error(`${SIDECAR} not found beside the page: the model has no sidecar (rebuild with make web)`);
  const meta = await response.json();
  if (meta.inputs?.[0]?.dtype !== "uint8") throw new Error(`${meta.model_file} is not a portable model (its input is not uint8 pixels)`);
  const modelResponse = await fetch(meta.model_file);
  if (!modelResponse.ok) throw new Error(`${meta.model_file} (named by ${SIDECAR}) not found beside the page`);
  const bytes = new Uint8Array(await modelResponse.arrayBuffer());
  state.timings.model_fetched_s = since(opened);
  const creating = session(bytes, meta);
  if ((await sha256(bytes)) !== meta.sha256) {
    creating.then((created) => created.session.release(), () => {});
    throw new Error(`${SIDECAR} does not describe ${meta.model_file}: its sha256 differs (copy the matching pair)`);
  }
  const created = await creating;
  state.timings.session_created_s = since(opened);
  return { meta, ...created };
}

// Python's round() (half to even), as the crop offsets in runtime.preprocess and the graph.
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 ? r - 1 : r;
}

// The part of a width x height picture the model sees, as the Python runtime hands it to the
// portable graph (runtime.preprocess.square): the shorter side resized to resize_size, the
// resize_size square around the centre crop. A source rectangle, in the picture's pixels.
function square(width, height, { resize_size: side, image_size: crop }) {
  const [w, h] = width <= height ? [side, Math.floor((side * height) / width)] : [Math.floor((side * width) / height), side];
  const margin = roundHalfEven((side - crop) / 2);
  const top = roundHalfEven((h - crop) / 2) - margin;
  const left = roundHalfEven((w - crop) / 2) - margin;
  return [(left * width) / w, (top * height) / h, (side * width) / w, (side * height) / h];
}

// Decoded RGB uint8 pixels of that square, drawn by the browser at resize_size x resize_size;
// transparency flattened onto white, EXIF orientation applied, no colour-space conversion, as
// the Python runtime decodes. On it the graph's own resize is the identity, so every picture
// has one size and pictures run through the model in batches. The square is also the result
// card's picture (``thumbnail``): the picture is decoded once.
async function pixels(file, model) {
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const side = model.meta.preprocessing.resize_size;
  const canvas = new OffscreenCanvas(side, side);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingQuality = "high";
  context.fillStyle = "#fff";
  context.fillRect(0, 0, side, side);
  context.drawImage(bitmap, ...square(bitmap.width, bitmap.height, model.meta.preprocessing), 0, 0, side, side);
  bitmap.close();
  const rgba = context.getImageData(0, 0, side, side).data;
  const rgb = new Uint8Array(side * side * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return { rgb, thumbnail: canvas.transferToImageBitmap() };
}

// One model run over decoded pictures: their results, in order.
async function classify(model, names, frames) {
  const side = model.meta.preprocessing.resize_size;
  const batch = new Uint8Array(frames.length * side * side * 3);
  frames.forEach(({ rgb }, i) => batch.set(rgb, i * rgb.length));
  const dims = [frames.length, side, side, 3];
  const image = model.ort ? new model.ort.Tensor("uint8", batch, dims) : { data: batch, dims }; // no ort on the page with workers
  const outputs = await model.session.run({ image });
  const classes = model.meta.classes.length;
  const threshold = model.meta.ood_threshold;
  return names.map((name, row) => {
    const probs = outputs.probabilities.data.subarray(row * classes, (row + 1) * classes);
    const order = [...probs.keys()].sort((a, b) => probs[b] - probs[a]).slice(0, TOP);
    const top = order.map((i) => [model.meta.classes[i], probs[i]]);
    const ood = outputs.ood_score ? outputs.ood_score.data[row] : null;
    const unknown = ood !== null && threshold !== null && threshold !== undefined && ood > threshold;
    return { name, label: unknown ? "unknown" : top[0][0], unknown, ood_score: ood, top, error: null };
  });
}

const failure = (name, error) => ({ name, label: null, unknown: false, ood_score: null, top: [], error: String(error?.message || error) });

// A result card: the square the model looked at (blank for a picture that failed), the file's
// name, the verdict and the top classes' bars.
function card(file, result, thumbnail) {
  const element = document.createElement("div");
  element.className = "card" + (result.error ? " failed" : result.unknown ? " unknown" : "");
  const image = document.createElement("canvas");
  if (thumbnail) {
    [image.width, image.height] = [thumbnail.width, thumbnail.height];
    image.getContext("bitmaprenderer").transferFromImageBitmap(thumbnail);
  }
  const body = document.createElement("div");
  body.className = "body";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = file.name;
  const verdict = document.createElement("div");
  verdict.className = "verdict";
  verdict.textContent = result.error
    ? `cannot read: ${result.error}`
    : result.unknown ? "unknown (not one of the characters I know)" : result.label.replaceAll("_", " ");
  body.append(name, verdict);
  for (const [label, p] of result.top) {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.innerHTML = `<div class="track"><div class="fill"></div><span class="label"></span></div><span class="pct"></span>`;
    bar.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    bar.querySelector(".label").textContent = label.replaceAll("_", " ");
    bar.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
    body.append(bar);
  }
  element.append(image, body);
  return element;
}

// Pictures are decoded LOOKAHEAD a worker ahead of the model: the browser decodes on its own
// threads, and a picture's file read and decode (tens of ms of waiting, a few of work) then
// overlap the previous pictures' inference instead of adding to it. Each model worker has a
// group of pictures at a time; results are shown in the order the pictures were chosen.
async function classifyAll(model, files) {
  const started = performance.now();
  // Where the page's thread spends the loop, summed over the pictures (state.timings): waiting
  // for decodes, waiting for the model, drawing the result cards.
  let mark = started;
  const spent = (key) => {
    const now = performance.now();
    state.timings[key] = (state.timings[key] || 0) + (now - mark) / 1000;
    mark = now;
  };
  const decode = (i) => {
    const decoding = i < files.length ? pixels(files[i], model) : null;
    decoding?.catch(() => {}); // a failure is reported in its turn, below
    return decoding;
  };
  // A group's decoded pictures to the model: its answers, or each picture's failure, in order.
  const send = (group, decoded) => {
    const good = group.filter((_, k) => decoded[k].status === "fulfilled");
    const frames = decoded.filter((d) => d.status === "fulfilled").map((d) => d.value);
    const answers = good.length ? classify(model, good.map((file) => file.name), frames) : Promise.resolve([]);
    return { group, decoded, answers: answers.catch((error) => good.map((file) => failure(file.name, error))) };
  };
  let done = 0;
  const show = async ({ group, decoded, answers }) => {
    answers = await answers;
    spent("model_s");
    if (answers.some((answer) => !answer.error)) firstAnswer(started);
    for (const [k, file] of group.entries()) {
      const ok = decoded[k].status === "fulfilled";
      const result = ok ? answers.shift() : failure(file.name, decoded[k].reason);
      state.results.push(result);
      $("results").append(card(file, result, ok && !result.error ? decoded[k].value.thumbnail : null));
    }
    done += group.length;
    status(`Classified ${done} of ${files.length} pictures...`);
    spent("cards_s");
  };
  const lookahead = LOOKAHEAD * Math.max(1, model.workers);
  const ahead = [decode(0)];
  await Promise.allSettled(ahead); // the first picture decodes alone, for a quick first answer
  for (let i = 1; i < lookahead; i++) ahead.push(decode(i));
  const running = []; // groups with the model, oldest first
  for (let start = 0; start < files.length; ) {
    const group = files.slice(start, start + (start ? BATCH : 1));
    const decoded = await Promise.allSettled(group.map((_, k) => {
      ahead.push(decode(start + k + lookahead));
      return ahead.shift();
    }));
    start += group.length;
    spent("waiting_for_pictures_s");
    running.push(send(group, decoded));
    // The first picture is shown as soon as it is answered; then every worker gets a group.
    if (running.length === Math.max(1, model.workers) || start === 1) await show(running.shift());
  }
  while (running.length) await show(running.shift());
  state.seconds += (performance.now() - started) / 1000;
  const failed = state.results.filter((r) => r.error).length;
  const unknown = state.results.filter((r) => r.unknown).length;
  status(`${state.results.length} pictures classified (${unknown} unknown, ${failed} unreadable), ` +
         `${(state.results.length / Math.max(state.seconds, 1e-9)).toFixed(1)} per second.`);
}

// The first answer's times: since the page was opened (model fetch, session, the user's choice
// and the picture), and the picture's own share (from the choice to its answer).
function firstAnswer(started) {
  if (state.timings.first_answer_s !== undefined) return;
  state.timings.first_answer_s = since(opened);
  state.timings.first_picture_s = (performance.now() - started) / 1000;
  $("timing").textContent += `; first answer ${state.timings.first_picture_s.toFixed(2)} s after the picture was chosen`;
}

// What the page runs on, in words: the backend, its workers and threads, and why not more.
function engine(model) {
  const plural = (n, word) => `${n} ${word}${n > 1 ? "s" : ""}`;
  const where = model.backend === "webgpu" ? "WebGPU"
    : model.workers ? `WebAssembly (SIMD) in ${plural(model.workers, "worker")}, ${plural(model.threads, "thread")} each`
    : `WebAssembly (SIMD) on the page's thread, ${plural(model.threads, "thread")}`;
  const limited = model.backend === "wasm" && state.isolation !== null;
  const why = [model.note, limited ? `one thread a session: not cross-origin isolated (${state.isolation})` : null];
  return `Running on ${where}` + why.filter(Boolean).map((reason) => `; ${reason}`).join("");
}

async function main() {
  let model;
  try {
    state.isolation = await isolate(reloaded !== null);
    model = await loadModel();
  } catch (error) {
    status(`Cannot use the model: ${error?.message ?? error}`, true); // onnxruntime throws bare error codes too
    return;
  }
  Object.assign(state, { backend: model.backend, workers: model.workers, threads: model.threads, note: model.note });
  state.timings.ready_s = since(opened);
  const m = model.meta;
  $("engine").textContent = engine(model);
  $("timing").textContent = `Ready ${state.timings.ready_s.toFixed(2)} s after opening (model fetched at ` +
    `${state.timings.model_fetched_s.toFixed(2)} s, session at ${state.timings.session_created_s.toFixed(2)} s)`;
  $("about").textContent = `${m.arch}, ${m.classes.length} characters, ${m.variant} model (${m.model_file}); ` +
    (m.ood_threshold === null ? "no unknown threshold" : `"unknown" when the ${m.ood_score} score exceeds ${Number(m.ood_threshold).toPrecision(4)}`);
  status("Ready: drop pictures or choose files.");
  const take = (files) => classifyAll(model, [...files]);
  $("files").addEventListener("change", (event) => take(event.target.files));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => { event.preventDefault(); drop.classList.remove("over"); take(event.dataTransfer.files); });
  state.ready = true;
}

main();
