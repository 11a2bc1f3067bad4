// A socket pair, what a worker gets for a TLS channel (the thread holding TLS relays the other
// end): bytes both ways, and each end of stream; and the bounds of a socket's kernel buffers.
import test from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Socket } from 'node:net';
import { closeSync } from 'node:fs';
import { setSocketBuffers, socketPair } from '../../src/kernel/index.js';

function readAll(socket: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  socket.on('data', (d) => chunks.push(d));
  return new Promise((resolve, reject) => socket.on('end', () => resolve(Buffer.concat(chunks))).on('error', reject));
}

test('socketPair: two connected descriptors, bytes both ways, each end of stream seen by the other', async () => {
  const [a, b] = socketPair();
  assert.ok(a >= 0 && b >= 0 && a !== b);
  const left = new Socket({ fd: a, readable: true, writable: true, allowHalfOpen: true });
  const right = new Socket({ fd: b, readable: true, writable: true, allowHalfOpen: true });
  const toRight = randomBytes(1 << 20);
  const toLeft = randomBytes(300_000);
  const rightGot = readAll(right);
  const leftGot = readAll(left);
  left.end(toRight);
  assert.ok((await rightGot).equals(toRight));
  right.end(toLeft);
  assert.ok((await leftGot).equals(toLeft));
  left.destroy();
  right.destroy();
});

test('setSocketBuffers: sets SO_SNDBUF / SO_RCVBUF (the kernel doubles them), 0 leaves one alone; a bad fd or size is refused naming it', () => {
  const [a, b] = socketPair();
  try {
    const before = setSocketBuffers(a, 0, 0);
    assert.ok(before.send > 0 && before.receive > 0);
    assert.deepEqual(setSocketBuffers(a, 64 << 10, 0), { send: 128 << 10, receive: before.receive });
    assert.deepEqual(setSocketBuffers(a, 0, 48 << 10), { send: 128 << 10, receive: 96 << 10 });
    assert.throws(() => setSocketBuffers(a, -1, 0), (e: NodeJS.ErrnoException) => e.code === 'ERR_OUT_OF_RANGE' && /"sendBytes"/.test(e.message));
    assert.throws(() => setSocketBuffers(a, 0, 1.5), (e: NodeJS.ErrnoException) => e.code === 'ERR_OUT_OF_RANGE' && /"receiveBytes"/.test(e.message));
  } finally {
    closeSync(a);
    closeSync(b);
  }
  assert.throws(() => setSocketBuffers(a, 4096, 0), (e: NodeJS.ErrnoException) => e.code === 'EBADF' && e.syscall === 'setsockopt');
});
