// A socket pair, what a worker gets for a TLS channel (the thread holding TLS relays the other
// end): bytes both ways, and each end of stream.
import test from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Socket } from 'node:net';
import { socketPair } from '../../src/kernel/index.js';

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
