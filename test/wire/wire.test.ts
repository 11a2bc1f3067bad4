// Wire format v1: round trips of every frame and message, exact byte layouts where they must
// match QEMU, and every rejection with the field and value its message names.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { Bitmap, RamBlock, RamList } from '../../src/memory/index.js';
import {
  Command,
  RamFlag,
  ReturnPathDecoder,
  ReturnPathEncoder,
  ReturnPathType,
  Role,
  StreamDecoder,
  StreamEncoder,
  authEqual,
  createNonce,
  encodeAdvise,
  encodeChallenge,
  encodeCommand,
  encodeDiscard,
  encodeEof,
  encodeHeader,
  encodeHello,
  encodeHelloAck,
  encodeMemSize,
  encodePackaged,
  encodePackagedHeader,
  encodePing,
  encodePong,
  encodeRamPage,
  encodeRamZero,
  encodeRecvBitmap,
  encodeRecvBitmapCommand,
  encodeRefuse,
  encodeReqPages,
  encodeReqPagesId,
  encodeResumeAck,
  encodeShut,
  helloAuth,
  maxDiscardPairs,
  verifyHelloAuth,
  type HelloFields,
  type ReturnPathEvent,
  type StreamDecoderOptions,
  type StreamEvent,
} from '../../src/wire/index.js';
import { ProtocolError } from '../../src/base/index.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4096;

function makeBlocks(): RamList {
  return new RamList([
    new RamBlock({ idstr: 'pc.ram', usedLength: 512 * MiB }),
    new RamBlock({ idstr: 'huge', usedLength: 8 * MiB, pageSize: 2 * MiB }),
    new RamBlock({ idstr: 'vga', usedLength: 64 * KiB }),
  ]);
}

const blocks = makeBlocks();
const pcRam = blocks.byId('pc.ram')!;
const huge = blocks.byId('huge')!;
const vga = blocks.byId('vga')!;

const HELLO: HelloFields = { sessionId: 'session-1', role: Role.MAIN, index: 0, capabilities: 0x5, auth: new Uint8Array(32).fill(7) };

// ---- byte builders for hand-made (malformed) input ----
const u8 = (v: number) => Buffer.of(v);
const u16 = (v: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
};
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
const u64 = (v: number | bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
};
const str = (s: string) => Buffer.concat([u8(Buffer.byteLength(s)), Buffer.from(s)]);
const cat = (...parts: Uint8Array[]) => Buffer.concat(parts);
const command = (cmd: number, payload: Uint8Array) => cat(u8(0x08), u16(cmd), u16(payload.length), payload);
const rp = (type: number, payload: Uint8Array) => cat(u16(type), u16(payload.length), payload);

/** magic, version, HELLO: what every channel starts with. */
const prologue = () => cat(encodeHeader(), encodeHello(HELLO));

function page(fill: number): Uint8Array {
  const data = new Uint8Array(PAGE);
  for (let i = 0; i < PAGE; i++) data[i] = (fill + i) & 0xff;
  return data;
}

function decode(bytes: Uint8Array, options: Partial<StreamDecoderOptions<RamBlock>> = {}): StreamEvent<RamBlock>[] {
  const decoder = new StreamDecoder({ blocks, ...options });
  decoder.push(new Uint8Array(bytes)); // plain Uint8Array: views handed out compare equal to Uint8Arrays
  const events = [...decoder.events()];
  decoder.finish();
  return events;
}

interface Decoder {
  push(bytes: Uint8Array): void;
  next(): unknown;
  finish(): void;
}

/** Feeds `bytes` to `decoder` expecting exactly `message`; checks the error is sticky. */
function rejectsWith(decoder: Decoder, bytes: Uint8Array, message: string): void {
  let thrown: unknown;
  try {
    decoder.push(bytes);
    for (;;) if (decoder.next() === undefined) break;
    decoder.finish();
  } catch (error) {
    thrown = error;
  }
  assert.ok(thrown instanceof ProtocolError, `expected ProtocolError "${message}", got ${String(thrown)}`);
  assert.equal(thrown.code, 'ERR_POSTCOPY_PROTOCOL');
  assert.equal(thrown.message, message);
  assert.throws(() => decoder.next(), (e) => e === thrown, 'next() rethrows the same error');
}

function rejects(bytes: Uint8Array, message: string, options: Partial<StreamDecoderOptions<RamBlock>> = {}): void {
  const decoder = new StreamDecoder({ blocks, ...options });
  rejectsWith(decoder, bytes, message);
  assert.equal(decoder.state, 'failed');
  assert.throws(() => decoder.push(Uint8Array.of(0)), (e) => e instanceof ProtocolError && e.message === message, 'push() rethrows the same error');
}

function rpDecode(bytes: Uint8Array): ReturnPathEvent<RamBlock>[] {
  const decoder = new ReturnPathDecoder({ blocks });
  decoder.push(bytes);
  const events = [...decoder.events()];
  decoder.finish();
  return events;
}

function rpRejects(bytes: Uint8Array, message: string): void {
  const decoder = new ReturnPathDecoder({ blocks });
  rejectsWith(decoder, bytes, message);
  assert.ok(decoder.failed);
}

// ---- round trips ----

