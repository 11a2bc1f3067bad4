// The decoders against arbitrary splits, truncation and corruption of recorded valid streams:
// same events however the bytes are chunked; a prefix is a clean "incomplete" state; corrupted
// input either decodes or throws ProtocolError, never anything else, never a page outside its
// block. Seeded (POSTCOPY_FUZZ_SEED) so a failure reproduces.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Bitmap, RamBlock, RamList } from '../../src/memory/index.js';
import {
  Command,
  ReturnPathDecoder,
  ReturnPathEncoder,
  Role,
  StreamDecoder,
  StreamEncoder,
  encodeChallenge,
  encodeHelloAck,
  encodePong,
  encodeRecvBitmap,
  encodeRefuse,
  encodeResumeAck,
  encodeShut,
  type ReturnPathEvent,
  type StreamEvent,
} from '../../src/wire/index.js';
import { ProtocolError } from '../../src/base/index.js';
import { seededRandom } from '../../src/testing/index.js';

const SEED = Number(process.env.POSTCOPY_FUZZ_SEED ?? 0x5eed1234);
const PAGE = 4096;
const MiB = 1024 * 1024;

const blocks = new RamList([
  new RamBlock({ idstr: 'pc.ram', usedLength: 1 * MiB }),
  new RamBlock({ idstr: 'huge', usedLength: 4 * MiB, pageSize: 2 * MiB }),
  new RamBlock({ idstr: 'vga', usedLength: 64 * 1024 }),
]);

/** A recorded stream: its bytes and which byte ranges are structure (not page/blob payload). */
interface Recording {
  bytes: Uint8Array;
  structural: number[];
}

function record(parts: [Uint8Array, boolean][]): Recording {
  const bytes = new Uint8Array(parts.reduce((n, [p]) => n + p.length, 0));
  const structural: number[] = [];
  let at = 0;
  for (const [part, isStructure] of parts) {
    bytes.set(part, at);
    if (isStructure) for (let i = 0; i < part.length; i++) structural.push(at + i);
    at += part.length;
  }
  return { bytes, structural };
}

function validStream(): Recording {
  const rand = seededRandom(SEED);
  const enc = new StreamEncoder();
  const parts: [Uint8Array, boolean][] = [];
  const s = (b: Uint8Array) => parts.push([b, true]);
  const pageData = () => new Uint8Array(PAGE).map(() => Math.floor(rand() * 256));
  const pageRecord = (block: RamBlock, offset: number) => {
    const [head, data] = enc.ramPageParts(block, offset, pageData());
    s(head);
    parts.push([data, false]);
  };
  const [pc, huge, vga] = blocks.blocks;
  s(enc.header());
  s(enc.hello({ sessionId: 'fuzz', role: Role.MAIN, index: 0, capabilities: 3, auth: new Uint8Array(32).fill(1) }));
  s(enc.openReturnPath());
  s(enc.advise(blocks.pageSizeSummary));
  s(enc.memSize(blocks.blocks.map(({ idstr, usedLength, pageSize }) => ({ idstr, usedLength, pageSize }))));
  pageRecord(pc, 0);
  s(enc.ramZero(pc, PAGE)); // CONTINUE
  pageRecord(pc, 1 * MiB - PAGE); // last page of the block, CONTINUE
  s(enc.ramZero(vga, 0)); // block change
  s(enc.ramZero(vga, 15 * PAGE));
  pageRecord(huge, 2 * MiB); // first target page of the second host page
  s(enc.ramZero(huge, 2 * MiB + PAGE));
  s(enc.multifdFlush());
  pageRecord(vga, 3 * PAGE);
  s(enc.endRam());
  s(enc.discard(huge, [[0, 2 * MiB]]));
  s(enc.discard(pc, [[PAGE, 3 * PAGE], [64 * PAGE, PAGE]]));
  s(enc.listen());
  s(enc.ping(0x1234));
  pageRecord(pc, 8 * PAGE); // new frame: the current block (vga) is still current, so this names pc.ram
  s(enc.ramZero(pc, 9 * PAGE));
  s(enc.endRam());
  const blob = new Uint8Array(1500).map(() => Math.floor(rand() * 256));
  s(enc.packagedHeader(blob.length));
  parts.push([blob, false]);
  s(enc.run());
  s(enc.recvBitmap('huge'));
  s(enc.resume());
  s(enc.complete());
  s(enc.eof());
  return record(parts);
}

