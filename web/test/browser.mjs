// Drive the page in headless Chromium the way a person would: open it from a local server,
// pick files in its file input, wait for every result, read them back and take a screenshot.
//   node web/test/browser.mjs URL RESULTS.json SCREENSHOT.png [FILE ...]
// Any request to a host other than 127.0.0.1 is blocked and reported.
import { writeFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [url, resultsPath, screenshot, ...files] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const report = { results: [], seconds: null, error: null, console: [], blocked: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 860 } });
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
  report.error = await page.evaluate(() => window.simpsons.error);
  if (!report.error && files.length) {
    await page.setInputFiles("#files", files);
    await page.waitForFunction((n) => window.simpsons.results.length >= n, files.length, { timeout: 600000 });
    Object.assign(report, await page.evaluate(() => ({ results: window.simpsons.results, seconds: window.simpsons.seconds })));
  }
  report.status = await page.textContent("#status");
  await page.screenshot({ path: screenshot });
} finally {
  await browser.close();
}
await writeFile(resultsPath, JSON.stringify(report, null, 1));