test('stream: header, HELLO and every command round-trip', () => {
  const enc = new StreamEncoder();
  const blob = new Uint8Array(100_000).map((_, i) => i * 7);
  const bytes = cat(
    enc.header(),
    enc.hello(HELLO),
    enc.openReturnPath(),
    enc.ping(0xdeadbeef),
    enc.advise(blocks.pageSizeSummary),
    enc.discard(huge, [[0, 2 * MiB], [4 * MiB, 4 * MiB]]),
    enc.listen(),
    enc.packaged(blob),
    enc.run(),
    enc.recvBitmap('vga'),
    enc.resume(),
    enc.complete(),
    enc.eof(),
  );
  const events = decode(bytes);
  assert.deepEqual(events, [
    { type: 'header', version: 1 },
    { type: 'command', cmd: Command.HELLO, ...HELLO },
    { type: 'command', cmd: Command.OPEN_RETURN_PATH },
    { type: 'command', cmd: Command.PING, value: 0xdeadbeef },
    { type: 'command', cmd: Command.POSTCOPY_ADVISE, pageSizeSummary: 0x201000, targetPageSize: 4096 },
    { type: 'command', cmd: Command.POSTCOPY_RAM_DISCARD, block: huge, idstr: 'huge', ranges: [[0, 2 * MiB], [4 * MiB, 4 * MiB]] },
    { type: 'command', cmd: Command.POSTCOPY_LISTEN },
    { type: 'command', cmd: Command.PACKAGED, data: blob },
    { type: 'command', cmd: Command.POSTCOPY_RUN },
    { type: 'command', cmd: Command.RECV_BITMAP, block: vga, idstr: 'vga' },
    { type: 'command', cmd: Command.POSTCOPY_RESUME },
    { type: 'command', cmd: Command.COMPLETE },
    { type: 'eof' },
  ]);
});

test('stream: RAM frame with MEM_SIZE, PAGE, ZERO, CONTINUE, MULTIFD_FLUSH and EOS round-trips', () => {
  const enc = new StreamEncoder();
  const p1 = page(1);
  const p2 = page(2);
  const p3 = page(3);
  const memSize = [
    { idstr: 'pc.ram', usedLength: 512 * MiB, pageSize: PAGE },
    { idstr: 'huge', usedLength: 8 * MiB, pageSize: 2 * MiB },
    { idstr: 'vga', usedLength: 64 * KiB, pageSize: PAGE },
  ];
  const mem = enc.memSize(memSize);
  const first = enc.ramPage(pcRam, 0x1000, p1);
  const second = enc.ramPage('pc.ram', 0x1fff_f000, p2);
  const bytes = cat(
    prologue(),
    mem,
    first,
    second,
    enc.ramZero('pc.ram', 0x2000),
    enc.ramZero(huge, 2 * MiB + PAGE),
    enc.multifdFlush(),
    enc.ramPage(vga, 0xf000, p3),
    enc.endRam(),
    enc.eof(),
  );
  assert.equal(mem[0], 0x02, 'the first record opens the RAM frame');
  assert.equal(first.length, 8 + 1 + 6 + PAGE, 'first page names its block');
  assert.equal(second.length, 8 + PAGE, 'same block: CONTINUE, no idstr');
  assert.equal(second.readUInt32BE(4) & 0xfff, RamFlag.PAGE | RamFlag.CONTINUE);
  const events = decode(bytes).slice(2);
  assert.deepEqual(events, [
    { type: 'mem-size', total: 512 * MiB + 8 * MiB + 64 * KiB, blocks: memSize },
    { type: 'ram-page', block: pcRam, idstr: 'pc.ram', offset: 0x1000, data: p1 },
    { type: 'ram-page', block: pcRam, idstr: 'pc.ram', offset: 0x1fff_f000, data: p2 },
    { type: 'ram-zero', block: pcRam, idstr: 'pc.ram', offset: 0x2000 },
    { type: 'ram-zero', block: huge, idstr: 'huge', offset: 2 * MiB + PAGE },
    { type: 'multifd-flush' },
    { type: 'ram-page', block: vga, idstr: 'vga', offset: 0xf000, data: p3 },
    { type: 'ram-eos' },
    { type: 'eof' },
  ]);
});

test('stream: the current block survives across RAM frames and resetBlock names it again', () => {
  const enc = new StreamEncoder();
  const a = enc.ramZero('vga', 0);
  enc.endRam();
  const b = enc.ramZero('vga', PAGE);
  assert.equal(b.length, 1 + 8 + 1, 'frame byte + CONTINUE record + zero byte');
  enc.endRam();
  enc.resetBlock();
  const c = enc.ramZero('vga', 2 * PAGE);
  assert.equal(c.length, 1 + 8 + 4 + 1);
  const bytes = cat(prologue(), a, u64(RamFlag.EOS), b, u64(RamFlag.EOS), c, u64(RamFlag.EOS), encodeEof());
  const offsets = decode(bytes).flatMap((e) => (e.type === 'ram-zero' ? [e.offset] : []));
  assert.deepEqual(offsets, [0, PAGE, 2 * PAGE]);
});

test('stream: exact bytes of a PAGE record header, MEM_SIZE, HELLO, ADVISE, PACKAGED', () => {
  assert.deepEqual(encodeHeader(), Buffer.from('5043505900000001', 'hex'));
  const rec = encodeRamPage('ab', 0x12345000, page(0), false);
  assert.equal(rec.subarray(0, 11).toString('hex'), '0000000012345008' + '02' + '6162');
  const cont = encodeRamZero('ab', 0x1_0000_0000, true);
  assert.equal(cont.toString('hex'), '0000000100000022' + '00');
  assert.equal(
    encodeMemSize([{ idstr: 'ab', usedLength: 0x200000, pageSize: 0x200000 }]).toString('hex'),
    '0000000000200004' + '026162' + '0000000000200000' + '0000000000200000',
  );
  const hello = encodeHello({ sessionId: 'S', role: Role.BULK, index: 3, capabilities: 0x01020304, auth: new Uint8Array(32) });
  assert.equal(hello.toString('hex'), '08' + '0020' + '0028' + '0153' + '02' + '03' + '01020304' + '00'.repeat(32));
  assert.equal(encodeAdvise(0x201000).toString('hex'), '08' + '0003' + '0010' + '0000000000201000' + '0000000000001000');
  assert.equal(encodePackagedHeader(5).toString('hex'), '08' + '0008' + '0004' + '00000005');
  assert.equal(encodePackaged(Uint8Array.of(9, 8)).toString('hex'), '08' + '0008' + '0004' + '00000002' + '0908');
  assert.equal(encodeRecvBitmapCommand('ab').toString('hex'), '08' + '000a' + '0003' + '026162');
  assert.equal(encodePing(1).toString('hex'), '08' + '0002' + '0004' + '00000001');
});

