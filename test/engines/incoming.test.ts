// The destination under bad input and out-of-order commands: each fails the migration with a
// message naming the field and value (or the state and command), and the process lives on.
import test from 'node:test';
import assert from 'node:assert/strict';
import { FrameKind, RamFlag } from '../../src/wire/index.js';
import { PAGE, destination as makeDestination } from '../support/destination.js';
import { featureSkip, hugeSkip } from '../support/hugepages.js';
import { sleep, startToucher, waitFor } from '../support/threads.js';
import { IncomingStateMachine } from '../../src/incoming/state.js';

/** A destination that fails (rather than pauses) when its connection breaks. */
const destination = (pageSize = PAGE, length = 1 << 21, stopGuest?: () => Promise<void>) =>
  makeDestination({ pageSize, length, stopGuest, recoverSeconds: 0 });

/** A RAM frame with one raw record: u8 kind, u64 offset|flags, u8 len, idstr, payload. */
function rawRecord(offset: number, flags: number, idstr: string, payload: Uint8Array): Buffer {
  const head = Buffer.alloc(1 + 8 + 1 + idstr.length);
  head[0] = FrameKind.RAM;
  head.writeBigUInt64BE(BigInt(offset) | BigInt(flags), 1);
  head[9] = idstr.length;
  head.write(idstr, 10, 'latin1');
  return Buffer.concat([head, payload]);
}

const badInputs: { name: string; bytes: () => Buffer[]; message: RegExp }[] = [
  { name: 'an unknown frame kind', bytes: () => [Buffer.of(0x7f)], message: /frame kind 0x7f/ },
  { name: 'an idstr naming no block', bytes: () => [rawRecord(0, RamFlag.PAGE, 'nope', new Uint8Array(PAGE))], message: /nope/ },
  { name: 'an offset at the block end', bytes: () => [rawRecord(1 << 21, RamFlag.PAGE, 'ram0', new Uint8Array(PAGE))], message: /offset 0x200000 .*beyond/ },
  { name: 'a zero page whose byte is not 0', bytes: () => [rawRecord(0, RamFlag.ZERO, 'ram0', Uint8Array.of(5))], message: /zero page byte is 0x5/ },
  { name: 'unknown RAM flags', bytes: () => [rawRecord(0, 0x400, 'ram0', new Uint8Array(0))], message: /0x400/ },
];

for (const bad of badInputs) {
  test(`bad input: ${bad.name} fails the migration, naming it`, { skip: featureSkip() }, async () => {
    const d = await destination();
    try {
      for (const b of bad.bytes()) d.source.channel.send(b);
      const error = await d.failed;
      assert.match(error.message, bad.message);
      assert.equal(d.migration.state, 'FAILED');
      assert.equal(d.mapping.bytes(0, PAGE).some((b) => b !== 0), false, 'nothing was written');
    } finally {
      d.cleanup();
    }
  });
}

const orders: { name: string; commands: (e: Awaited<ReturnType<typeof destination>>['source']['encoder']) => Buffer[]; message: RegExp }[] = [
  { name: 'LISTEN before ADVISE', commands: (e) => [e.listen()], message: /POSTCOPY_LISTEN is not allowed in state NONE/ },
  { name: 'DISCARD after LISTEN', commands: (e) => [e.advise(PAGE), e.listen(), e.discard('ram0', [[0, PAGE]])], message: /POSTCOPY_RAM_DISCARD is not allowed in state LISTENING/ },
  { name: 'RUN twice', commands: (e) => [e.advise(PAGE), e.listen(), e.run(), e.run()], message: /POSTCOPY_RUN is not allowed in state RUNNING/ },
  { name: 'ADVISE with another page size', commands: (e) => [e.advise(PAGE | (2 << 20))], message: /page size summary 0x201000 != local 0x1000/ },
];

