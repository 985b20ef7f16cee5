// The chat over WebTransport: the same streams and frames as the native client. The first
// bidirectional stream is the control stream (hello, room listings, who), then one per room
// (join, then history, live messages and acks one way, sends the other).

import { clientFrame, decodeBody, encode, FrameSplitter, MAX_NODE_FRAME_LEN, nodeFrame } from "./codec";

export interface ChatMessage {
  room: string;
  seq: number;
  sender: string;
  timestamp_ms: number;
  body: string;
}

export interface ErrorFrame {
  code: string;
  message: string;
  client_id: number | null;
  last_seq: number | null;
  retry_after_ms: number | null;
}

export interface Limits {
  max_message_len: number;
  max_history_page: number;
  [name: string]: number;
}

export interface Welcome {
  name: string;
  token: number[];
  account: boolean;
  limits: Limits;
}

export interface RoomInfo {
  name: string;
  last_seq: number;
  members: number;
  topic: string;
  unread: number | null;
}

export interface PageEnds {
  more_before: boolean;
  more_after: boolean;
  first_seq: number;
}

// A node frame: `{Name: fields}`, or a unit variant's name.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type NodeFrame = any;

/// An error the node answered with, as its sentence for a person.
export class Refused extends Error {
  constructor(readonly frame: ErrorFrame) {
    super(frame.message);
  }
}

/// One bidirectional stream's frames.
class FrameStream {
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private readonly writer: WritableStreamDefaultWriter<Uint8Array>;
  private readonly splitter = new FrameSplitter(MAX_NODE_FRAME_LEN);
  private ready: Uint8Array[] = [];

  constructor(stream: WebTransportBidirectionalStream) {
    this.reader = stream.readable.getReader();
    this.writer = stream.writable.getWriter();
  }

  /// The next frame, or null once the node has ended the stream.
  async next(): Promise<NodeFrame | null> {
    while (this.ready.length === 0) {
      const { value, done } = await this.reader.read();
      if (done) return null;
      this.ready = this.splitter.push(value);
    }
    return decodeBody(nodeFrame, this.ready.shift()!);
  }

  async send(frame: unknown): Promise<void> {
    await this.writer.write(encode(clientFrame, frame));
  }

  close(): void {
    this.writer.close().catch(() => {});
    this.reader.cancel().catch(() => {});
  }
}

export interface Login {
  name: string;
  password?: string;
  register?: boolean;
  /// The token of an earlier session, to take the name back from it.
  resume?: number[];
}

/// How the page reaches the node: the hashes of the certificates to accept.
interface SessionInfo {
  /// The node's address, or null for the page's own host.
  host: string | null;
  port: number;
  path: string;
  hashes: number[][];
}

/// A session with the node.
export class Connection {
  private answers: { resolve: (f: NodeFrame) => void; reject: (e: Error) => void }[] = [];
  onDirect: (message: ChatMessage) => void = () => {};
  readonly closed: Promise<string>;

  private constructor(
    private readonly transport: WebTransport,
    private readonly control: FrameStream,
    readonly welcome: Welcome,
  ) {
    this.closed = transport.closed.then(
      (info) => info.reason || "the node closed the connection",
      (e) => `the connection was lost (${e?.message ?? e})`,
    );
    this.readControl();
  }

  static async open(login: Login): Promise<Connection> {
    const info: SessionInfo = await (await fetch("/session.json", { cache: "no-store" })).json();
    const url = `https://${info.host ?? location.hostname}:${info.port}${info.path}`;
    const options: WebTransportOptions = {};
    if (info.hashes.length > 0) {
      options.serverCertificateHashes = info.hashes.map((h) => ({
        algorithm: "sha-256",
        value: new Uint8Array(h),
      }));
    }
    const transport = new WebTransport(url, options);
    await transport.ready;
    const control = new FrameStream(await transport.createBidirectionalStream());
    const password = login.password ? login.password : null;
    await control.send({
      Hello: {
        name: login.name,
        resume: login.resume ?? null,
        login: password === null ? null : login.register ? { Register: password } : { Password: password },
      },
    });
    const answer = await control.next();
    if (answer === null) throw new Error("the node ended the connection before its welcome");
    if (answer.Error) {
      transport.close();
      throw new Refused(answer.Error);
    }
    return new Connection(transport, control, answer.Welcome);
  }