test('stream: POSTCOPY_RAM_DISCARD is QEMU\'s layout: version, len, idstr, NUL, byte (start, length) pairs', () => {
  const bytes = encodeDiscard('ab', [[0x200000, 0x400000]]);
  assert.equal(
    bytes.toString('hex'),
    '08' + '0006' + '0015' + '00' + '02' + '6162' + '00' + '0000000000200000' + '0000000000400000',
  );
  // More ranges than one command holds become back-to-back commands.
  const many: [number, number][] = Array.from({ length: 10_000 }, (_, i) => [i * 2 * PAGE, PAGE]);
  const split = encodeDiscard(pcRam, many);
  const per = maxDiscardPairs(6);
  assert.equal(per, 4095);
  const events = decode(cat(prologue(), split, encodeEof()), {}).filter((e) => e.type === 'command' && e.cmd === Command.POSTCOPY_RAM_DISCARD);
  assert.equal(events.length, Math.ceil(10_000 / per));
  assert.deepEqual(
    events.flatMap((e) => (e.type === 'command' && e.cmd === Command.POSTCOPY_RAM_DISCARD ? e.ranges : [])),
    many,
  );
});

test('stream: pages are views of the pushed chunk unless copyPages; split pages are copies', () => {
  const enc = new StreamEncoder();
  const bytes = new Uint8Array(cat(prologue(), enc.ramPage('vga', 0, page(9)), enc.endRam(), enc.eof()));
  const shared = new StreamDecoder({ blocks });
  shared.push(bytes);
  const ev = [...shared.events()].find((e) => e.type === 'ram-page');
  assert.ok(ev && ev.type === 'ram-page');
  assert.equal(ev.data.buffer, bytes.buffer, 'a view, no copy');
  assert.deepEqual(ev.data, page(9));

  const copying = new StreamDecoder({ blocks, copyPages: true });
  copying.push(bytes);
  const ev2 = [...copying.events()].find((e) => e.type === 'ram-page');
  assert.ok(ev2 && ev2.type === 'ram-page');
  assert.notEqual(ev2.data.buffer, bytes.buffer);
  assert.deepEqual(ev2.data, page(9));
  // Buffer#slice is a view, so copies of Buffer chunks must not be made with it.
  const fromBuffer = new StreamDecoder({ blocks, copyPages: true });
  const chunk = Buffer.from(bytes);
  fromBuffer.push(chunk);
  const ev4 = [...fromBuffer.events()].find((e) => e.type === 'ram-page');
  assert.ok(ev4 && ev4.type === 'ram-page');
  assert.notEqual(ev4.data.buffer, chunk.buffer, 'a private copy');
  chunk.fill(0);
  assert.deepEqual(ev4.data, page(9), 'unaffected by reuse of the chunk');

  const split = new StreamDecoder({ blocks });
  const cut = bytes.length - 2000;
  split.push(bytes.subarray(0, cut));
  assert.deepEqual([...split.events()].map((e) => e.type), ['header', 'command']);
  assert.ok(split.pending > 0, 'a partial record is pending');
  split.push(bytes.subarray(cut));
  const ev3 = [...split.events()].find((e) => e.type === 'ram-page');
  assert.ok(ev3 && ev3.type === 'ram-page');
  assert.deepEqual(ev3.data, page(9));
  split.finish();
  assert.equal(split.pending, 0);
});

test('stream: headerless decoding of bare RAM frames (a QEMU RAM section)', () => {
  const enc = new StreamEncoder();
  const bytes = cat(enc.ramZero('vga', PAGE), enc.endRam());
  const decoder = new StreamDecoder({ blocks, header: false });
  decoder.push(bytes);
  assert.deepEqual([...decoder.events()].map((e) => e.type), ['ram-zero', 'ram-eos']);
  assert.equal(decoder.state, 'frames');
  assert.throws(() => decoder.finish(), { message: 'stream truncated: input ended between frames before EOF' });
});

test('stream: a lookup function works as well as a RamList', () => {
  const seen: string[] = [];
  const decoder = new StreamDecoder({
    blocks: (idstr: string) => {
      seen.push(idstr);
      return idstr === 'x' ? { postcopyLength: 2 * PAGE, pageSize: PAGE } : undefined;
    },
  });
  decoder.push(cat(prologue(), new StreamEncoder().ramZero('x', PAGE), u64(RamFlag.EOS), encodeEof()));
  const events = [...decoder.events()];
  assert.deepEqual(events[2], { type: 'ram-zero', block: { postcopyLength: 2 * PAGE, pageSize: PAGE }, idstr: 'x', offset: PAGE });
  assert.deepEqual(seen, ['x']);
});

// ---- stream rejections ----

test('stream rejects: bad magic, bad version, unknown frame kind', () => {
  rejects(cat(u32(0x51454d55), u32(1)), "stream header: magic 0x51454d55 is not 0x50435059 ('PCPY')");
  rejects(cat(u32(0x50435059), u32(2)), 'stream header: version 2 is not supported (expected 1)');
  rejects(cat(prologue(), u8(0x7f)), 'frame kind 0x7f is unknown');
});

test('stream rejects: frames before HELLO, and a second HELLO', () => {
  rejects(cat(encodeHeader(), u8(0x02)), 'frame kind 0x2 (RAM) before HELLO: a channel must open with a HELLO command');
  rejects(cat(encodeHeader(), encodeEof()), 'frame kind 0x0 (EOF) before HELLO: a channel must open with a HELLO command');
  rejects(cat(encodeHeader(), encodePing(1)), 'COMMAND PING before HELLO: a channel must open with a HELLO command');
  rejects(cat(prologue(), encodeHello(HELLO)), 'COMMAND HELLO: received twice on one channel');
});

