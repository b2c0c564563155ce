// Review an audit page in headless Chromium as a person would: a list of steps (click, pick
// from a list, press a key, reload, download), then report each reviewable item's choice as
// the page shows it, the page's errors and any request it made.
//   node web/test/review.mjs URL STEPS.json REPORT.json SCREENSHOT.png
// Steps: {"click": SELECTOR} | {"select": SELECTOR, "value": V} | {"key": K} | {"reload": true} |
//        {"download": PATH} (clicks "Download corrections.csv" and saves the file at PATH)
import { readFile, writeFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [url, stepsPath, reportPath, screenshot] = process.argv.slice(2);
const steps = JSON.parse(await readFile(stepsPath, "utf8"));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const report = { errors: [], requests: [], focused: [] };
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => report.errors.push(String(error)));
  page.on("request", (request) => report.requests.push(request.url()));
  await page.goto(url, { waitUntil: "load" });
  for (const step of steps) {
    if (step.click) await page.click(step.click);
    else if (step.select) await page.selectOption(step.select, step.value);
    else if (step.key) {
      await page.keyboard.press(step.key);
      report.focused.push(await page.evaluate(() => document.activeElement?.closest("figure.review")?.dataset.path ?? null));
    } else if (step.reload) await page.reload({ waitUntil: "load" });
    else if (step.download) {
      const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
      await download.saveAs(step.download);
    } else throw new Error(`unknown step ${JSON.stringify(step)}`);
  }
  report.items = await page.evaluate(() => [...document.querySelectorAll("figure.review")].map((figure) => ({
    path: figure.dataset.path, section: figure.closest("section").id, suggested: figure.dataset.suggested,
    choice: figure.dataset.choice, shown: figure.querySelector(".choice").textContent,
  })));
  report.count = await page.textContent("#review-count");
  await page.screenshot({ path: screenshot, fullPage: false });
} finally {
  await browser.close();
}
report.requests = report.requests.filter((r) => !r.startsWith("data:") && !r.startsWith("blob:") && r !== url);
await writeFile(reportPath, JSON.stringify(report, null, 1));