function validReturnPath(): Recording {
  const rp = new ReturnPathEncoder();
  const received = new Bitmap(blocks.byId('huge')!.targetPages);
  received.setRange(0, 512);
  received.set(700);
  const vgaMap = new Bitmap(16);
  vgaMap.set(3);
  return record([
    [encodeChallenge(new Uint8Array(32).map((_, i) => i * 3)), true],
    [encodeHelloAck(7), true],
    [rp.requestPages('pc.ram', 4 * PAGE, PAGE), true],
    [rp.requestPages('pc.ram', 9 * PAGE, 2 * PAGE), true],
    [rp.requestPages('huge', 2 * MiB, 2 * MiB), true],
    [rp.requestPages('vga', 15 * PAGE, PAGE), true],
    [encodePong(99), true],
    [encodeRecvBitmap('huge', received), true],
    [encodeRecvBitmap('vga', vgaMap), true],
    [encodeResumeAck(1), true],
    [encodeRefuse('nope'), true],
    [encodeShut(0), true],
  ]);
}

// ---- decoding with invariant checks ----

interface Outcome<E> {
  events: E[];
  error?: unknown;
  /** finish() succeeded (the whole input was a complete stream). */
  complete: boolean;
}

/** Every page or zero page lies inside its block, page aligned; discards and requests too. */
function checkStreamEvent(e: StreamEvent<RamBlock>): void {
  if (e.type === 'ram-page' || e.type === 'ram-zero') {
    if (!(e.offset >= 0 && e.offset < e.block.postcopyLength && e.offset % PAGE === 0)) assert.fail(`offset 0x${e.offset.toString(16)} outside '${e.idstr}'`);
    if (e.block !== blocks.byId(e.idstr)) assert.fail(`event block is not '${e.idstr}'`);
    if (e.type === 'ram-page' && e.data.length !== PAGE) assert.fail(`page of ${e.data.length} bytes`);
  } else if (e.type === 'command' && e.cmd === Command.POSTCOPY_RAM_DISCARD) {
    for (const [start, length] of e.ranges) assert.ok(start >= 0 && length > 0 && start + length <= e.block.postcopyLength);
  }
}

function checkReturnPathEvent(e: ReturnPathEvent<RamBlock>): void {
  if (e.type === 'req-pages') {
    if (!(e.start >= 0 && e.length > 0 && e.start + e.length <= e.block.postcopyLength)) assert.fail(`request outside '${e.idstr}'`);
  } else if (e.type === 'recv-bitmap') {
    assert.equal(e.bitmap.size, e.block.targetPages);
  }
}

interface Decoder<E> {
  push(chunk: Uint8Array): void;
  next(): E | undefined;
  finish(): void;
}

/** Feeds chunks to a decoder, checking each event; a failure must be a sticky ProtocolError. */
function runDecoder<E>(decoder: Decoder<E>, check: (e: E) => void, chunks: Iterable<Uint8Array>, maxEvents: number): Outcome<E> {
  const events: E[] = [];
  try {
    for (const chunk of chunks) {
      decoder.push(chunk);
      for (let e = decoder.next(); e !== undefined; e = decoder.next()) {
        check(e);
        events.push(e);
        if (events.length > maxEvents) assert.fail('runaway decoder');
      }
    }
    decoder.finish();
    return { events, complete: true };
  } catch (error) {
    if (error instanceof assert.AssertionError) throw error;
    assert.ok(error instanceof ProtocolError, `not a ProtocolError: ${(error as Error)?.stack ?? String(error)}`);
    assert.throws(() => decoder.next(), (e) => e === error, 'sticky');
    return { events, error, complete: false };
  }
}

function runStream(chunks: Iterable<Uint8Array>, maxEvents: number): Outcome<StreamEvent<RamBlock>> {
  return runDecoder(new StreamDecoder({ blocks }), checkStreamEvent, chunks, maxEvents);
}

function runReturnPath(chunks: Iterable<Uint8Array>, maxEvents: number): Outcome<ReturnPathEvent<RamBlock>> {
  return runDecoder(new ReturnPathDecoder({ blocks }), checkReturnPathEvent, chunks, maxEvents);
}

/** A cheap signature of an event; its byte arrays are collected to compare with memcmp. */
function signature(event: object, arrays: Uint8Array[]): string {
  const e = event as StreamEvent<RamBlock>;
  if (e.type === 'ram-page') {
    arrays.push(e.data);
    return `page ${e.idstr} ${e.offset} ${e.block.idstr}`;
  }
  if (e.type === 'ram-zero') return `zero ${e.idstr} ${e.offset} ${e.block.idstr}`;
  let out = '';
  for (const [key, value] of Object.entries(event)) {
    let text: string;
    if (value instanceof Uint8Array) {
      arrays.push(value);
      text = `<${value.length} bytes>`;
    } else if (value instanceof RamBlock) {
      text = `<block ${value.idstr}>`;
    } else if (value instanceof Bitmap) {
      arrays.push(value.toLittleEndianBytes());
      text = `<bitmap ${value.size} ${value.count()}>`;
    } else if (typeof value === 'object' && value !== null) {
      text = JSON.stringify(value);
    } else {
      text = String(value);
    }
    out += `${key}=${text};`;
  }
  return out;
}