test('stream rejects: unknown commands and payload lengths that do not match', () => {
  rejects(cat(prologue(), command(0x99, new Uint8Array(0))), 'COMMAND: cmd 0x99 is unknown');
  rejects(cat(prologue(), command(9, new Uint8Array(0))), 'COMMAND: cmd 0x9 is unknown');
  rejects(cat(prologue(), command(Command.PING, Buffer.alloc(3))), 'COMMAND PING: length 3 does not match (must be 4)');
  rejects(cat(prologue(), command(Command.PING, Buffer.alloc(8))), 'COMMAND PING: length 8 does not match (must be 4)');
  rejects(cat(prologue(), command(Command.POSTCOPY_LISTEN, Buffer.alloc(1))), 'COMMAND POSTCOPY_LISTEN: length 1 does not match (must be 0)');
  rejects(cat(prologue(), command(Command.POSTCOPY_ADVISE, Buffer.alloc(8))), 'COMMAND POSTCOPY_ADVISE: length 8 does not match (must be 16)');
  rejects(cat(prologue(), command(Command.PACKAGED, Buffer.alloc(2))), 'COMMAND PACKAGED: length 2 does not match (must be 4)');
  rejects(cat(prologue(), command(Command.RECV_BITMAP, cat(str('vga'), u8(0)))), 'COMMAND RECV_BITMAP: length 5 does not match idstr length 3 (must be 4)');
  rejects(cat(prologue(), command(Command.RECV_BITMAP, str('nope'))), "COMMAND RECV_BITMAP: block 'nope' is unknown");
  rejects(cat(prologue(), command(Command.POSTCOPY_RAM_DISCARD, Buffer.alloc(10))), 'COMMAND POSTCOPY_RAM_DISCARD: length 10 does not match (must be at least 20)');
});

test('stream rejects: malformed HELLO', () => {
  const fields = (id: string, role: number, index: number, extra = 0) => cat(str(id), u8(role), u8(index), u32(0), Buffer.alloc(32 + extra));
  rejects(cat(encodeHeader(), command(Command.HELLO, fields('s', 0, 0, 1))), 'COMMAND HELLO: length 41 does not match session id length 1 (must be 40, id 1..255 bytes)');
  rejects(cat(encodeHeader(), command(Command.HELLO, fields('s', 7, 0))), 'COMMAND HELLO: role 7 is unknown (0 main, 1 preempt, 2 bulk)');
  rejects(cat(encodeHeader(), command(Command.HELLO, fields('s', 1, 2))), 'COMMAND HELLO: channel index 2 must be 0 for role preempt');
  rejects(cat(encodeHeader(), command(Command.HELLO, cat(u8(1), Buffer.of(0xff), u8(0), u8(0), u32(0), Buffer.alloc(32)))), 'COMMAND HELLO: session id ff (hex) is not valid UTF-8');
  const ok = decode(cat(encodeHeader(), command(Command.HELLO, fields('s', 2, 9)), encodeEof()));
  assert.deepEqual(ok[1], { type: 'command', cmd: Command.HELLO, sessionId: 's', role: 2, index: 9, capabilities: 0, auth: new Uint8Array(32) });
});

test('stream rejects: bad POSTCOPY_ADVISE values', () => {
  rejects(cat(prologue(), command(Command.POSTCOPY_ADVISE, cat(u64(0x201000), u64(0x2000)))), 'COMMAND POSTCOPY_ADVISE: target page size 0x2000 does not match 0x1000');
  rejects(cat(prologue(), command(Command.POSTCOPY_ADVISE, cat(u64(0x1800), u64(0x1000)))), 'COMMAND POSTCOPY_ADVISE: page size summary 0x1800 is not an OR of page sizes from 4 KiB to 1 GiB');
  rejects(cat(prologue(), command(Command.POSTCOPY_ADVISE, cat(u64(2n ** 60n), u64(0x1000)))), 'COMMAND POSTCOPY_ADVISE: page size summary 0x1000000000000000 exceeds 2^53 - 1');
});

test('stream rejects: malformed POSTCOPY_RAM_DISCARD', () => {
  const discard = (version: number, id: string, nul: number, pairs: [number | bigint, number | bigint][]) =>
    command(Command.POSTCOPY_RAM_DISCARD, cat(u8(version), str(id), u8(nul), ...pairs.map(([s, l]) => cat(u64(s), u64(l)))));
  const P = 'COMMAND POSTCOPY_RAM_DISCARD';
  rejects(cat(prologue(), discard(1, 'vga', 0, [[0, PAGE]])), `${P}: version 1 is not supported (expected 0)`);
  rejects(cat(prologue(), discard(0, 'vga', 0x41, [[0, PAGE]])), `${P}: idstr terminator is 0x41 (must be 0)`);
  rejects(cat(prologue(), discard(0, 'nope', 0, [[0, PAGE]])), `${P}: block 'nope' is unknown`);
  rejects(cat(prologue(), discard(0, 'vga', 0, [[0, 0]])), `${P}: range 0x0+0x0 of block 'vga' is empty`);
  rejects(cat(prologue(), discard(0, 'huge', 0, [[PAGE, 2 * MiB]])), `${P}: range 0x1000+0x200000 is not aligned to block 'huge' page size 0x200000`);
  rejects(cat(prologue(), discard(0, 'vga', 0, [[0xf000, 2 * PAGE]])), `${P}: range 0xf000+0x2000 extends beyond block 'vga' postcopy length 0x10000`);
  rejects(cat(prologue(), command(Command.POSTCOPY_RAM_DISCARD, cat(u8(0), u8(0), u8(0), u8(0), Buffer.alloc(16)))), `${P}: idstr length 0 (must be 1..255)`);
  rejects(
    cat(prologue(), command(Command.POSTCOPY_RAM_DISCARD, cat(u8(0), str('vga'), u8(0), Buffer.alloc(20)))),
    `${P}: length 26 does not hold version, idstr of 3 bytes, NUL and whole (start, length) pairs`,
  );
});

test('stream rejects: PACKAGED over the limit', () => {
  rejects(cat(prologue(), command(Command.PACKAGED, u32(0x4000001))), 'COMMAND PACKAGED: length 0x4000001 exceeds the limit 0x4000000');
  rejects(cat(prologue(), encodePackaged(new Uint8Array(11))), 'COMMAND PACKAGED: length 0xb exceeds the limit 0xa', { maxPackagedBytes: 10 });
  const events = decode(cat(prologue(), encodePackaged(new Uint8Array(10)), encodeEof()), { maxPackagedBytes: 10 });
  assert.equal(events[2].type === 'command' && events[2].cmd === Command.PACKAGED && events[2].data.length, 10);
});