  private async readControl(): Promise<void> {
    try {
      for (;;) {
        const frame = await this.control.next();
        if (frame === null) break;
        if (frame.Message) {
          this.onDirect(frame.Message);
          continue;
        }
        this.answers.shift()?.resolve(frame);
      }
    } catch {
      // The connection ended; `closed` says why.
    }
    for (const answer of this.answers.splice(0)) answer.reject(new Error("the connection ended"));
  }

  /// A control request; its answer (an error frame is thrown as `Refused`).
  async request(frame: unknown): Promise<NodeFrame> {
    const answer = new Promise<NodeFrame>((resolve, reject) => this.answers.push({ resolve, reject }));
    await this.control.send(frame);
    const reply = await answer;
    if (reply.Error) throw new Refused(reply.Error);
    return reply;
  }

  async rooms(): Promise<RoomInfo[]> {
    return (await this.request("ListRooms")).Rooms.rooms;
  }

  /// Joins `room` with the messages after `after` (or the newest page for null).
  async join(room: string, after: number | null, events: RoomEvents): Promise<RoomStream> {
    const stream = new FrameStream(await this.transport.createBidirectionalStream());
    await stream.send({ Join: { room, after, limit: this.welcome.limits.max_history_page } });
    const first = await stream.next();
    if (first === null) throw new Error(`the node ended the stream of ${room}`);
    if (first.Error) throw new Refused(first.Error);
    return new RoomStream(stream, first.Joined, events);
  }

  close(): void {
    this.transport.close({ closeCode: 0, reason: "bye" });
  }
}

export interface RoomEvents {
  message(message: ChatMessage, live: boolean): void;
  historyEnd(ends: PageEnds): void;
  /// Arrivals, departures, moderation: any other frame of the room.
  other(frame: NodeFrame): void;
  /// The stream ended: with the node's error, or null when the connection went.
  ended(error: ErrorFrame | null): void;
}

/// A room joined: its history, then live messages; sends and history pages.
export class RoomStream {
  private nextId = Math.floor(Math.random() * 2 ** 31);
  private waiting = new Map<number, { resolve: (f: NodeFrame) => void; reject: (e: Error) => void }>();
  private historyDone = false;

  constructor(
    private readonly stream: FrameStream,
    readonly joined: { room: string; last_seq: number; topic: string; gap: { first: number; last: number } | null },
    private readonly events: RoomEvents,
  ) {
    this.read();
  }

  private async read(): Promise<void> {
    let error: ErrorFrame | null = null;
    try {
      for (;;) {
        const frame = await this.stream.next();
        if (frame === null) break;
        if (frame.Message) this.events.message(frame.Message, this.historyDone);
        else if (frame.HistoryEnd) {
          this.historyDone = true;
          this.events.historyEnd(frame.HistoryEnd);
        } else if (frame.Ack) this.answer(frame.Ack.client_id, frame);
        else if (frame.Page) this.answer(frame.Page.request_id, frame);
        else if (frame.Error && frame.Error.client_id !== null) this.answer(frame.Error.client_id, frame);
        else if (frame.Error) {
          error = frame.Error;
          break;
        } else this.events.other(frame);
      }
    } catch {
      // The connection went.
    }
    for (const waiter of this.waiting.values()) waiter.reject(new Error("the room's stream ended"));
    this.waiting.clear();
    this.events.ended(error);
  }

  private answer(id: number, frame: NodeFrame): void {
    const waiter = this.waiting.get(id);
    this.waiting.delete(id);
    if (!waiter) return;
    if (frame.Error) waiter.reject(new Refused(frame.Error));
    else waiter.resolve(frame);
  }

  private ask(frame: (id: number) => unknown): { id: number; answer: Promise<NodeFrame> } {
    const id = this.nextId++;
    const answer = new Promise<NodeFrame>((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    this.stream.send(frame(id)).catch((e) => {
      this.waiting.get(id)?.reject(e instanceof Error ? e : new Error(String(e)));
      this.waiting.delete(id);
    });
    return { id, answer };
  }

  /// Posts `body`: its client id at once, and the sequence number once stored.
  send(body: string): { clientId: number; stored: Promise<number> } {
    const { id, answer } = this.ask((client_id) => ({ Send: { client_id, body } }));
    return { clientId: id, stored: answer.then((f) => f.Ack.seq) };
  }

  /// A page of older (or newer) messages.
  async history(anchor: unknown, limit: number): Promise<{ messages: ChatMessage[]; ends: PageEnds }> {
    const { answer } = this.ask((request_id) => ({ History: { request_id, anchor, limit } }));
    return (await answer).Page;
  }

  /// Leaves the room.
  close(): void {
    this.stream.close();
  }
}