const signatures = new WeakMap<object, [string, Uint8Array[]]>();

/** Signatures of reference events are computed once. */
function cachedSignature(event: object): [string, Uint8Array[]] {
  let entry = signatures.get(event);
  if (entry === undefined) {
    const arrays: Uint8Array[] = [];
    entry = [signature(event, arrays), arrays];
    signatures.set(event, entry);
  }
  return entry;
}

function sameEvents(actual: object[], expected: object[], what: string): void {
  if (actual.length !== expected.length) assert.fail(`${what}: ${actual.length} events, expected ${expected.length}`);
  // Hot loop (tens of thousands of runs): build messages only on failure.
  for (let i = 0; i < expected.length; i++) {
    const a: Uint8Array[] = [];
    const [sig, b] = cachedSignature(expected[i]);
    const actualSig = signature(actual[i], a);
    if (actualSig !== sig) assert.equal(actualSig, sig, `${what}: event ${i}`);
    for (let k = 0; k < a.length; k++) {
      if (Buffer.compare(a[k], b[k]) !== 0) assert.fail(`${what}: event ${i} bytes differ`);
    }
  }
}

function* bytewise(bytes: Uint8Array): Generator<Uint8Array> {
  for (let i = 0; i < bytes.length; i++) yield bytes.subarray(i, i + 1);
}

function mutate(rec: Recording, rand: () => number): Uint8Array {
  let bytes = rec.bytes.slice();
  const pick = () => (rand() < 0.85 ? rec.structural[Math.floor(rand() * rec.structural.length)] : Math.floor(rand() * rec.bytes.length));
  const edits = 1 + Math.floor(rand() * 3);
  for (let k = 0; k < edits; k++) {
    const at = Math.min(pick(), bytes.length - 1);
    const kind = rand();
    if (kind < 0.45) bytes[at] ^= 1 << Math.floor(rand() * 8);
    else if (kind < 0.7) bytes[at] = Math.floor(rand() * 256);
    else if (kind < 0.8) bytes[at] = [0, 0xff, 0x7f, 0x80][Math.floor(rand() * 4)];
    else if (kind < 0.9) bytes = Buffer.concat([bytes.subarray(0, at), Uint8Array.of(Math.floor(rand() * 256)), bytes.subarray(at)]);
    else bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1)]);
  }
  if (rand() < 0.1) bytes = bytes.subarray(0, Math.floor(rand() * bytes.length));
  return new Uint8Array(bytes); // plain, so events compare alike however they were chunked
}

function randomChunks(bytes: Uint8Array, rand: () => number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; ) {
    const size = rand() < 0.3 ? 1 + Math.floor(rand() * 16) : 1 + Math.floor(rand() * 6000);
    chunks.push(bytes.subarray(at, at + size));
    at += size;
  }
  return chunks;
}

// ---- source -> destination stream ----

const stream = validStream();
const reference = runStream([stream.bytes], 1000);

test(`stream fuzz (seed ${SEED}): the recording decodes completely`, () => {
  assert.ok(reference.complete, String(reference.error));
  const types = reference.events.map((e) => (e.type === 'command' ? `cmd${e.cmd}` : e.type));
  assert.deepEqual(types, [
    'header', 'cmd32', 'cmd1', 'cmd3', 'mem-size', 'ram-page', 'ram-zero', 'ram-page', 'ram-zero', 'ram-zero', 'ram-page',
    'ram-zero', 'multifd-flush', 'ram-page', 'ram-eos', 'cmd6', 'cmd6', 'cmd4', 'cmd2', 'ram-page', 'ram-zero', 'ram-eos',
    'cmd8', 'cmd5', 'cmd10', 'cmd7', 'cmd33', 'eof',
  ]);
});

test(`stream fuzz (seed ${SEED}): split at every byte position, and one byte at a time, gives the same events`, () => {
  const bytes = stream.bytes;
  for (let cut = 0; cut <= bytes.length; cut++) {
    const out = runStream([bytes.subarray(0, cut), bytes.subarray(cut)], 1000);
    assert.ok(out.complete, `split at ${cut}: ${String(out.error)}`);
    sameEvents(out.events, reference.events, `split at ${cut}`);
  }
  const one = runStream(bytewise(bytes), 1000);
  assert.ok(one.complete, String(one.error));
  sameEvents(one.events, reference.events, 'byte at a time');
});