for (const order of orders) {
  test(`commands out of order: ${order.name} fails, naming state and command`, { skip: featureSkip() }, async () => {
    const d = await destination();
    try {
      for (const b of order.commands(d.source.encoder)) d.source.channel.send(b);
      assert.match((await d.failed).message, order.message);
      assert.equal(d.migration.state, 'FAILED');
    } finally {
      d.cleanup();
    }
  });
}

test('a target page of another host page before the current one is complete is rejected', { skip: featureSkip('MISSING_HUGETLBFS') || hugeSkip(2) }, async () => {
  const d = await destination(2 << 20, 4 << 20);
  try {
    const e = d.source.encoder;
    d.source.channel.send(e.advise(2 << 20));
    d.source.channel.send(e.listen());
    d.source.channel.send(e.ramPage('ram0', 0, new Uint8Array(PAGE).fill(1)));
    d.source.channel.send(e.ramPage('ram0', 2 << 20, new Uint8Array(PAGE).fill(2)));
    assert.match((await d.failed).message, /non-same host page on channel main: .*host page 0x0 .*offset 0x200000/);
  } finally {
    d.cleanup();
  }
});

test('state machine: the full path, and every illegal command names state and command', () => {
  const m = new IncomingStateMachine();
  const seen: string[] = [];
  m.onChange((from, to) => seen.push(`${from}->${to}`));
  for (const t of ['POSTCOPY_ADVISE', 'POSTCOPY_RAM_DISCARD', 'POSTCOPY_RAM_DISCARD', 'POSTCOPY_LISTEN', 'POSTCOPY_RUN', 'COMPLETE'] as const) m.apply(t);
  assert.deepEqual(seen, ['NONE->ADVISE', 'ADVISE->DISCARD', 'DISCARD->DISCARD', 'DISCARD->LISTENING', 'LISTENING->RUNNING', 'RUNNING->END']);
  assert.throws(() => m.apply('POSTCOPY_RUN'), /POSTCOPY_RUN is not allowed in state END \(allowed in LISTENING\)/);
  const n = new IncomingStateMachine();
  assert.throws(() => n.apply('POSTCOPY_RUN'), /not allowed in state NONE/);
  assert.equal(n.state, 'NONE', 'a refused command changes nothing');
  n.apply('POSTCOPY_ADVISE');
  n.apply('POSTCOPY_LISTEN');
  assert.equal(n.atomicPlacement, true);
  n.apply('CONNECTION_LOST');
  assert.equal(n.state, 'PAUSED');
  n.fail(new Error('x'));
  assert.equal(n.state, 'FAILED');
  assert.throws(() => n.apply('POSTCOPY_RESUME'), /not allowed in state FAILED/);
});

test('a broken connection in postcopy: the blocked guest thread is stopped before the userfaultfd closes', { skip: featureSkip() }, async () => {
  let stopRequested = false;
  let release = () => {};
  const stopped = new Promise<void>((r) => (release = r));
  const d = await destination(PAGE, 1 << 21, () => {
    stopRequested = true;
    return stopped;
  });
  try {
    const requests: number[] = [];
    d.source.channel.socket.on('data', () => requests.push(1));
    d.source.channel.socket.resume();
    const e = d.source.encoder;
    d.source.channel.send(e.advise(PAGE));
    d.source.channel.send(e.listen());
    d.source.channel.send(e.run());
    await waitFor(() => d.migration.state === 'RUNNING', 5000, 'RUNNING');
    const guest = startToucher(d.mapping, [5]);
    await waitFor(() => requests.length > 0, 5000, 'the page request');
    d.source.channel.destroy();
    assert.match((await d.failed).message, /main channel closed by the peer( \((read|write) E[A-Z]+\))? in state RUNNING/);
    assert.equal(stopRequested, true, 'the engine asked for the guest to be stopped');
    await sleep(200);
    assert.equal(guest.settled(), false, 'the guest thread went on while its page could not arrive');
    // only once the guest is stopped may the descriptor close (which would hand the thread a zero page)
    release();
    const { words } = await guest.done;
    assert.deepEqual(words, [0]);
    await guest.worker.terminate();
  } finally {
    d.cleanup();
  }
});
