// Pages between memory and a socket (a bulk channel's two calls per packet): zero pages found
// over a packet, and a packet written straight from memory; each range checked against the
// view of memory before anything is read or written. writeRuns blocks the calling thread, so
// the peer here is a worker thread reading the other end of a socket pair as it is told.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { markZeroPages, receiveMessage, shutdownSocket, socketPair, writeRuns } from '../../src/kernel/index.js';

const PAGE = 4096;

interface PeerResult {
  bytes: number;
  sha256: string;
}

/**
 * A peer on another thread: reads `fd` (blocking) `chunk` bytes at a time, sleeping `pauseMs`
 * before each read, until end of stream or `closeAfter` bytes (then it closes its end).
 */
function peer(fd: number, options: { chunk: number; pauseMs: number; closeAfter?: number }): Promise<PeerResult> {
  const source = `
    const { readSync } = require('node:fs');
    const { Socket } = require('node:net');
    const { createHash } = require('node:crypto');
    const { parentPort, workerData: w } = require('node:worker_threads');
    const hash = createHash('sha256');
    const buffer = Buffer.alloc(w.chunk);
    let bytes = 0;
    for (;;) {
      if (w.pauseMs) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, w.pauseMs);
      const n = readSync(w.fd, buffer, 0, Math.min(w.chunk, (w.closeAfter ?? Infinity) - bytes));
      if (n === 0) break;
      hash.update(buffer.subarray(0, n));
      bytes += n;
      if (bytes === w.closeAfter) break;
    }
    new Socket({ fd: w.fd, readable: false, writable: false }).destroy(); // closes it (fs.close warns in a worker)
    parentPort.postMessage({ bytes, sha256: hash.digest('hex') });`;
  const worker = new Worker(source, { eval: true, workerData: { fd, ...options } });
  return new Promise((resolve, reject) => worker.once('message', resolve).once('error', reject));
}

const sha256 = (...parts: Uint8Array[]) => parts.reduce((h, p) => h.update(p), createHash('sha256')).digest('hex');

test('markZeroPages: flags the zero pages of a packet, keeps flags already set (those pages unread), counts both', () => {
  const memory = Buffer.alloc(8 * PAGE);
  memory[2 * PAGE + PAGE - 1] = 1; // page 2: only its last byte
  memory[5 * PAGE] = 1; // page 5: only its first
  const offsets = Float64Array.of(0, 2 * PAGE, 3 * PAGE, 5 * PAGE, 7 * PAGE);
  const zero = Uint8Array.of(0, 0, 0, 1, 0); // page 5 given as zero (untouched): kept, not read
  assert.equal(markZeroPages(memory, offsets, PAGE, zero), 4);
  assert.deepEqual([...zero], [1, 0, 1, 1, 1]);
  // a huge page's size works the same; one byte anywhere makes it non-zero
  const huge = Buffer.alloc(4 << 20);
  huge[(2 << 20) + 12345] = 9;
  const hugeFlags = new Uint8Array(2);
  assert.equal(markZeroPages(huge, Float64Array.of(0, 2 << 20), 2 << 20, hugeFlags), 1);
  assert.deepEqual([...hugeFlags], [1, 0]);
});

test('markZeroPages: a page not wholly inside memory, a bad offset or argument is refused naming it, nothing marked', () => {
  const memory = Buffer.alloc(4 * PAGE);
  const zero = new Uint8Array(2);
  const refused = (offsets: unknown, flags: unknown, pattern: RegExp, code: string) =>
    assert.throws(() => markZeroPages(memory, offsets as Float64Array, PAGE, flags as Uint8Array), (e: NodeJS.ErrnoException) => e.code === code && pattern.test(e.message));
  refused(Float64Array.of(0, 3 * PAGE + 1), zero, /"offsets\[1\]".*inside memory \(16384 bytes\).*Received 12289/, 'ERR_OUT_OF_RANGE');
  refused(Float64Array.of(4 * PAGE), zero, /"offsets\[0\]".*Received 16384/, 'ERR_OUT_OF_RANGE');
  refused(Float64Array.of(-PAGE), zero, /"offsets\[0\]".*non-negative integer.*Received -4096/, 'ERR_OUT_OF_RANGE');
  refused(Float64Array.of(NaN), zero, /"offsets\[0\]".*Received NaN/, 'ERR_OUT_OF_RANGE');
  refused([0, PAGE], zero, /"offsets" argument must be an instance of Float64Array/, 'ERR_INVALID_ARG_TYPE');
  refused(Float64Array.of(0, PAGE, 2 * PAGE), zero, /"zero.byteLength".*>= offsets.length \(3\)/, 'ERR_OUT_OF_RANGE');
  assert.deepEqual([...zero], [0, 0]);
});

