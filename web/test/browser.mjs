// Drive the page in headless Chromium the way a person would: open it from a local server
// (a fresh profile: a first visit), pick files in its file input as soon as it is ready, wait
// for every result, read them back with what the page ran on and its timings, take a screenshot.
//   [WEBGPU=off|swiftshader|broken] node web/test/browser.mjs URL RESULTS.json SCREENSHOT.png [FILE ...]
// WEBGPU: off (default) runs Chromium without a GPU, so it has no WebGPU adapter; swiftshader
// gives it WebGPU on SwiftShader (Vulkan on the CPU: the WebGPU code path, not a GPU's speed);
// broken gives it a WebGPU whose device cannot be created, as a faulty driver would.
// Any request to a host other than 127.0.0.1 is blocked and reported.
import { writeFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [url, resultsPath, screenshot, ...files] = process.argv.slice(2);
const webgpu = process.env.WEBGPU || "off";
// An adapter whose requestDevice fails: what onnxruntime-web meets on a GPU it cannot use.
const BROKEN_GPU = () => {
  const adapter = { features: new Set(), limits: {}, info: {}, requestDevice: () => Promise.reject(new Error("simulated device loss")) };
  Object.defineProperty(Navigator.prototype, "gpu", { get: () => ({ requestAdapter: async () => adapter, getPreferredCanvasFormat: () => "rgba8unorm" }) });
};
const NO_GPU = ["--disable-gpu"];
const SWIFTSHADER = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader", "--use-webgpu-adapter=swiftshader",
                     "--use-angle=swiftshader"];
const MODES = {
  off: { args: NO_GPU }, swiftshader: { args: SWIFTSHADER },
  broken: { args: NO_GPU, init: BROKEN_GPU },
};
if (!MODES[webgpu]) throw new Error(`WEBGPU=${webgpu}: use ${Object.keys(MODES).join(", ")}`);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", ...MODES[webgpu].args],
});
const report = { results: [], seconds: null, error: null, console: [], blocked: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 860 } });
  if (MODES[webgpu].init) await page.addInitScript(MODES[webgpu].init);
  page.on("console", (message) => report.console.push(message.text()));
  page.on("pageerror", (error) => report.console.push(String(error)));
  await page.route("**/*", (route) => {
    const host = new URL(route.request().url()).hostname;
    if (host === "127.0.0.1") return route.continue();
    report.blocked.push(route.request().url());
    return route.abort();
  });
  await page.goto(url);
  await page.waitForFunction(() => window.simpsons && (window.simpsons.ready || window.simpsons.error), null, { timeout: 120000 });
  Object.assign(report, await page.evaluate(() => {
    const { error, backend, workers, threads, cores, isolated, isolation, note } = window.simpsons;
    return { error, backend, workers, threads, cores, isolated, isolation, note, engine: document.getElementById("engine").textContent };
  }));
  if (!report.error && files.length) {
    await page.setInputFiles("#files", files);
    await page.waitForFunction((n) => window.simpsons.results.length >= n, files.length, { timeout: 600000 });
    Object.assign(report, await page.evaluate(() => ({ results: window.simpsons.results, seconds: window.simpsons.seconds })));
  }
  report.timings = await page.evaluate(() => window.simpsons.timings);
  report.status = await page.textContent("#status");
  await page.screenshot({ path: screenshot });
} finally {
  await browser.close();
}
await writeFile(resultsPath, JSON.stringify(report, null, 1));
