// The chat's frames as `chat-proto` writes them: a big-endian u32 length, then postcard.
//
// Values have the shape serde_json gives the Rust types (externally tagged enums: a unit
// variant is its name, any other `{Name: value}`), so that the test vectors made by
// `chat-proto` (test/vectors.json) compare as they are. Numbers are JS numbers: sequence
// numbers and ids stay far below 2^53.

type Schema =
  | "u8"
  | "u32"
  | "u64"
  | "bool"
  | "str"
  | { opt: Schema }
  | { vec: Schema }
  | { bytes: number }
  | { struct: [string, Schema][] }
  | { enum: [string, Schema | null][] };

const opt = (s: Schema): Schema => ({ opt: s });
const vec = (s: Schema): Schema => ({ vec: s });
const struct = (...fields: [string, Schema][]): Schema => ({ struct: fields });
const variants = (...vs: [string, Schema | null][]): Schema => ({ enum: vs });

const secret: Schema = "str";
const anchor = variants(["Latest", null], ["Before", "u64"], ["After", "u64"], ["Around", "u64"]);
const moderation = variants(
  ["Kick", struct(["name", "str"], ["reason", "str"])],
  ["Ban", struct(["name", "str"], ["minutes", opt("u32")], ["reason", "str"])],
  ["Unban", struct(["name", "str"])],
  ["Mute", struct(["name", "str"], ["minutes", opt("u32")])],
  ["Unmute", struct(["name", "str"])],
  ["Op", struct(["name", "str"])],
  ["Deop", struct(["name", "str"])],
  ["Invite", struct(["name", "str"])],
  ["InviteOnly", "bool"],
  ["Topic", "str"],
  ["DeleteRoom", null],
);
const login = variants(["Password", secret], ["Register", secret]);

export const clientFrame: Schema = variants(
  ["Hello", struct(["name", "str"], ["resume", opt({ bytes: 16 })], ["login", opt(login)])],
  ["ListRooms", null],
  ["Who", struct(["room", "str"])],
  ["Join", struct(["room", "str"], ["after", opt("u64")], ["limit", "u32"])],
  ["Send", struct(["client_id", "u64"], ["body", "str"])],
  ["History", struct(["request_id", "u64"], ["anchor", anchor], ["limit", "u32"])],
  ["CreateRoom", struct(["room", "str"])],
  ["Register", struct(["password", secret])],
  ["ChangePassword", struct(["old", secret], ["new", secret])],
  ["Logout", null],
  ["Moderate", struct(["room", "str"], ["action", moderation])],
  ["MarkRead", struct(["room", "str"], ["seq", "u64"])],
);

// The order of `chat_proto::ErrorCode`: postcard writes a variant's position.
export const ERROR_CODES = [
  "NameTaken", "InvalidName", "UnknownRoom", "InvalidRoomName", "AlreadyJoined", "TooManyRooms",
  "MessageTooLong", "EmptyMessage", "TooSlow", "HistoryUnavailable", "ProtocolViolation",
  "ShuttingDown", "SlowDown", "NotAllowed", "LoginRequired", "WrongPassword", "UnknownAccount",
  "NameRegistered", "TooManyLogins", "AccountRequired", "InvalidPassword", "NotLoggedIn",
  "Banned", "InviteOnly", "Muted", "Kicked", "NotOperator", "MaybeStored",
] as const;

const limits = struct(
  ["max_message_len", "u32"], ["max_frame_len", "u32"], ["max_rooms_per_connection", "u32"],
  ["history_cap", "u64"], ["direct_history_cap", "u64"], ["messages_per_second", "u32"],
  ["message_burst", "u32"], ["max_history_page", "u32"], ["requests_per_second", "u32"],
  ["request_burst", "u32"], ["presence_limit", "u32"],
);
const chatMessage = struct(
  ["room", "str"], ["seq", "u64"], ["sender", "str"], ["timestamp_ms", "u64"], ["body", "str"],
);
const pageEnds = struct(["more_before", "bool"], ["more_after", "bool"], ["first_seq", "u64"]);
const errorFrame = struct(
  ["code", variants(...ERROR_CODES.map((c): [string, null] => [c, null]))],
  ["message", "str"], ["client_id", opt("u64")], ["last_seq", opt("u64")],
  ["retry_after_ms", opt("u64")],
);
const leftReason = variants(["Left", null], ["Disconnected", null], ["TimedOut", null], ["Dropped", null]);

export const nodeFrame: Schema = variants(
  ["Welcome", struct(["name", "str"], ["token", { bytes: 16 }], ["account", "bool"], ["limits", limits])],
  ["Rooms", struct(["rooms", vec(struct(
    ["name", "str"], ["last_seq", "u64"], ["members", "u32"], ["topic", "str"], ["unread", opt("u32")],
  ))])],
  ["Members", struct(["room", "str"], ["names", vec("str")])],
  ["Joined", struct(
    ["room", "str"], ["last_seq", "u64"], ["gap", opt(struct(["first", "u64"], ["last", "u64"]))],
    ["topic", "str"],
  )],
  ["Message", chatMessage],
  ["Ack", struct(["client_id", "u64"], ["seq", "u64"])],
  ["Error", errorFrame],
  ["HistoryEnd", pageEnds],
  ["Page", struct(["request_id", "u64"], ["messages", vec(chatMessage)], ["ends", pageEnds])],
  ["Arrived", struct(["name", "str"])],
  ["Left", struct(["name", "str"], ["reason", leftReason])],
  ["RoomCreated", struct(["room", "str"], ["existed", "bool"])],
  ["Registered", struct(["name", "str"])],
  ["PasswordChanged", struct(["sessions_ended", "u32"])],
  ["LoggedOut", null],
  ["Moderated", struct(["room", "str"])],
  ["RoomEvent", struct(["by", "str"], ["action", moderation])],
  ["Marked", struct(["room", "str"], ["seq", "u64"])],
);

