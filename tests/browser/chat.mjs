// Drives the chat page in Debian's chromium (playwright-core, no browser download): a streamed reply,
// Stop mid-stream, a failure status, and a reply over gRPC-Web. Prints one JSON object of what it saw;
// tests/test_browser.py asserts on it and on what the simulator recorded.
// Usage: node tests/browser/chat.mjs PAGE_URL ARTIFACT_DIR USER_DATA_DIR

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, artifacts, userDataDir] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  viewport: { width: 900, height: 700 },
});
const result = { console: [] };
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => result.console.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => result.console.push(`pageerror: ${error.message}`));
  await page.goto(url);
  await page.waitForSelector("body[data-state=idle]");

  // Every change of the reply's text, with the page's state at that moment.
  await page.evaluate(() => {
    const reply = document.getElementById("reply");
    window.pieces = [];
    new MutationObserver(() => {
      window.pieces.push({ length: reply.textContent.length, state: document.body.dataset.state });
    }).observe(reply, { childList: true, characterData: true, subtree: true });
  });
  const ask = async (prompt) => {
    await page.evaluate(() => (window.pieces = []));
    await page.fill("#prompt", prompt);
    await page.click("#send");
  };
  const settled = (state) => page.waitForSelector(`body[data-state=${state}]`, { timeout: 30_000 });

  // 1. A reply streams in, then usage.
  await ask("Tell me how streaming works [[sim:tokens 40]]");
  await settled("done");
  result.streamed = {
    pieces: await page.evaluate(() => window.pieces),
    reply: await page.textContent("#reply"),
    usage: await page.textContent("#usage"),
    status: await page.textContent("#status"),
  };
  await page.screenshot({ path: join(artifacts, "chat-streamed.png"), fullPage: true });

  // 2. Stop mid-stream: a long reply, stopped once some words arrived.
  await ask("stop me [[sim:tokens 2000]]");
  await page.waitForFunction(() => document.getElementById("reply").textContent.length > 20, null, { timeout: 30_000 });
  await page.click("#stop");
  await settled("stopped");
  result.stopped = {
    reply: await page.textContent("#reply"),
    status: await page.textContent("#status"),
    sendEnabled: await page.isEnabled("#send"),
  };
  await page.screenshot({ path: join(artifacts, "chat-stopped.png"), fullPage: true });

  // 3. A failure status: the upstream answers 529 overloaded.
  await ask("fail please [[sim:http_error 529]]");
  await settled("failed");
  result.failed = {
    status: await page.textContent("#status"),
    role: await page.getAttribute("#status", "role"),
  };
  await page.screenshot({ path: join(artifacts, "chat-failed.png"), fullPage: true });

  // 4. The same page over gRPC-Web.
  await page.selectOption("#transport", "grpc-web");
  await ask("Now over gRPC-Web [[sim:tokens 12]]");
  await settled("done");
  result.grpcWeb = {
    pieces: await page.evaluate(() => window.pieces),
    reply: await page.textContent("#reply"),
    usage: await page.textContent("#usage"),
  };
} finally {
  await context.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
