// The page: log in (or a guest name), the rooms with unread counts, a view per room with
// its history paged in on scroll, live messages, and a reconnect that resumes every room
// after the last message it showed, so nothing is missed or shown twice.

import { type ChatMessage, Connection, type ErrorFrame, type Login, Refused, type RoomStream, type Welcome } from "./client";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

/// What the page knows of one room.
class RoomView {
  stream: RoomStream | null = null;
  /// Shown messages by sequence number, and the list they are in, in order.
  readonly shown = new Map<number, HTMLElement>();
  readonly list = document.createElement("ol");
  lastSeq = 0;
  firstSeq = 0;
  moreBefore = false;
  loadingOlder = false;
  unread = 0;
  topic = "";
  /// Sends not yet stored, by client id.
  readonly pending = new Map<number, HTMLElement>();
  /// Whether the user wants to be in it (rejoined after a reconnect).
  joined = false;
  /// The account's read marker, as far as this page moved it.
  marked = 0;

  constructor(public name: string) {
    this.list.className = "messages";
    this.list.dataset.room = name;
  }
}

const rooms = new Map<string, RoomView>();
let current: RoomView | null = null;
let connection: Connection | null = null;
let welcome: Welcome | null = null;
let login: Login | null = null;
let stopped = false;

const PAGE = 100;

function setStatus(text: string, state: string): void {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = state;
}

const clock = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });

function timeOf(ms: number): string {
  return clock.format(ms);
}

/// Whether the view follows new messages: the reader is at the bottom. Kept from the scroll
/// events, so that a message never has to ask the layout (which reflows the whole list).
let following = true;
let scrollQueued = false;

/// Scrolls to the newest once, at the next frame, however many messages came meanwhile.
function follow(): void {
  if (scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    scrollToBottom();
  });
}

function messageElement(m: ChatMessage): HTMLElement {
  const li = document.createElement("li");
  li.className = "message";
  li.dataset.seq = String(m.seq);
  li.dataset.sender = m.sender;
  li.dataset.shownAt = String(performance.timeOrigin + performance.now());
  li.dataset.sentAt = String(m.timestamp_ms);
  const time = document.createElement("time");
  time.textContent = timeOf(m.timestamp_ms);
  const sender = document.createElement("span");
  sender.className = "sender";
  sender.textContent = m.sender;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = m.body;
  body.dir = "auto";
  li.append(time, sender, body);
  return li;
}

function notice(view: RoomView, text: string, kind = "notice"): void {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  view.list.append(li);
  if (view === current && following) follow();
}

function nearBottom(): boolean {
  const pane = $("pane");
  return pane.scrollHeight - pane.scrollTop - pane.clientHeight < 40;
}

function scrollToBottom(): void {
  const pane = $("pane");
  pane.scrollTop = pane.scrollHeight;
}

/// Puts `m` where its sequence number says, once: history, pages and live messages arrive
/// in any order across a reconnect, the view shows each once, in order.
function show(view: RoomView, m: ChatMessage, live: boolean): void {
  if (view.shown.has(m.seq)) return;
  const element = messageElement(m);
  const mine = welcome !== null && m.sender === welcome.name;
  if (mine) {
    // The stored copy of a line this page sent takes the pending line's place.
    for (const [id, line] of view.pending) {
      if (line.dataset.body === m.body) {
        view.pending.delete(id);
        line.remove();
        break;
      }
    }
  }
  view.shown.set(m.seq, element);
  place(view, element, m.seq);
  view.lastSeq = Math.max(view.lastSeq, m.seq);
  if (view.firstSeq === 0 || m.seq < view.firstSeq) view.firstSeq = m.seq;
  if (live && view !== current && !mine) {
    view.unread++;
    drawRooms();
  }
  if (view === current && (following || mine)) follow();
}

/// Inserts a message's row in sequence order: after the newest (before any pending line),
/// or after the nearest older row shown, or before the first newer one.
function place(view: RoomView, element: HTMLElement, seq: number): void {
  if (seq > view.lastSeq) {
    if (view.pending.size === 0) view.list.append(element);
    else view.list.insertBefore(element, view.list.querySelector(".pending"));
    return;
  }
  for (let older = seq - 1; older >= view.firstSeq && older > 0 && seq - older < 64; older--) {
    const found = view.shown.get(older);
    if (found) {
      found.after(element);
      return;
    }
  }
  const later = [...view.list.querySelectorAll<HTMLElement>(".message")].find((e) => Number(e.dataset.seq) > seq);
  view.list.insertBefore(element, later ?? view.list.querySelector(".pending"));
}