test('stream rejects: RAM records naming no block, beyond the block, without a current block', () => {
  const ram = (...records: Uint8Array[]) => cat(prologue(), u8(0x02), ...records);
  rejects(ram(u64(0x40000000 | RamFlag.PAGE), str('pc.ram'), page(0)), "RAM record: offset 0x40000000 is at or beyond block 'pc.ram' postcopy length 0x20000000");
  rejects(ram(u64(0x20000000 | RamFlag.ZERO), str('pc.ram'), u8(0)), "RAM record: offset 0x20000000 is at or beyond block 'pc.ram' postcopy length 0x20000000");
  rejects(ram(u64(0xfffffffffffff000n | BigInt(RamFlag.ZERO)), str('vga'), u8(0)), "RAM record: offset 0xfffffffffffff000 is at or beyond block 'vga' postcopy length 0x10000");
  rejects(ram(u64(0x1000 | RamFlag.PAGE), str('nope'), page(0)), "RAM record: block 'nope' is unknown");
  rejects(ram(u64(0x1000 | RamFlag.PAGE | RamFlag.CONTINUE), page(0)), 'RAM record: CONTINUE flag set but no block has been named on this channel');
  rejects(ram(u64(RamFlag.ZERO), u8(0), u8(0)), 'RAM record: idstr length 0 (must be 1..255)');
  rejects(ram(u64(RamFlag.ZERO), u8(2), Buffer.of(0xc3, 0x28), u8(0)), 'RAM record: idstr c328 (hex) is not valid UTF-8');
  rejects(ram(u64(RamFlag.ZERO), u8(3), Buffer.from('a\0b'), u8(0)), 'RAM record: idstr "a\\u0000b" contains a NUL byte');
  // In the huge block the offset is checked against its own length (8 MiB), not pc.ram's.
  rejects(ram(u64(0x800000 | RamFlag.ZERO), str('huge'), u8(0)), "RAM record: offset 0x800000 is at or beyond block 'huge' postcopy length 0x800000");
  // A CONTINUE record is checked against the current block.
  rejects(ram(u64(RamFlag.ZERO), str('vga'), u8(0), u64(0x10000 | RamFlag.ZERO | RamFlag.CONTINUE), u8(0)), "RAM record: offset 0x10000 is at or beyond block 'vga' postcopy length 0x10000");
});

test('stream rejects: a zero page whose byte is not 0', () => {
  rejects(cat(prologue(), u8(0x02), u64(0x3000 | RamFlag.ZERO), str('vga'), u8(5)), "RAM record: zero page byte is 0x5 (must be 0) at offset 0x3000 of block 'vga'");
});

test('stream rejects: obsolete, unsupported, unknown and invalid RAM flag combinations', () => {
  const flags = (f: number) => cat(prologue(), u8(0x02), u64(f), str('vga'), page(0));
  rejects(flags(RamFlag.FULL), 'RAM flags 0x1 (FULL) are obsolete and not supported');
  rejects(flags(RamFlag.XBZRLE), 'RAM flags 0x40 (XBZRLE) are not supported');
  rejects(flags(RamFlag.XBZRLE | RamFlag.CONTINUE), 'RAM flags 0x60 (CONTINUE|XBZRLE) are not supported');
  rejects(flags(RamFlag.HOOK), 'RAM flags 0x80 (HOOK) are not supported');
  rejects(flags(0x100), 'RAM flags 0x100 (0x100) have unknown bits 0x100');
  rejects(flags(0x800 | RamFlag.PAGE), 'RAM flags 0x808 (PAGE|0x800) have unknown bits 0x800');
  rejects(flags(RamFlag.ZERO | RamFlag.PAGE), 'RAM flags 0xa (ZERO|PAGE) are an invalid combination');
  rejects(flags(RamFlag.EOS | RamFlag.CONTINUE), 'RAM flags 0x30 (EOS|CONTINUE) are an invalid combination');
  rejects(flags(RamFlag.MEM_SIZE | RamFlag.PAGE), 'RAM flags 0xc (MEM_SIZE|PAGE) are an invalid combination');
  rejects(flags(0), 'RAM flags 0x0 (none) are an invalid combination');
  rejects(flags(0x1000 | RamFlag.EOS), 'RAM record: EOS carries offset 0x1000 (must be 0)');
  rejects(flags(0x1000 | RamFlag.MULTIFD_FLUSH), 'RAM record: MULTIFD_FLUSH carries offset 0x1000 (must be 0)');
});

test('stream rejects: MEM_SIZE lists that overrun the total or are malformed', () => {
  const mem = (total: number | bigint, ...entries: Uint8Array[]) => cat(prologue(), u8(0x02), u64(BigInt(total) | BigInt(RamFlag.MEM_SIZE)), ...entries);
  const entry = (id: string, used: number, pageSize: number) => cat(str(id), u64(used), u64(pageSize));
  rejects(mem(0x10000, entry('a', 0x8000, PAGE), entry('b', 0x10000, PAGE)), "MEM_SIZE: block 'b' used length 0x10000 overruns the total 0x10000 (0x8000 listed before it)");
  rejects(mem(0x10000, entry('a', 0x8000, PAGE), entry('a', 0x8000, PAGE)), "MEM_SIZE: block 'a' is listed twice");
  rejects(mem(0x10000, cat(u8(0), u64(0x8000), u64(PAGE))), 'MEM_SIZE: idstr length 0 (must be 1..255)');
  rejects(mem(0x10000, entry('a', 0x10000, 0x3000)), "MEM_SIZE: block 'a' page size 0x3000 is not a power of two from 4 KiB to 1 GiB");
  rejects(mem(0x400000, entry('a', 0x300000, 0x200000)), "MEM_SIZE: block 'a' used length 0x300000 is not a positive multiple of its page size 0x200000");
  rejects(mem(0x10000, entry('a', 0, PAGE)), "MEM_SIZE: block 'a' used length 0x0 is not a positive multiple of its page size 0x1000");
  rejects(mem(2n ** 62n), 'MEM_SIZE: total 0x4000000000000000 exceeds 2^53 - 1');
  // A list whose total is reached decodes; total 0 is an empty list.
  const ok = decode(cat(mem(0x10000, entry('a', 0x8000, PAGE), entry('b', 0x8000, PAGE)), u64(RamFlag.EOS), u8(0x02), u64(RamFlag.MEM_SIZE), u64(RamFlag.EOS), encodeEof()));
  assert.deepEqual(ok.filter((e) => e.type === 'mem-size'), [
    { type: 'mem-size', total: 0x10000, blocks: [{ idstr: 'a', usedLength: 0x8000, pageSize: PAGE }, { idstr: 'b', usedLength: 0x8000, pageSize: PAGE }] },
    { type: 'mem-size', total: 0, blocks: [] },
  ]);
});

