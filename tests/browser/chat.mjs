// Drives the chat page in Debian's chromium (playwright-core, no browser download): a streamed reply, a
// second turn with its own max tokens, a new conversation, Stop mid-stream, a failure status, and a reply
// over gRPC-Web. Prints one JSON object of what it saw; tests/test_browser.py asserts on it and on what the
// simulator recorded.
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
const result = { console: [], failedResponses: [] };
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => result.console.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => result.console.push(`pageerror: ${error.message}`));
  page.on("response", (response) => {
    if (response.status() >= 400) result.failedResponses.push(`${response.status()} ${response.url()}`);
  });
  await page.goto(url);
  await page.waitForSelector("body[data-state=idle]");
  result.icon = await page.evaluate(async () => {
    const link = document.querySelector("link[rel=icon]");
    const response = await fetch(link.href);
    return { status: response.status, type: response.headers.get("content-type") };
  });

  // Every change of the newest reply's text (#reply), with the page's state at that moment.
  await page.evaluate(() => {
    window.pieces = [];
    new MutationObserver(() => {
      const reply = document.getElementById("reply");
      window.pieces.push({ length: reply?.textContent.length ?? 0, state: document.body.dataset.state });
    }).observe(document.getElementById("conversation"), { childList: true, characterData: true, subtree: true });
  });
  // The conversation as shown: each turn's role, state, text, usage line and cost.
  const turns = () =>
    page.$$eval(".turn", (boxes) =>
      boxes.map((box) => ({
        role: box.classList.contains("user") ? "user" : "assistant",
        state: box.dataset.state ?? null,
        text: box.querySelector(".text").textContent,
        meta: box.querySelector(".meta").textContent,
        costUsd: box.dataset.costUsd === undefined ? null : Number(box.dataset.costUsd),
      })),
    );
  const total = async () => ({
    text: await page.textContent("#total"),
    costUsd: await page.$eval("#total", (el) => (el.dataset.costUsd === undefined ? null : Number(el.dataset.costUsd))),
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
    turns: await turns(),
    total: await total(),
  };
  await page.screenshot({ path: join(artifacts, "chat-streamed.png"), fullPage: true });

  // 1b. A second turn, with max tokens 7: the page sends the first exchange along with it.
  await page.fill("#max-tokens", "7");
  await ask("And a second turn");
  await settled("done");
  result.second = {
    reply: await page.textContent("#reply"),
    usage: await page.textContent("#usage"),
    turns: await turns(),
    total: await total(),
  };
  await page.screenshot({ path: join(artifacts, "chat-second-turn.png"), fullPage: true });

  // 1c. A new conversation: no turns, no total, and the next prompt goes alone.
  await page.click("#new");
  result.fresh = { turns: await turns(), total: await total() };
  await page.fill("#max-tokens", "1024");

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
