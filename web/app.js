// The page's whole logic: read the sidecar, check it describes the model file, load the
// portable model (uint8 RGB pixels in, calibrated probabilities and the open-set score out),
// then classify each picture the user drops: the browser decodes it, the graph does the rest.
import * as ort from "./ort/ort.wasm.min.mjs";

const SIDECAR = "model.portable.json";
const TOP = 3;

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

// What tests and curious people can read: readiness, one result per picture, timing.
const state = (window.simpsons = { ready: false, error: null, results: [], seconds: 0 });
const $ = (id) => document.getElementById(id);

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
  if (isError) state.error = text;
}

async function sha256(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function loadModel() {
  const response = await fetch(SIDECAR);
  if (!response.ok) throw new Error(`${SIDECAR} not found beside the page: the model has no sidecar (rebuild with make web)`);
  const meta = await response.json();
  const modelResponse = await fetch(meta.model_file);
  if (!modelResponse.ok) throw new Error(`${meta.model_file} (named by ${SIDECAR}) not found beside the page`);
  const bytes = await modelResponse.arrayBuffer();
  if ((await sha256(bytes)) !== meta.sha256) {
    throw new Error(`${SIDECAR} does not describe ${meta.model_file}: its sha256 differs (copy the matching pair)`);
  }
  if (meta.inputs?.[0]?.dtype !== "uint8") throw new Error(`${meta.model_file} is not a portable model (its input is not uint8 pixels)`);
  const session = await ort.InferenceSession.create(new Uint8Array(bytes), { executionProviders: ["wasm"] });
  return { meta, session };
}

// Decoded RGB uint8 pixels, [1, H, W, 3]; transparency flattened onto white, EXIF orientation
// applied, no colour-space conversion: what the Python runtime decodes too.
async function pixels(file) {
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.fillStyle = "#fff";
  context.fillRect(0, 0, width, height);
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return new ort.Tensor("uint8", rgb, [1, height, width, 3]);
}

async function classify(model, file) {
  const outputs = await model.session.run({ image: await pixels(file) });
  const probs = outputs.probabilities.data;
  const order = [...probs.keys()].sort((a, b) => probs[b] - probs[a]).slice(0, TOP);
  const top = order.map((i) => [model.meta.classes[i], probs[i]]);
  const ood = outputs.ood_score ? outputs.ood_score.data[0] : null;
  const threshold = model.meta.ood_threshold;
  const unknown = ood !== null && threshold !== null && threshold !== undefined && ood > threshold;
  return { name: file.name, label: unknown ? "unknown" : top[0][0], unknown, ood_score: ood, top, error: null };
}

function card(file, result) {
  const element = document.createElement("div");
  element.className = "card" + (result.error ? " failed" : result.unknown ? " unknown" : "");
  const image = document.createElement("img");
  image.alt = "";
  if (!result.error) {
    image.src = URL.createObjectURL(file);
    image.onload = () => URL.revokeObjectURL(image.src);
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

async function classifyAll(model, files) {
  const started = performance.now();
  let done = 0;
  for (const file of files) {
    let result;
    try {
      result = await classify(model, file);
    } catch (error) {
      result = { name: file.name, label: null, unknown: false, ood_score: null, top: [], error: String(error?.message || error) };
    }
    state.results.push(result);
    $("results").append(card(file, result));
    done += 1;
    status(`Classified ${done} of ${files.length} pictures...`);
  }
  state.seconds += (performance.now() - started) / 1000;
  const failed = state.results.filter((r) => r.error).length;
  const unknown = state.results.filter((r) => r.unknown).length;
  status(`${state.results.length} pictures classified (${unknown} unknown, ${failed} unreadable), ` +
         `${(state.results.length / Math.max(state.seconds, 1e-9)).toFixed(1)} per second.`);
}

async function main() {
  let model;
  try {
    model = await loadModel();
  } catch (error) {
    status(`Cannot use the model: ${error.message}`, true);
    return;
  }
  const m = model.meta;
  $("about").textContent = `${m.arch}, ${m.classes.length} characters, ${m.variant} model; ` +
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
