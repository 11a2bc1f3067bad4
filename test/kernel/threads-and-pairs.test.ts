// Two small native calls: a socket pair (what a worker gets for a TLS channel, the thread
// holding TLS relaying the other end) carries bytes both ways and each end of stream; and
// setThreadPolicy changes the calling thread's scheduling policy, the kernel says so, and
// not its process's other threads.
import test from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { setThreadPolicy, socketPair, threadId } from '../../src/kernel/index.js';

/** A thread's scheduling policy as the kernel reports it (/proc stat field 41): 0 normal, 3 batch, 5 idle. */
function policyOf(tid: number): number {
  const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[38]);
}

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

test('setThreadPolicy: a worker drops itself to batch, then idle; the kernel reports it for that thread only', async () => {
  const mainTid = threadId();
  const before = policyOf(mainTid);
  const source = `
    const { parentPort } = require('node:worker_threads');
    const kernel = require(${JSON.stringify(require.resolve('../../src/kernel/index.js'))});
    parentPort.on('message', (policy) => {
      if (policy) kernel.setThreadPolicy(policy);
      parentPort.postMessage(kernel.threadId());
    });`;
  const worker = new Worker(source, { eval: true });
  const ask = (policy: string | null) => new Promise<number>((resolve) => {
    worker.once('message', resolve);
    worker.postMessage(policy);
  });
  try {
    const tid = await ask(null);
    assert.notEqual(tid, mainTid);
    assert.equal(policyOf(tid), 0, 'a new thread is SCHED_OTHER');
    // each step lowers the thread: no privilege needed
    assert.equal(await ask('batch'), tid);
    assert.equal(policyOf(tid), 3, 'SCHED_BATCH');
    await ask('idle');
    assert.equal(policyOf(tid), 5, 'SCHED_IDLE');
    assert.equal(policyOf(mainTid), before, "the main thread's policy is its own");
  } finally {
    await worker.terminate();
  }
});

test('setThreadPolicy refuses what is no policy, shaped like Node\'s errors', () => {
  assert.throws(() => setThreadPolicy('fifo' as never), { code: 'ERR_OUT_OF_RANGE', message: /policy/ });
  assert.throws(() => setThreadPolicy(5 as never), { code: 'ERR_INVALID_ARG_TYPE', message: /policy/ });
});