test('stream rejects: anything after EOF, in the same chunk or a later push', () => {
  rejects(cat(prologue(), encodeEof(), u8(0)), 'data after EOF: byte 0x0 at stream offset 62');
  const decoder = new StreamDecoder({ blocks });
  decoder.push(cat(prologue(), encodeEof()));
  assert.deepEqual([...decoder.events()].map((e) => e.type), ['header', 'command', 'eof']);
  assert.ok(decoder.ended);
  assert.throws(() => decoder.push(Buffer.from('xyz')), { name: 'ProtocolError', message: 'data after EOF: byte 0x78 at stream offset 62' });
  assert.throws(() => decoder.next(), { message: 'data after EOF: byte 0x78 at stream offset 62' });
  const fine = new StreamDecoder({ blocks });
  fine.push(cat(prologue(), encodeEof()));
  [...fine.events()];
  fine.push(new Uint8Array(0)); // empty chunks are not data
  fine.finish();
});

test('stream: truncation is reported by finish() with where it stopped', () => {
  const enc = new StreamEncoder();
  const full = cat(prologue(), enc.ramPage('vga', 0, page(1)), enc.endRam(), enc.eof());
  const at = (n: number) => {
    const decoder = new StreamDecoder({ blocks });
    decoder.push(full.subarray(0, n));
    [...decoder.events()];
    assert.throws(() => decoder.finish(), ProtocolError);
    try {
      decoder.finish();
    } catch (error) {
      return (error as Error).message;
    }
    return '';
  };
  assert.equal(at(0), 'stream truncated: input ended in the stream header before EOF');
  assert.equal(at(5), 'stream truncated: input ended in the stream header before EOF, 5 byte(s) of an incomplete item pending');
  assert.equal(at(prologue().length), 'stream truncated: input ended between frames before EOF');
  assert.equal(at(prologue().length + 1), 'stream truncated: input ended inside a RAM frame before EOF');
  assert.equal(at(prologue().length + 1 + 100), 'stream truncated: input ended inside a RAM frame before EOF, 100 byte(s) of an incomplete item pending');
  const memsize = cat(prologue(), u8(0x02), u64(0x10000 | RamFlag.MEM_SIZE), str('a'), u64(0x8000), u64(PAGE));
  const decoder = new StreamDecoder({ blocks });
  decoder.push(memsize);
  [...decoder.events()];
  assert.equal(decoder.state, 'mem-size');
  assert.throws(() => decoder.finish(), { message: 'stream truncated: input ended inside a MEM_SIZE block list before EOF' });
});

// ---- encoders validate their input ----

test('stream encoders reject bad input naming the field', () => {
  const enc = new StreamEncoder();
  assert.throws(() => enc.ramPage('vga', 100, page(0)), { name: 'RangeError', message: "RAM record 'vga' offset 0x64 is not a multiple of 0x1000" });
  assert.throws(() => enc.ramPage('vga', 0, new Uint8Array(100)), { message: 'RAM page data is 100 bytes (must be 4096)' });
  assert.throws(() => enc.ramPage(vga, 0x10000, page(0)), { message: "RAM record 'vga' offset 0x10000 is at or beyond block 'vga' postcopy length 0x10000" });
  assert.throws(() => enc.ramZero('', 0), { message: "RAM record idstr: idstr '' is 0 bytes as UTF-8 (must be 1..255)" });
  assert.throws(() => enc.ramZero('x'.repeat(256), 0), /is 256 bytes as UTF-8/);
  assert.equal(enc.ramOpen, false, 'failed records do not open a frame');
  enc.ramZero('vga', 0);
  assert.throws(() => enc.ping(1), { message: 'StreamEncoder: cannot encode COMMAND PING while a RAM frame is open (call endRam() first)' });
  assert.throws(() => enc.eof(), /cannot encode EOF while a RAM frame is open/);
  enc.endRam();
  assert.throws(() => encodePing(-1), { message: 'PING value -1 is not a u32' });
  assert.throws(() => encodeHello({ ...HELLO, role: Role.PREEMPT, index: 1 }), { message: 'HELLO channel index 1 must be 0 for role preempt' });
  assert.throws(() => encodeHello({ ...HELLO, auth: new Uint8Array(31) }), { message: 'HELLO auth is 31 bytes (must be 32)' });
  assert.throws(() => encodeHello({ ...HELLO, role: 5 as Role }), { message: 'HELLO role 5 is unknown (0 main, 1 preempt, 2 bulk)' });
  assert.throws(() => encodeDiscard(huge, [[PAGE, 2 * MiB]]), { message: "POSTCOPY_RAM_DISCARD 'huge' range start 0x1000 is not a multiple of 0x200000" });
  assert.throws(() => encodeDiscard('vga', []), { message: "POSTCOPY_RAM_DISCARD 'vga': no ranges (QEMU requires at least one)" });
  assert.throws(() => encodeDiscard(vga, [[0, 0x20000]]), { message: "POSTCOPY_RAM_DISCARD 'vga' range 0x0+0x20000 extends beyond postcopy length 0x10000" });
  assert.throws(() => encodePackagedHeader(11, 10), { message: 'PACKAGED length 0xb exceeds the limit 0xa' });
  assert.throws(() => encodeMemSize([{ idstr: 'a', usedLength: 0x1800, pageSize: PAGE }]), { message: "MEM_SIZE: block 'a' used length 0x1800 is not a multiple of 0x1000" });
  assert.throws(() => encodeAdvise(0x1800), { message: 'POSTCOPY_ADVISE page size summary 0x1800 is not a multiple of 0x1000' });
  assert.throws(() => encodeCommand(1, new Uint8Array(70000)), { message: 'COMMAND OPEN_RETURN_PATH: payload of 70000 bytes exceeds 65535' });
});