test(`stream fuzz (seed ${SEED}): truncated at every byte position is a clean incomplete state`, () => {
  const bytes = stream.bytes;
  for (let cut = 0; cut < bytes.length; cut++) {
    const decoder = new StreamDecoder({ blocks });
    decoder.push(bytes.subarray(0, cut));
    const events = [...decoder.events()]; // a prefix of a valid stream never errors
    assert.ok(events.length <= reference.events.length);
    sameEvents(events, reference.events.slice(0, events.length), `prefix ${cut}`);
    assert.ok(decoder.pending <= cut);
    let error: unknown;
    try {
      decoder.finish();
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof ProtocolError && error.message.startsWith('stream truncated: '), `prefix ${cut}: ${String(error)}`);
  }
});

test(`stream fuzz (seed ${SEED}): random corruption decodes or throws ProtocolError, never writes outside a block`, () => {
  const rand = seededRandom(SEED ^ 0xc0ffee);
  const tally = { complete: 0, protocolError: 0, truncated: 0 };
  for (let round = 0; round < 3000; round++) {
    const bytes = mutate(stream, rand);
    const chunks = rand() < 0.5 ? [bytes] : randomChunks(bytes, rand);
    const out = runStream(chunks, bytes.length + 10);
    if (out.complete) tally.complete++;
    else if ((out.error as Error).message.startsWith('stream truncated')) tally.truncated++;
    else tally.protocolError++;
    // However it was chunked, the same input gives the same outcome.
    if (round % 10 === 0) {
      const whole = runStream([bytes], bytes.length + 10);
      assert.equal(whole.complete, out.complete);
      assert.equal((whole.error as Error | undefined)?.message, (out.error as Error | undefined)?.message, `round ${round}`);
      sameEvents(whole.events, out.events, `round ${round}`);
    }
  }
  assert.ok(tally.protocolError > 1000, `corruption is mostly caught: ${JSON.stringify(tally)}`);
});

// ---- return path ----

const rpStream = validReturnPath();
const rpReference = runReturnPath([rpStream.bytes], 1000);

test(`return path fuzz (seed ${SEED}): splits, byte-at-a-time and truncation`, () => {
  assert.ok(rpReference.complete, String(rpReference.error));
  assert.deepEqual(
    rpReference.events.map((e) => e.type),
    ['challenge', 'hello-ack', 'req-pages', 'req-pages', 'req-pages', 'req-pages', 'pong', 'recv-bitmap', 'recv-bitmap', 'resume-ack', 'refuse', 'shut'],
  );
  const bytes = rpStream.bytes;
  for (let cut = 0; cut <= bytes.length; cut++) {
    const out = runReturnPath([bytes.subarray(0, cut), bytes.subarray(cut)], 1000);
    assert.ok(out.complete, `split at ${cut}: ${String(out.error)}`);
    sameEvents(out.events, rpReference.events, `split at ${cut}`);
  }
  const one = runReturnPath(bytewise(bytes), 1000);
  sameEvents(one.events, rpReference.events, 'byte at a time');
  const messageEnds = new Set<number>([0]);
  {
    // Offsets where a whole message ends: the only prefixes finish() accepts.
    const decoder = new ReturnPathDecoder({ blocks });
    for (let i = 0; i < bytes.length; i++) {
      decoder.push(bytes.subarray(i, i + 1));
      if (decoder.next() !== undefined) messageEnds.add(i + 1);
    }
  }
  for (let cut = 0; cut < bytes.length; cut++) {
    const decoder = new ReturnPathDecoder({ blocks });
    decoder.push(bytes.subarray(0, cut));
    const events = [...decoder.events()];
    sameEvents(events, rpReference.events.slice(0, events.length), `prefix ${cut}`);
    if (messageEnds.has(cut)) decoder.finish();
    else assert.throws(() => decoder.finish(), /^ProtocolError: return path truncated: \d+ byte\(s\) of an incomplete message pending$/);
  }
});

test(`return path fuzz (seed ${SEED}): random corruption decodes or throws ProtocolError`, () => {
  const rand = seededRandom(SEED ^ 0xbadf00d);
  let caught = 0;
  for (let round = 0; round < 3000; round++) {
    const bytes = mutate(rpStream, rand);
    const chunks = rand() < 0.5 ? [bytes] : randomChunks(bytes, rand);
    const out = runReturnPath(chunks, bytes.length + 10);
    if (!out.complete) caught++;
  }
  assert.ok(caught > 1000, `corruption is mostly caught (${caught} of 3000)`);
});