function drawRooms(): void {
  const list = $("rooms");
  list.replaceChildren();
  for (const view of [...rooms.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const li = document.createElement("li");
    li.dataset.room = view.name;
    li.className = view === current ? "room current" : "room";
    const name = document.createElement("span");
    name.textContent = view.name.startsWith("@") ? view.name : `#${view.name}`;
    li.append(name);
    if (view.unread > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = view.unread >= 500 ? "500+" : String(view.unread);
      li.append(badge);
    }
    li.onclick = () => switchTo(view.name);
    list.append(li);
  }
}

function room(name: string): RoomView {
  let view = rooms.get(name);
  if (!view) {
    view = new RoomView(name);
    rooms.set(name, view);
  }
  return view;
}

async function switchTo(name: string): Promise<void> {
  const view = room(name);
  current = view;
  view.unread = 0;
  $("pane").replaceChildren(view.list);
  $("title").textContent = name.startsWith("@") ? name : `#${name}`;
  $("topic").textContent = view.topic;
  ($("input") as HTMLTextAreaElement).placeholder = `Message ${$("title").textContent}`;
  drawRooms();
  following = true;
  scrollToBottom();
  if (!view.joined) {
    view.joined = true;
    await enter(view);
  }
  ($("input") as HTMLTextAreaElement).focus();
}

/// Joins `view`'s room on the current connection: after the last message shown, so a
/// rejoin misses nothing, and pages on until the history has caught up.
async function enter(view: RoomView): Promise<void> {
  const conn = connection;
  if (!conn) return;
  const after = view.lastSeq > 0 ? view.lastSeq : null;
  try {
    view.stream = await conn.join(view.name, after, {
      message: (m, live) => show(view, m, live),
      historyEnd: (ends) => {
        if (after === null) {
          view.moreBefore = ends.more_before;
          if (!ends.more_before) markBeginning(view);
        }
        if (ends.more_after) catchUp(view);
      },
      other: (frame) => presence(view, frame),
      ended: (error) => streamEnded(view, error),
    });
    const joinedAs = view.stream.joined.room;
    if (joinedAs !== view.name) {
      // `@bob` is the conversation `@ada+bob`: the view goes by the name messages carry.
      rooms.delete(view.name);
      view.name = joinedAs;
      view.list.dataset.room = joinedAs;
      rooms.set(joinedAs, view);
      drawRooms();
    }
    view.topic = view.stream.joined.topic;
    if (view === current) $("topic").textContent = view.topic;
    if (view.stream.joined.gap) {
      const gap = view.stream.joined.gap;
      notice(view, `messages ${gap.first} to ${gap.last} are no longer kept`);
    }
  } catch (e) {
    view.joined = false;
    notice(view, e instanceof Error ? e.message : String(e), "error");
  }
}

/// A resume that missed more than a page reads the rest, a page at a time.
async function catchUp(view: RoomView): Promise<void> {
  const stream = view.stream;
  if (!stream) return;
  for (;;) {
    const page = await stream.history({ After: view.lastSeq }, PAGE).catch(() => null);
    if (!page) return;
    for (const m of page.messages) show(view, m, false);
    if (!page.ends.more_after || page.messages.length === 0) return;
  }
}

function markBeginning(view: RoomView): void {
  if (view.list.querySelector(".beginning")) return;
  const li = document.createElement("li");
  li.className = "beginning";
  li.textContent = `the beginning of ${view.name}`;
  view.list.prepend(li);
}

async function loadOlder(view: RoomView): Promise<void> {
  if (!view.stream || !view.moreBefore || view.loadingOlder) return;
  view.loadingOlder = true;
  const pane = $("pane");
  const fromBottom = pane.scrollHeight - pane.scrollTop;
  try {
    const page = await view.stream.history({ Before: view.firstSeq }, PAGE);
    for (const m of page.messages.slice().reverse()) {
      if (view.shown.has(m.seq)) continue;
      const element = messageElement(m);
      view.shown.set(m.seq, element);
      const first = view.list.querySelector(".message");
      view.list.insertBefore(element, first);
      view.firstSeq = Math.min(view.firstSeq, m.seq);
    }
    view.moreBefore = page.ends.more_before;
    if (!view.moreBefore) markBeginning(view);
    pane.scrollTop = pane.scrollHeight - fromBottom;
  } catch (e) {
    notice(view, e instanceof Error ? e.message : String(e), "error");
  } finally {
    view.loadingOlder = false;
  }
}

function presence(view: RoomView, frame: Record<string, any>): void {
  if (frame.Arrived) notice(view, `→ ${frame.Arrived.name} arrived`);
  else if (frame.Left) {
    const reason = { Left: "left", Disconnected: "disconnected", TimedOut: "timed out", Dropped: "dropped by the node" }[frame.Left.reason as string];
    notice(view, `← ${frame.Left.name} ${reason === "left" ? "left" : `left (${reason})`}`);
  } else if (frame.RoomEvent) {
    const action = frame.RoomEvent.action;
    if (action.Topic !== undefined) {
      view.topic = action.Topic;
      if (view === current) $("topic").textContent = view.topic;
    }
    notice(view, `${frame.RoomEvent.by} ${moderation(action)}`);
  }
}

/// A moderation as a few words: "kicked eve (spam)".
function moderation(action: Record<string, any> | string): string {
  if (action === "DeleteRoom") return "deleted the room";
  const [kind, detail] = Object.entries(action)[0];
  const why = detail?.reason ? ` (${detail.reason})` : "";
  const time = detail?.minutes ? ` for ${detail.minutes} minutes` : "";
  switch (kind) {
    case "Kick": return `kicked ${detail.name}${why}`;
    case "Ban": return `banned ${detail.name}${time}${why}`;
    case "Unban": return `unbanned ${detail.name}`;
    case "Mute": return `muted ${detail.name}${time}`;
    case "Unmute": return `unmuted ${detail.name}`;
    case "Op": return `made ${detail.name} an operator`;
    case "Deop": return `made ${detail.name} no longer an operator`;
    case "Invite": return `invited ${detail.name}`;
    case "InviteOnly": return detail ? "made the room invite-only" : "opened the room to everyone";
    case "Topic": return detail ? `set the topic: ${detail}` : "cleared the topic";
    default: return kind;
  }
}

function streamEnded(view: RoomView, error: ErrorFrame | null): void {
  view.stream = null;
  if (error === null) return; // The connection went: the reconnect rejoins.
  if (error.code === "TooSlow") {
    // Fell behind: rejoin after what was shown.
    enter(view);
    return;
  }
  view.joined = false;
  notice(view, error.message, "error");
}

async function send(text: string): Promise<void> {
  const view = current;
  if (!view || text.trim() === "") return;
  if (text.startsWith("/")) return command(view, text);
  if (!view.stream) {
    notice(view, "not connected to this room: the line was not sent; send it again once connected", "error");
    return;
  }
  const { clientId, stored } = view.stream.send(text);
  const line = document.createElement("li");
  line.className = "pending";
  line.dataset.body = text;
  line.textContent = `… ${welcome?.name}: ${text}`;
  view.pending.set(clientId, line);
  view.list.append(line);
  scrollToBottom();
  try {
    // The stored copy, which every member gets, takes the line's place (`show`).
    await stored;
  } catch (e) {
    view.pending.delete(clientId);
    line.className = "error";
    line.textContent = e instanceof Error ? e.message : String(e);
  }
}

async function command(view: RoomView, text: string): Promise<void> {
  const [word, ...rest] = text.slice(1).split(/\s+/);
  const arg = rest.join(" ");
  try {
    if (word === "join" && arg) await switchTo(arg);
    else if (word === "create" && arg) {
      await connection?.request({ CreateRoom: { room: arg } });
      await switchTo(arg);
    } else if (word === "msg" || word === "query") await switchTo(`@${rest[0]}`);
    else if (word === "who") {
      const answer = await connection?.request({ Who: { room: view.name } });
      notice(view, `in ${view.name}: ${answer.Members.names.join(", ")}`);
    } else notice(view, "commands: /join ROOM, /create ROOM, /query NAME, /who", "error");
  } catch (e) {
    notice(view, e instanceof Error ? e.message : String(e), "error");
  }
}

/// Connects, and connects again whenever the connection goes, until a refusal that trying
/// again would not change.
async function run(): Promise<void> {
  let attempt = 0;
  while (!stopped && login) {
    setStatus(attempt === 0 ? "connecting…" : `reconnecting (attempt ${attempt})…`, "connecting");
    try {
      connection = await Connection.open(login);
    } catch (e) {
      if (e instanceof Refused && !["ShuttingDown", "TooManyLogins"].includes(e.frame.code)) {
        showLogin(e.message);
        return;
      }
      attempt++;
      await new Promise((r) => setTimeout(r, Math.min(250 * 2 ** attempt, 5000)));
      continue;
    }
    attempt = 0;
    welcome = connection.welcome;
    login = { name: welcome.name, resume: welcome.token };
    sessionStorage.setItem("chat-session", JSON.stringify(login));
    setStatus(`connected as ${welcome.name}${welcome.account ? "" : " (guest)"}`, "connected");
    connection.onDirect = (m) => {
      // A conversation this page is not in: counted, and shown once it is opened (its
      // join reads the newest page, this message with it).
      const view = room(m.room);
      if (view.joined) return;
      view.unread++;
      drawRooms();
    };
    await listRooms();
    for (const view of rooms.values()) if (view.joined) await enter(view);
    if (!current) await switchTo(rooms.has("general") ? "general" : [...rooms.keys()][0]);
    const why = await connection.closed;
    connection = null;
    if (stopped) return;
    for (const view of rooms.values()) view.stream = null;
    setStatus(`disconnected: ${why}; reconnecting…`, "connecting");
    attempt = 1;
  }
}

async function listRooms(): Promise<void> {
  try {
    for (const info of (await connection!.rooms())) {
      const view = room(info.name);
      view.topic = info.topic;
      if (info.unread !== null && view !== current && view.lastSeq === 0) view.unread = info.unread;
    }
    drawRooms();
  } catch (e) {
    setStatus(e instanceof Error ? e.message : String(e), "error");
  }
}

/// Moves an account's read marker to what the view shows, every 2 s at most, as `chat` does.
function markRead(): void {
  const view = current;
  if (!connection || !welcome?.account || !view || document.hidden) return;
  if (view.lastSeq <= view.marked) return;
  const seq = view.lastSeq;
  connection.request({ MarkRead: { room: view.name, seq } }).then(
    () => { view.marked = Math.max(view.marked, seq); },
    () => {},
  );
}

function showLogin(error?: string): void {
  $("login").hidden = false;
  $("chat").hidden = true;
  $("login-error").textContent = error ?? "";
  connection = null;
}

function start(given: Login): void {
  login = given;
  $("login").hidden = true;
  $("chat").hidden = false;
  run();
}

function main(): void {
  if (!("WebTransport" in window)) {
    $("login-error").textContent = "This browser has no WebTransport: use a recent Chromium, Firefox or Safari, or the chat program.";
  }
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ($("name") as HTMLInputElement).value.trim();
    const password = ($("password") as HTMLInputElement).value;
    const register = ($("register") as HTMLInputElement).checked;
    if (!name) return;
    start({ name, password, register });
  });
  const input = $("input") as HTMLTextAreaElement;
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      const text = input.value;
      input.value = "";
      send(text);
    }
  });
  input.addEventListener("paste", (event) => {
    // A paste of several lines sends each line as a message, in order, as `chat` does.
    const text = event.clipboardData?.getData("text/plain") ?? "";
    const lines = text.split(/\r?\n/).filter((line) => line.trim() !== "");
    if (lines.length < 2) return;
    event.preventDefault();
    for (const line of lines) send(line);
  });
  $("pane").addEventListener("scroll", () => {
    following = nearBottom();
    if (current && $("pane").scrollTop < 60) loadOlder(current);
  });
  window.addEventListener("pagehide", () => {
    stopped = true;
    connection?.close();
  });
  setInterval(markRead, 2000);
  const saved = sessionStorage.getItem("chat-session");
  if (saved) start(JSON.parse(saved));
}

main();