test('writeRuns: header and runs arrive in order, byte for byte, through a peer slower than the socket (partial writes, waits)', async () => {
  const [writer, reader] = socketPair();
  const memory = randomBytes(16 << 20);
  const runs = Float64Array.of(5 * PAGE, 3 * PAGE, 0, PAGE, 8 << 20, 8 << 20, 100, 0, 16 * PAGE, 37);
  const header = randomBytes(777);
  const expected = [header, ...[0, 2, 4, 6, 8].map((i) => memory.subarray(runs[i], runs[i] + runs[i + 1]))];
  const total = expected.reduce((n, p) => n + p.length, 0);
  const read = peer(reader, { chunk: 64 << 10, pauseMs: 1 });
  assert.equal(writeRuns(writer, header, memory, runs, 10_000), total);
  closeSync(writer);
  assert.deepEqual(await read, { bytes: total, sha256: sha256(...expected) });
});

test('writeRuns: a peer that closes mid-packet fails the write with EPIPE (sendmsg), at once', async () => {
  const [writer, reader] = socketPair();
  const memory = Buffer.alloc(8 << 20, 7);
  const read = peer(reader, { chunk: 32 << 10, pauseMs: 0, closeAfter: 1 << 20 });
  const start = performance.now();
  assert.throws(() => writeRuns(writer, Buffer.alloc(0), memory, Float64Array.of(0, memory.length), 10_000), (e: NodeJS.ErrnoException) => e.code === 'EPIPE' && e.syscall === 'sendmsg');
  assert.ok(performance.now() - start < 5_000);
  assert.equal((await read).bytes, 1 << 20);
  closeSync(writer);
});

test('writeRuns: a peer that reads nothing fails it with ETIMEDOUT after the bound, not before', () => {
  const [writer, reader] = socketPair();
  const memory = Buffer.alloc(8 << 20);
  const start = performance.now();
  assert.throws(() => writeRuns(writer, Buffer.alloc(0), memory, Float64Array.of(0, memory.length), 300), (e: NodeJS.ErrnoException) => e.code === 'ETIMEDOUT' && /nothing taken for 300 ms/.test(e.message));
  const elapsed = performance.now() - start;
  assert.ok(elapsed >= 295 && elapsed < 3_000, `${elapsed} ms`);
  closeSync(writer);
  closeSync(reader);
});

test('writeRuns: a thread blocked on a peer that reads nothing wakes with EPIPE as soon as another thread shuts the socket down, long before its bound', { timeout: 30_000 }, async () => {
  const [writer, reader] = socketPair();
  // the writer thread: 8 MiB to a peer that reads nothing, with a 20 s bound
  const worker = new Worker(`
    const { parentPort, workerData } = require('node:worker_threads');
    const { writeRuns } = require(workerData.kernel);
    const memory = Buffer.alloc(8 << 20);
    parentPort.postMessage('writing');
    try {
      writeRuns(workerData.fd, Buffer.alloc(0), memory, Float64Array.of(0, memory.length), 20000);
      parentPort.postMessage('written');
    } catch (e) {
      parentPort.postMessage(e.code);
    }`, { eval: true, workerData: { fd: writer, kernel: require.resolve('../../src/kernel/index.js') } });
  try {
    const messages: string[] = [];
    const next = () => new Promise<string>((resolve) => worker.once('message', (m: string) => resolve(m)));
    messages.push(await next());
    const ended = next();
    await new Promise((resolve) => setTimeout(resolve, 300)); // blocked by now: the socket buffers hold far less than 8 MiB
    const start = performance.now();
    shutdownSocket(writer);
    messages.push(await ended);
    const elapsed = performance.now() - start;
    assert.deepEqual(messages, ['writing', 'EPIPE']);
    assert.ok(elapsed < 2_000, `woke ${elapsed.toFixed(0)} ms after the shutdown`);
    shutdownSocket(writer); // again: no error (ENOTCONN is as shut as it gets)
  } finally {
    await worker.terminate();
    closeSync(writer);
    closeSync(reader);
  }
});

test('writeRuns: a run outside memory, an odd runs array or a bad fd is refused before a byte is written', () => {
  const [writer, reader] = socketPair();
  const memory = Buffer.alloc(4 * PAGE);
  const header = Buffer.from('header');
  const refused = (runs: unknown, pattern: RegExp, code: string, fd = writer) =>
    assert.throws(() => writeRuns(fd, header, memory, runs as Float64Array, 1000), (e: NodeJS.ErrnoException) => e.code === code && pattern.test(e.message));
  refused(Float64Array.of(0, PAGE, 3 * PAGE, PAGE + 1), /"runs\[2\]".*inside memory \(16384 bytes\).*Received 12288/, 'ERR_OUT_OF_RANGE');
  refused(Float64Array.of(0, PAGE, 4 * PAGE), /"runs.length".*even.*Received 3/, 'ERR_OUT_OF_RANGE');
  refused(Float64Array.of(0, 1.5), /"runs\[1\]".*non-negative integer.*Received 1.5/, 'ERR_OUT_OF_RANGE');
  refused([0, PAGE], /"runs" argument must be an instance of Float64Array/, 'ERR_INVALID_ARG_TYPE');
  assert.equal(receiveMessage(reader, Buffer.alloc(64), 0), undefined); // nothing arrived
  const [closed, other] = socketPair();
  closeSync(closed);
  closeSync(other);
  refused(Float64Array.of(0, PAGE), /EBADF.*sendmsg/, 'EBADF', closed);
  closeSync(writer);
  closeSync(reader);
});
