// The page in a real browser (Debian's Chromium, headless, driven by Playwright), against a
// real node. Run by tests/tests/browser.rs, which plays the native user and restarts the
// node: this script prints `STEP <name>` when it is the test's turn and waits for `GO` on
// its standard input. It exits 0 when every check held; on a failure it saves a screenshot
// of each page in $CHAT_SCREENSHOTS and exits 1.
//
//   CHAT_PAGE=http://localhost:PORT/ CHAT_SCREENSHOTS=DIR node test/e2e.mjs

import { launch } from "./chromium.mjs";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const PAGE = process.env.CHAT_PAGE;
const SHOTS = process.env.CHAT_SCREENSHOTS ?? "browser-screenshots";
const PATIENCE = 20_000;

const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

async function step(name) {
  console.log(`STEP ${name}`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== "GO") throw new Error(`the test did not answer ${name} with GO (got ${value})`);
}

function check(condition, what) {
  if (!condition) throw new Error(what);
}

const browser = await launch();
const pages = {};

async function open(name, { password = "", register = false } = {}) {
  const page = await (await browser.newContext()).newPage();
  pages[name] = page;
  page.on("pageerror", (e) => console.log(`${name}: page error: ${e.message}`));
  await page.goto(PAGE);
  await page.fill("#name", name);
  await page.fill("#password", password);
  if (register) await page.check("#register");
  await page.click("#connect");
  await page.waitForSelector("#status[data-state=connected]", { timeout: PATIENCE });
  await page.waitForSelector(".messages[data-room=general]", { state: "attached", timeout: PATIENCE });
  return page;
}

/// The messages a page shows in general, in the order it shows them.
function shown(page) {
  return page.$$eval(".messages[data-room=general] .message", (items) =>
    items.map((e) => ({ seq: Number(e.dataset.seq), sender: e.dataset.sender, body: e.querySelector(".body").textContent })),
  );
}

async function waitForBodies(page, bodies) {
  await page.waitForFunction(
    (wanted) => {
      const have = new Set([...document.querySelectorAll(".messages[data-room=general] .message .body")].map((e) => e.textContent));
      return wanted.every((b) => have.has(b));
    },
    bodies,
    { timeout: PATIENCE },
  );
}

/// Every message once, in sequence order, with no line still pending.
async function checkOrder(page, who) {
  const messages = await shown(page);
  const seqs = messages.map((m) => m.seq);
  check(new Set(seqs).size === seqs.length, `${who} shows a message twice: ${seqs}`);
  check(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `${who} shows messages out of order: ${seqs}`);
  check((await page.$$(".messages[data-room=general] .pending")).length === 0, `${who} still shows pending lines`);
  return messages;
}

async function type(page, text) {
  await page.fill("#input", text);
  await page.press("#input", "Enter");
}

try {
  // A browser user talks to a native one, both ways.
  const ada = await open("ada");
  await type(ada, "hello from the browser");
  await waitForBodies(ada, ["hello from the browser"]);
  await step("sent");
  await waitForBodies(ada, ["hello from native"]);
  const first = await checkOrder(ada, "ada");
  check(first.at(-1).sender === "bob", `the native message shows as bob's: ${JSON.stringify(first.at(-1))}`);

  // A burst typed with no pauses arrives once and in order.
  const burst = Array.from({ length: 30 }, (_, i) => `burst ${i}`);
  for (const line of burst) await type(ada, line);
  await waitForBodies(ada, burst);

  // A second browser joins and sees the newest page of the history (the node's pages are
  // of 20 here), then scrolls up through the rest, to the beginning.
  const cyd = await open("cyd");
  await waitForBodies(cyd, burst.slice(-20));
  check((await shown(cyd)).length <= 20, "a join shows one page");
  while (!(await cyd.$(".messages[data-room=general] .beginning"))) {
    await cyd.$eval("#pane", (pane) => { pane.scrollTop = 0; pane.dispatchEvent(new Event("scroll")); });
    await cyd.waitForTimeout(50);
  }
  await waitForBodies(cyd, ["hello from the browser", "hello from native", ...burst]);
  const history = (await checkOrder(cyd, "cyd")).map((m) => m.body);
  const expected = ["hello from the browser", "hello from native", ...burst];
  check(JSON.stringify(history.slice(-expected.length)) === JSON.stringify(expected), `cyd's history: ${history}`);
  await checkOrder(ada, "ada");
  // ada opens random and goes back: what comes into random meanwhile counts as unread.
  await ada.click(".room[data-room=random]");
  await ada.waitForSelector(".messages[data-room=random] .beginning", { timeout: PATIENCE });
  await ada.click(".room[data-room=general]");
  await step("burst");
  await ada.waitForFunction(
    () => document.querySelector(".room[data-room=random] .unread")?.textContent === "1",
    null,
    { timeout: PATIENCE },
  );
  await ada.click(".room[data-room=random]");
  await ada.waitForSelector(".messages[data-room=random] .message[data-sender=bob]", { timeout: PATIENCE });
  check((await ada.$(".room[data-room=random] .unread")) === null, "the unread count is gone once the room is read");
  await ada.click(".room[data-room=general]");

  // The node restarts; messages sent meanwhile show once the pages are back, once each:
  // more than a page of them, so a rejoin that did not resume after its last would miss some.
  await step("restart");
  const away = Array.from({ length: 50 }, (_, i) => `while you were away ${i + 1}`);
  for (const page of [ada, cyd]) {
    await page.waitForSelector("#status[data-state=connected]", { timeout: PATIENCE });
    await waitForBodies(page, away);
  }
  const afterRestart = await checkOrder(ada, "ada after the restart");
  check(JSON.stringify(afterRestart.slice(-away.length).map((m) => m.body)) === JSON.stringify(away), "the missed messages, in order");
  await checkOrder(cyd, "cyd after the restart");
  await type(ada, "back again");
  await waitForBodies(cyd, ["back again"]);

  // An over-long message shows the node's sentence, and nothing is sent.
  await type(ada, "x".repeat(400));
  await ada.waitForSelector(".messages[data-room=general] .error", { timeout: PATIENCE });
  const error = await ada.textContent(".messages[data-room=general] .error");
  check(/400 bytes long; the limit is 300/.test(error), `the error shown: ${error}`);
  // Accounts: a name registered from the page needs its password afterwards.
  const eve = await open("eve", { password: "correct horse battery", register: true });
  check((await eve.textContent("#status")) === "connected as eve", `eve's status: ${await eve.textContent("#status")}`);
  await eve.close();
  const impostor = await (await browser.newContext()).newPage();
  pages.impostor = impostor;
  await impostor.goto(PAGE);
  await impostor.fill("#name", "eve");
  await impostor.click("#connect");
  await impostor.waitForFunction(() => document.querySelector("#login-error")?.textContent !== "", null, { timeout: PATIENCE });
  const refusal = await impostor.textContent("#login-error");
  check(/password/i.test(refusal), `a guest taking a registered name is told: ${refusal}`);
  await impostor.fill("#password", "correct horse battery");
  await impostor.click("#connect");
  await impostor.waitForSelector("#status[data-state=connected]", { timeout: PATIENCE });
  check((await impostor.textContent("#status")) === "connected as eve", "the owner logs in with the password");
  await step("done");
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log(`FAIL ${e.stack ?? e}`);
  mkdirSync(SHOTS, { recursive: true });
  for (const [name, page] of Object.entries(pages)) {
    const path = join(SHOTS, `${name}.png`);
    await page.screenshot({ path, fullPage: true }).catch(() => {});
    console.log(`screenshot of ${name}: ${path}`);
  }
  await browser.close();
  process.exit(1);
}