// ---- return path ----

test('return path: every message round-trips', () => {
  const received = new Bitmap(16);
  received.setRange(3, 5);
  received.set(15);
  const nonce = createNonce();
  const rpEnc = new ReturnPathEncoder();
  const bytes = cat(
    encodeChallenge(nonce),
    encodeHelloAck(),
    encodeHelloAck(0x10),
    rpEnc.requestPages('pc.ram', 0x2000, PAGE),
    rpEnc.requestPages('pc.ram', 0x5000, 2 * PAGE),
    rpEnc.requestPages('huge', 2 * MiB, 2 * MiB),
    encodePong(42),
    encodeRecvBitmap('vga', received),
    encodeResumeAck(1),
    encodeRefuse('bad token ✗'),
    encodeShut(0),
  );
  const events = rpDecode(bytes);
  assert.deepEqual(events, [
    { type: 'challenge', nonce },
    { type: 'hello-ack', capabilities: undefined },
    { type: 'hello-ack', capabilities: 0x10 },
    { type: 'req-pages', block: pcRam, idstr: 'pc.ram', start: 0x2000, length: PAGE, named: true },
    { type: 'req-pages', block: pcRam, idstr: 'pc.ram', start: 0x5000, length: 2 * PAGE, named: false },
    { type: 'req-pages', block: huge, idstr: 'huge', start: 2 * MiB, length: 2 * MiB, named: true },
    { type: 'pong', value: 42 },
    { type: 'recv-bitmap', block: vga, idstr: 'vga', bitmap: received },
    { type: 'resume-ack', value: 1 },
    { type: 'refuse', reason: 'bad token ✗' },
    { type: 'shut', status: 0 },
  ]);
});

test('return path: exact bytes of REQ_PAGES, REQ_PAGES_ID and RECV_BITMAP', () => {
  assert.equal(encodeReqPages(0x2000, 0x1000).toString('hex'), '0004' + '000c' + '0000000000002000' + '00001000');
  assert.equal(encodeReqPagesId('ab', 0x2000, 0x1000).toString('hex'), '0003' + '000f' + '0000000000002000' + '00001000' + '026162');
  const map = new Bitmap(16); // vga: 64 KiB = 16 target pages -> one padded 8-byte word
  map.set(0);
  map.set(9);
  assert.equal(
    encodeRecvBitmap('vga', map).toString('hex'),
    '0005' + '0004' + '03766761' + '0000000000000008' + '0102000000000000' + '0123456789abcdef',
  );
  assert.equal(encodeShut(1).toString('hex'), '0001000400000001');
  assert.equal(encodeHelloAck().toString('hex'), '00200000');
  assert.equal(encodeRefuse('no').toString('hex'), '0021' + '0003' + '026e6f');
});

test('return path: REFUSE reasons are cut to 255 bytes at a character boundary', () => {
  const long = 'é'.repeat(200); // 400 bytes
  const [event] = rpDecode(encodeRefuse(long));
  assert.ok(event.type === 'refuse');
  assert.equal(event.reason, 'é'.repeat(127));
});

test('return path rejects: unknown types, wrong lengths, bad requests and bitmaps', () => {
  rpRejects(rp(9, new Uint8Array(0)), 'return path message type 0x9 is unknown');
  rpRejects(rp(ReturnPathType.SHUT, Buffer.alloc(3)), 'return path SHUT: length 3 does not match (must be 4)');
  rpRejects(rp(ReturnPathType.HELLO_ACK, Buffer.alloc(2)), 'return path HELLO_ACK: length 2 does not match (must be 0 or 4)');
  rpRejects(rp(ReturnPathType.CHALLENGE, Buffer.alloc(31)), 'return path CHALLENGE: length 31 does not match (must be 32)');
  rpRejects(rp(ReturnPathType.REQ_PAGES, Buffer.alloc(13)), 'return path REQ_PAGES: length 13 does not match (must be 12)');
  rpRejects(encodeReqPages(0, PAGE), 'return path REQ_PAGES: no block named yet (REQ_PAGES_ID must come first)');
  rpRejects(encodeReqPagesId('nope', 0, PAGE), "return path REQ_PAGES_ID: block 'nope' is unknown");
  rpRejects(rp(ReturnPathType.REQ_PAGES_ID, cat(u64(0), u32(PAGE), str('vga'), u8(0))), 'return path REQ_PAGES_ID: length 17 does not match idstr length 3 (must be 16, idstr 1..255 bytes)');
  rpRejects(rp(ReturnPathType.REQ_PAGES_ID, cat(u64(0x10), u32(PAGE), str('vga'))), 'return path REQ_PAGES_ID: start 0x10 is not a multiple of 4096');
  rpRejects(rp(ReturnPathType.REQ_PAGES_ID, cat(u64(0), u32(0), str('vga'))), 'return path REQ_PAGES_ID: length 0x0 is not a positive multiple of 4096');
  rpRejects(encodeReqPagesId('vga', 0xf000, 2 * PAGE), "return path REQ_PAGES_ID: range 0xf000+0x2000 extends beyond block 'vga' length 0x10000");
  rpRejects(cat(encodeReqPagesId('vga', 0, PAGE), encodeReqPages(0x10000, PAGE)), "return path REQ_PAGES: range 0x10000+0x1000 extends beyond block 'vga' length 0x10000");
  rpRejects(rp(ReturnPathType.REQ_PAGES, cat(u64(2n ** 60n), u32(PAGE))), 'return path REQ_PAGES: start 0x1000000000000000 exceeds 2^53 - 1');
  const bitmapHead = rp(ReturnPathType.RECV_BITMAP, str('vga'));
  rpRejects(cat(bitmapHead, u64(16), Buffer.alloc(16), u64(0x0123456789abcdefn)), "return path RECV_BITMAP: block 'vga' bitmap size 0x10 does not match 0x8 (postcopy length 0x10000)");
  rpRejects(cat(bitmapHead, u64(8), Buffer.alloc(8), u64(0x0123456789abcdeen)), "return path RECV_BITMAP: block 'vga' end mark 0x123456789abcdee is not 0x123456789abcdef");
  rpRejects(rp(ReturnPathType.RECV_BITMAP, str('nope')), "return path RECV_BITMAP: block 'nope' is unknown");
  rpRejects(rp(ReturnPathType.RECV_BITMAP, cat(str('vga'), u8(1))), 'return path RECV_BITMAP: length 5 does not match idstr length 3 (must be 4)');
  rpRejects(rp(ReturnPathType.REFUSE, cat(u8(5), Buffer.from('abc'))), 'return path REFUSE: length 4 does not match reason length 5 (must be 6)');
  rpRejects(rp(ReturnPathType.REFUSE, cat(u8(1), Buffer.of(0xff))), 'return path REFUSE: reason ff (hex) is not valid UTF-8');
  rpRejects(encodeShut(0).subarray(0, 6), 'return path truncated: 6 byte(s) of an incomplete message pending');
});

