// Open an audit page in headless Chromium and report what a person would see: for each
// section, the paths its items carry, whether every thumbnail decoded, and a screenshot.
//   node web/test/audit.mjs URL REPORT.json SCREENSHOT.png
import { writeFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [url, reportPath, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const requests = [];
  page.on("request", (request) => requests.push(request.url()));
  await page.goto(url, { waitUntil: "load" });
  const report = await page.evaluate(() => {
    const sections = {};
    for (const section of document.querySelectorAll("section")) {
      sections[section.id] = [...section.querySelectorAll("[data-path]")].map((e) => e.dataset.path);
    }
    const images = [...document.images];
    return {
      sections,
      images: images.length,
      undecoded: images.filter((img) => !img.complete || img.naturalWidth === 0).map((img) => img.closest("[data-path]")?.dataset.path),
      bytes: document.documentElement.outerHTML.length,
    };
  });
  report.requests = requests.filter((r) => !r.startsWith("data:") && r !== url);
  await page.screenshot({ path: screenshot, fullPage: false });
  await writeFile(reportPath, JSON.stringify(report, null, 1));
} finally {
  await browser.close();
}
