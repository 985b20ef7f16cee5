// The page's codec against chat-proto: every frame in vectors.json (written by
// proto/tests/vectors.rs) decodes to the frame chat-proto encoded, and encodes back to
// the same bytes.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { clientFrame, decodeBody, DecodeError, encode, FrameSplitter, nodeFrame } from "../src/codec";

interface Vector {
  direction: "client" | "node";
  frame: unknown;
  hex: string;
}

const vectors: Vector[] = JSON.parse(readFileSync("test/vectors.json", "utf8"));
const bytes = (hex: string) => Uint8Array.from(hex.match(/../g)!.map((b) => parseInt(b, 16)));
const hexOf = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");

test("the vectors cover both directions", () => {
  assert.ok(vectors.filter((v) => v.direction === "client").length >= 20);
  assert.ok(vectors.filter((v) => v.direction === "node").length >= 60);
});

for (const [i, v] of vectors.entries()) {
  const schema = v.direction === "client" ? clientFrame : nodeFrame;
  const name = typeof v.frame === "string" ? v.frame : Object.keys(v.frame as object)[0];
  test(`${v.direction} frame ${i} (${name}) decodes and encodes as chat-proto does`, () => {
    const frame = bytes(v.hex);
    assert.deepEqual(decodeBody(schema, frame.subarray(4)), v.frame);
    assert.equal(hexOf(encode(schema, v.frame)), v.hex);
  });
}

test("frames cut anywhere come out whole and in order", () => {
  const all = vectors.filter((v) => v.direction === "node").map((v) => bytes(v.hex));
  const stream = Uint8Array.from(all.flatMap((b) => [...b]));
  const splitter = new FrameSplitter(1 << 20);
  const out: Uint8Array[] = [];
  for (let at = 0; at < stream.length; at += 7) out.push(...splitter.push(stream.subarray(at, at + 7)));
  assert.deepEqual(out.map(hexOf), all.map((b) => hexOf(b.subarray(4))));
});

test("a frame over the limit is refused before it is read", () => {
  const splitter = new FrameSplitter(100);
  assert.throws(() => splitter.push(Uint8Array.from([0, 0, 1, 0])), DecodeError);
});

test("bad bytes are refused, not misread", () => {
  assert.throws(() => decodeBody(nodeFrame, Uint8Array.from([200])), DecodeError); // no such variant
  assert.throws(() => decodeBody(nodeFrame, Uint8Array.from([4, 3, 97])), DecodeError); // cut short
  const ack = bytes(vectors.find((v) => (v.frame as any).Ack)!.hex).subarray(4);
  assert.throws(() => decodeBody(nodeFrame, Uint8Array.from([...ack, 0])), DecodeError); // trailing
});