test('return path: a big RECV_BITMAP decodes from small chunks', () => {
  const map = new Bitmap(pcRam.targetPages);
  for (let i = 0; i < map.size; i += 7) map.set(i);
  const bytes = encodeRecvBitmap('pc.ram', map);
  assert.equal(bytes.length, 4 + 7 + 8 + 16384 + 8);
  const decoder = new ReturnPathDecoder({ blocks });
  let events: ReturnPathEvent<RamBlock>[] = [];
  for (let i = 0; i < bytes.length; i += 1000) {
    decoder.push(bytes.subarray(i, i + 1000));
    events = events.concat([...decoder.events()]);
  }
  decoder.finish();
  assert.equal(events.length, 1);
  assert.ok(events[0].type === 'recv-bitmap' && events[0].bitmap.equals(map));
});

test('return path encoders validate', () => {
  assert.throws(() => encodeReqPages(100, PAGE), { name: 'RangeError', message: 'REQ_PAGES start 0x64 is not a multiple of 0x1000' });
  assert.throws(() => encodeReqPages(0, 100), { message: 'REQ_PAGES length 100 is not a positive multiple of 4096' });
  assert.throws(() => encodeReqPages(0, 2 ** 32), { message: 'REQ_PAGES length 4294967296 is not a u32' });
  assert.throws(() => encodeChallenge(new Uint8Array(8)), { message: 'CHALLENGE nonce is 8 bytes (must be 32)' });
  assert.throws(() => encodeReqPagesId('', 0, PAGE), /REQ_PAGES_ID idstr: idstr '' is 0 bytes/);
  const rpEnc = new ReturnPathEncoder();
  assert.equal(rpEnc.requestPages('vga', 0, PAGE).readUInt16BE(0), ReturnPathType.REQ_PAGES_ID);
  assert.equal(rpEnc.requestPages('vga', PAGE, PAGE).readUInt16BE(0), ReturnPathType.REQ_PAGES);
  rpEnc.resetBlock();
  assert.equal(rpEnc.requestPages('vga', PAGE, PAGE).readUInt16BE(0), ReturnPathType.REQ_PAGES_ID);
});

// ---- handshake ----

test('handshake: helloAuth is HMAC-SHA256(token, nonce || session id || role || index)', () => {
  const nonce = new Uint8Array(32).map((_, i) => i);
  const expected = createHmac('sha256', 'secret').update(nonce).update('sess-é').update(Uint8Array.of(2, 5)).digest();
  const auth = helloAuth('secret', nonce, 'sess-é', Role.BULK, 5);
  assert.deepEqual(Buffer.from(auth), expected);
  assert.ok(authEqual(auth, expected));
  assert.deepEqual(helloAuth(Buffer.from('secret'), nonce, 'sess-é', Role.BULK, 5), auth, 'Buffer and string tokens agree');
  assert.deepEqual(helloAuth(undefined, nonce, 'sess-é', Role.BULK, 5), new Uint8Array(32), 'no token: zeros');

  const hello = { sessionId: 'sess-é', role: Role.BULK, index: 5, capabilities: 0, auth };
  assert.ok(verifyHelloAuth(hello, 'secret', nonce));
  assert.ok(!verifyHelloAuth(hello, 'other', nonce));
  assert.ok(!verifyHelloAuth(hello, 'secret', createNonce()), 'a replay under another nonce fails');
  assert.ok(!verifyHelloAuth({ ...hello, index: 4 }, 'secret', nonce), 'bound to the channel index');
  assert.ok(!verifyHelloAuth({ ...hello, role: Role.MAIN }, 'secret', nonce), 'bound to the role');
  assert.ok(!verifyHelloAuth({ ...hello, sessionId: 'sess-f' }, 'secret', nonce), 'bound to the session');
  assert.ok(!verifyHelloAuth({ ...hello, auth: auth.subarray(0, 31) }, 'secret', nonce), 'short auth is unequal');
  assert.ok(verifyHelloAuth({ ...hello, auth: new Uint8Array(32) }, undefined, nonce));

  assert.throws(() => helloAuth('secret', new Uint8Array(16), 's', 0, 0), { message: 'helloAuth nonce is 16 bytes (must be 32)' });
  assert.throws(() => helloAuth('', nonce, 's', 0, 0), { message: 'helloAuth token is empty (pass undefined for no token)' });
  assert.notDeepEqual(createNonce(), createNonce());

  // A HELLO carrying the auth survives the wire.
  const events = decode(cat(encodeHeader(), encodeHello(hello), encodeEof()));
  const decoded = events[1];
  assert.ok(decoded.type === 'command' && decoded.cmd === Command.HELLO);
  assert.ok(verifyHelloAuth(decoded, 'secret', nonce));
});
