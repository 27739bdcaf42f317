// Drives the chat page in Debian's chromium through a TCP proxy (this script's own) that is cut while a reply
// streams in: the page's client resumes the stream (the page says "Reconnecting…") and shows the whole answer
// once. Prints one JSON object of what it saw; tests/test_browser.py asserts on it and on the simulator's record.
// Usage: node tests/browser/resume.mjs GATEWAY_HOST:PORT ARTIFACT_DIR USER_DATA_DIR PROMPT

import { mkdirSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [target, artifacts, userDataDir, prompt] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });

// The proxy: each browser connection forwarded to the gateway's HTTP port; cut() resets every open one.
const [host, port] = target.split(":");
const sockets = new Set();
const proxy = net.createServer((client) => {
  const upstream = net.connect(Number(port), host);
  for (const s of [client, upstream]) {
    sockets.add(s);
    s.on("error", () => {});
    s.on("close", () => {
      sockets.delete(s);
      client.destroy();
      upstream.destroy();
    });
  }
  client.pipe(upstream);
  upstream.pipe(client);
});
await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = { console: [], cuts: 0 };
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => result.console.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => result.console.push(`pageerror: ${error.message}`));
  await page.goto(`http://127.0.0.1:${proxy.address().port}/`);
  await page.waitForSelector("body[data-state=idle]");
  // Every status the page shows, in order.
  await page.evaluate(() => {
    window.statuses = [];
    new MutationObserver(() => window.statuses.push(document.getElementById("status").textContent)).observe(
      document.getElementById("status"), { childList: true, characterData: true, subtree: true });
  });
  await page.fill("#prompt", prompt);
  await page.click("#send");
  await page.waitForFunction(() => (document.getElementById("reply")?.textContent.length ?? 0) > 30, null, { timeout: 30_000 });
  result.before = await page.textContent("#reply");
  result.cuts += 1;
  for (const s of sockets) s.resetAndDestroy();
  await page.waitForSelector("body[data-state=done]", { timeout: 60_000 });
  result.reply = await page.textContent("#reply");
  result.statuses = await page.evaluate(() => window.statuses);
  result.state = await page.evaluate(() => document.body.dataset.state);
  await page.screenshot({ path: join(artifacts, "chat-resumed.png"), fullPage: true });
} catch (error) {
  // What the page showed when it went wrong, for the test's failure message.
  const page = context.pages()[0];
  if (page) {
    result.reply = await page.textContent("#reply").catch(() => null);
    result.statuses = await page.evaluate(() => window.statuses).catch(() => null);
    result.state = await page.evaluate(() => document.body.dataset.state).catch(() => null);
  }
  console.error(JSON.stringify(result));
  throw error;
} finally {
  await context.close();
  proxy.close();
  for (const s of sockets) s.destroy();
}
console.log(JSON.stringify(result));
