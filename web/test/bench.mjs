// `chat-bench browser`'s browser side: $CHAT_SESSIONS pages in headless Chromium, each a
// member of general. Prints `READY` once every page has joined, then reads `PROBES <n>`
// on its standard input, waits until every page shows probes 0..n-1 (bodies
// `probe <i> <sent, µs since the epoch>`), and prints `RESULT` with each probe's time from
// its send to its row on the page, in ms, read from the rows' `data-shown-at`.

import { launch } from "./chromium.mjs";
import { createInterface } from "node:readline";

const PAGE = process.env.CHAT_PAGE;
const SESSIONS = Number(process.env.CHAT_SESSIONS ?? 5);
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

const browser = await launch();
try {
  const pages = [];
  for (let i = 0; i < SESSIONS; i++) {
    const page = await (await browser.newContext()).newPage();
    await page.goto(PAGE);
    await page.fill("#name", `web${i}`);
    await page.click("#connect");
    await page.waitForSelector("#status[data-state=connected]", { timeout: 30_000 });
    await page.waitForSelector(".messages[data-room=general]", { state: "attached", timeout: 30_000 });
    pages.push(page);
  }
  console.log("READY");
  const { value } = await lines.next();
  const probes = Number(value.split(" ")[1]);
  const latencies = [];
  for (const page of pages) {
    await page.waitForFunction(
      (n) => document.querySelectorAll(".messages[data-room=general] .message[data-sender=publisher]").length >= n,
      probes,
      { timeout: Number(process.env.CHAT_PATIENCE_MS ?? 120_000), polling: 100 },
    ).catch(async (e) => {
      const have = await page.$$eval(".messages[data-room=general] .message", (items) => items.length);
      throw new Error(`${e.message}: the page shows ${have} messages; status: ${await page.textContent("#status")}`);
    });
    const rows = await page.$$eval(".messages[data-room=general] .message[data-sender=publisher]", (items) =>
      items.map((e) => [e.querySelector(".body").textContent, Number(e.dataset.shownAt)]),
    );
    for (const [body, shownAt] of rows) {
      const sentUs = Number(body.split(" ")[2]);
      latencies.push(shownAt - sentUs / 1000);
    }
  }
  console.log(`RESULT ${JSON.stringify({ latencies_ms: latencies })}`);
} finally {
  await browser.close();
  input.close();
}