export class DecodeError extends Error {}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

class Writer {
  bytes: number[] = [];
  varint(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${n} is not a u64 this page can send`);
    while (n >= 0x80) {
      this.bytes.push((n % 0x80) | 0x80);
      n = Math.floor(n / 0x80);
    }
    this.bytes.push(n);
  }
}

function write(w: Writer, schema: Schema, value: unknown): void {
  if (schema === "u8") w.bytes.push(value as number);
  else if (schema === "u32" || schema === "u64") w.varint(value as number);
  else if (schema === "bool") w.bytes.push(value ? 1 : 0);
  else if (schema === "str") {
    const bytes = utf8.encode(value as string);
    w.varint(bytes.length);
    for (const b of bytes) w.bytes.push(b);
  } else if ("opt" in schema) {
    if (value === null || value === undefined) w.bytes.push(0);
    else {
      w.bytes.push(1);
      write(w, schema.opt, value);
    }
  } else if ("vec" in schema) {
    const items = value as unknown[];
    w.varint(items.length);
    for (const item of items) write(w, schema.vec, item);
  } else if ("bytes" in schema) {
    const bytes = value as ArrayLike<number>;
    if (bytes.length !== schema.bytes) throw new RangeError(`expected ${schema.bytes} bytes`);
    for (let i = 0; i < bytes.length; i++) w.bytes.push(bytes[i]);
  } else if ("struct" in schema) {
    const fields = value as Record<string, unknown>;
    for (const [name, field] of schema.struct) write(w, field, fields[name]);
  } else {
    const [name, inner] =
      typeof value === "string" ? [value, undefined] : Object.entries(value as object)[0];
    const index = schema.enum.findIndex(([n]) => n === name);
    if (index < 0) throw new RangeError(`no variant ${name}`);
    w.varint(index);
    const payload = schema.enum[index][1];
    if (payload !== null) write(w, payload, inner);
  }
}

class Reader {
  at = 0;
  constructor(readonly bytes: Uint8Array) {}
  byte(): number {
    if (this.at >= this.bytes.length) throw new DecodeError("the frame ended early");
    return this.bytes[this.at++];
  }
  varint(max: number): number {
    let n = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      const b = this.byte();
      n += (b & 0x7f) * scale;
      if (b < 0x80) {
        if (n > max) throw new DecodeError(`a number over ${max}`);
        return n;
      }
      scale *= 0x80;
    }
    throw new DecodeError("a number too long");
  }
}

function read(r: Reader, schema: Schema): unknown {
  if (schema === "u8") return r.byte();
  if (schema === "u32") return r.varint(0xffff_ffff);
  if (schema === "u64") return r.varint(Number.MAX_SAFE_INTEGER);
  if (schema === "bool") {
    const b = r.byte();
    if (b > 1) throw new DecodeError("a bool that is neither 0 nor 1");
    return b === 1;
  }
  if (schema === "str") {
    const len = r.varint(r.bytes.length - r.at);
    const text = fromUtf8.decode(r.bytes.subarray(r.at, r.at + len));
    r.at += len;
    return text;
  }
  if ("opt" in schema) {
    const tag = r.byte();
    if (tag > 1) throw new DecodeError("an option tag that is neither 0 nor 1");
    return tag === 1 ? read(r, schema.opt) : null;
  }
  if ("vec" in schema) {
    const len = r.varint(r.bytes.length - r.at);
    const items = [];
    for (let i = 0; i < len; i++) items.push(read(r, schema.vec));
    return items;
  }
  if ("bytes" in schema) {
    const out = [];
    for (let i = 0; i < schema.bytes; i++) out.push(r.byte());
    return out;
  }
  if ("struct" in schema) {
    const out: Record<string, unknown> = {};
    for (const [name, field] of schema.struct) out[name] = read(r, field);
    return out;
  }
  const index = r.varint(schema.enum.length - 1);
  const [name, payload] = schema.enum[index];
  return payload === null ? name : { [name]: read(r, payload) };
}

/// A frame's bytes: its length, then its body.
export function encode(schema: Schema, value: unknown): Uint8Array {
  const w = new Writer();
  write(w, schema, value);
  const out = new Uint8Array(4 + w.bytes.length);
  new DataView(out.buffer).setUint32(0, w.bytes.length);
  out.set(w.bytes, 4);
  return out;
}

/// One frame's body (without its length), which must be read whole.
export function decodeBody(schema: Schema, body: Uint8Array): unknown {
  const r = new Reader(body);
  const value = read(r, schema);
  if (r.at !== body.length) throw new DecodeError("bytes after the frame's end");
  return value;
}

/// Frames as they come off a stream, in chunks cut anywhere.
export class FrameSplitter {
  private buf = new Uint8Array(0);
  constructor(private readonly maxLen: number) {}

  push(chunk: Uint8Array): Uint8Array[] {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    const frames = [];
    let at = 0;
    while (joined.length - at >= 4) {
      const len = new DataView(joined.buffer, joined.byteOffset + at).getUint32(0);
      if (len > this.maxLen) throw new DecodeError(`a frame of ${len} bytes, over ${this.maxLen}`);
      if (joined.length - at - 4 < len) break;
      frames.push(joined.slice(at + 4, at + 4 + len));
      at += 4 + len;
    }
    this.buf = joined.slice(at);
    return frames;
  }
}

/// The largest frame a node sends (`chat_proto::codec::MAX_NODE_FRAME_LEN`).
export const MAX_NODE_FRAME_LEN = 4 << 20;
