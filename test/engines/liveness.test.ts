// The destination's liveness invariants, one test each, against a hand-driven source: every
// test here fails if its invariant is taken out of the engine.
import test from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { Capability, ResumeState, type ReturnPathEvent } from '../../src/wire/index.js';
import { PAGE, destination, filledPage, returnPath } from '../support/destination.js';
import { featureSkip } from '../support/hugepages.js';
import { probeFeatures, type Userfaultfd } from '../../src/kernel/index.js';
import { sleep, startToucher, waitFor } from '../support/threads.js';
import { type GuestBlock } from '../../src/pager/index.js';

const skip = featureSkip();
type Requests = Extract<ReturnPathEvent<GuestBlock>, { type: 'req-pages' }>;

function requestsIn(events: ReturnPathEvent<GuestBlock>[]): Requests[] {
  return events.filter((e): e is Requests => e.type === 'req-pages');
}

test('COMPLETE with pages missing fails, naming the block, the count and the first missing offset', { skip }, async () => {
  const d = await destination({ recoverSeconds: 0 });
  try {
    const { channel, encoder: e } = d.source;
    await d.startPostcopy();
    for (let page = 0; page < 10; page++) channel.send(e.ramPage('ram0', page * PAGE, filledPage(page + 1)));
    channel.send(e.endRam());
    channel.send(e.complete());
    channel.send(e.eof());
    const error = (await d.failed) as Error & { code: string };
    assert.equal(error.code, 'ERR_POSTCOPY_MISSING_PAGES');
    assert.match(error.message, /block 'ram0' lacks 502 page\(s\), the first at offset 0xa000/);
    assert.equal(d.migration.state, 'FAILED');
  } finally {
    d.cleanup();
  }
});

test('after COMPLETE the destination waits for the preempt channel before it judges, then ends', { skip }, async () => {
  const d = await destination({ recoverSeconds: 0, length: 8 * PAGE, capabilities: Capability.PREEMPT });
  try {
    let ended = false;
    d.migration.on('end', () => (ended = true));
    const { channel, encoder: e } = d.source;
    const preempt = await d.connect('preempt');
    await d.startPostcopy();
    for (let page = 0; page < 7; page++) channel.send(e.ramPage('ram0', page * PAGE, filledPage(page + 1)));
    channel.send(e.endRam());
    channel.send(e.complete());
    channel.send(e.eof());
    await sleep(300);
    assert.equal(d.migration.state, 'RUNNING', 'one page may still be in flight on the preempt channel');
    preempt.channel.send(preempt.encoder.ramPage('ram0', 7 * PAGE, filledPage(8)));
    preempt.channel.send(preempt.encoder.endRam());
    preempt.channel.send(preempt.encoder.eof());
    await waitFor(() => ended, 5000, 'END');
    assert.equal(new Int32Array(d.mapping.view(7 * PAGE, PAGE))[0], 8);
  } finally {
    d.cleanup();
  }
});

test('a requested page that does not arrive is requested again after requestRetryMs', { skip }, async () => {
  const d = await destination({ recoverSeconds: 0, requestRetryMs: 200 });
  try {
    const events = returnPath(d.source);
    const { channel, encoder: e } = d.source;
    await d.startPostcopy();
    const guest = startToucher(d.mapping, [5]);
    await waitFor(() => requestsIn(events).length >= 1, 5000, 'the first request');
    const first = performance.now();
    // the source "loses" it: nothing is sent, and the thread must not wait for ever
    await waitFor(() => requestsIn(events).length >= 2, 3000, 'the request again');
    const again = performance.now() - first;
    assert.ok(again >= 150, `asked again after ${again.toFixed(0)} ms, the bound is 200 ms`);
    const [r1, r2] = requestsIn(events);
    assert.deepEqual([r1.start, r2.start], [5 * PAGE, 5 * PAGE]);
    assert.equal(guest.settled(), false);
    channel.send(e.ramPage('ram0', 5 * PAGE, filledPage(55)));
    channel.send(e.endRam());
    assert.deepEqual((await guest.done).words, [55]);
    await guest.worker.terminate();
    assert.ok(d.migration.report().requests.resent >= 1);
  } finally {
    d.cleanup();
  }
});

test('a silent source (no bytes, no close) is a broken connection within the stall bound', { skip }, async () => {
  const d = await destination({ recoverSeconds: 0, stallSeconds: 1 });
  try {
    const { channel, encoder: e } = d.source;
    channel.send(e.advise(PAGE));
    const start = performance.now();
    // from here the source says nothing and keeps its socket open
    const error = (await d.failed) as Error & { code: string };
    const ms = performance.now() - start;
    assert.equal(error.code, 'ERR_POSTCOPY_CHANNEL_STALLED');
    assert.match(error.message, /main channel stalled: nothing received for 1\.\d s .* in state ADVISE/);
    assert.ok(ms >= 900 && ms < 2500, `noticed after ${ms.toFixed(0)} ms`);
  } finally {
    d.cleanup();
  }
});

test('a source that pings but never sends the page: no progress is a broken connection', { skip }, async () => {
  let stuck = '';
  const d = await destination({
    recoverSeconds: 0, stallSeconds: 5, noProgressSeconds: 1, requestRetryMs: 200,
    onGuestStuck: (message) => (stuck = message) as never,
  });
  try {
    const { channel, encoder: e } = d.source;
    await d.startPostcopy();
    const pings = setInterval(() => channel.send(e.ping(1)), 100);
    const guest = startToucher(d.mapping, [3]);
    try {
      const error = (await d.failed) as Error & { code: string };
      assert.equal(error.code, 'ERR_POSTCOPY_NO_PROGRESS');
      assert.match(error.message, /block 'ram0' offset 0x3000 requested 1\.\d s ago/);
    } finally {
      clearInterval(pings);
    }
    assert.equal(guest.settled(), false, 'the thread is still blocked: never handed a zero page');
    // without stopGuest, a thread blocked at the failure is a stuck guest (by default the
    // process ends): here the test stands in for that by closing the descriptor itself
    assert.match(stuck, /guest threads wait for pages that will never arrive, and no stopGuest was given/);
    (d.migration as unknown as { uffd: { close(): void } }).uffd.close();
    await guest.done;
    await guest.worker.terminate();
  } finally {
    d.cleanup();
  }
});

test('recovery: PAUSED keeps pages and blocked threads; RECV_BITMAP and RESUME bring back every request', { skip }, async () => {
  const d = await destination({ recoverSeconds: 10, requestRetryMs: 60_000 });
  try {
    const events = returnPath(d.source);
    const { channel, encoder: e } = d.source;
    await d.startPostcopy();
    for (let page = 0; page < 4; page++) channel.send(e.ramPage('ram0', page * PAGE, filledPage(page + 1)));
    channel.send(e.endRam());
    await waitFor(() => d.blocks.byId('ram0')!.receivedMap.count() === 4, 5000, 'the first pages');
    const guest = startToucher(d.mapping, [9]);
    await waitFor(() => requestsIn(events).length === 1, 5000, 'the request');
    const paused = new Promise<Error>((resolve) => d.migration.on('paused', resolve));
    channel.destroy();
    assert.match((await paused).message, /main channel closed by the peer/);
    assert.equal(d.migration.state, 'PAUSED');
    await sleep(200);
    assert.equal(guest.settled(), false, 'the blocked thread stays blocked while PAUSED');

    const again = await d.connect('main');
    const rp = returnPath(again);
    again.channel.send(again.encoder.recvBitmap('ram0'));
    again.channel.send(again.encoder.resume());
    await waitFor(() => rp.some((x) => x.type === 'resume-ack'), 5000, 'RESUME_ACK');
    const bitmap = rp.find((x): x is Extract<ReturnPathEvent<GuestBlock>, { type: 'recv-bitmap' }> => x.type === 'recv-bitmap')!;
    assert.deepEqual([...bitmap.bitmap.ranges()], [[0, 4]], 'the received bitmap names exactly the placed pages');
    const ack = rp.find((x): x is Extract<ReturnPathEvent<GuestBlock>, { type: 'resume-ack' }> => x.type === 'resume-ack')!;
    assert.equal(ack.value, ResumeState.RUNNING);
    assert.equal(d.migration.state, 'RUNNING');
    await waitFor(() => requestsIn(rp).some((r) => r.start === 9 * PAGE), 5000, 'the pending request, sent again');
    again.channel.send(again.encoder.ramPage('ram0', 9 * PAGE, filledPage(99)));
    again.channel.send(again.encoder.endRam());
    assert.deepEqual((await guest.done).words, [99]);
    await guest.worker.terminate();
    const report = d.migration.report();
    assert.equal(report.recoveries, 1);
    assert.ok(report.paused_ms > 150, `paused ${report.paused_ms} ms`);
  } finally {
    d.cleanup();
  }
});

test('no recovery within the bound: FAILED, naming the cause and the bound', { skip }, async () => {
  const d = await destination({ recoverSeconds: 0.5 });
  try {
    const { channel } = d.source;
    await d.startPostcopy();
    channel.destroy();
    const error = (await d.failed) as Error & { code: string };
    assert.equal(error.code, 'ERR_POSTCOPY_RECOVERY_TIMEOUT');
    assert.match(error.message, /connection lost \(main channel closed by the peer( \((read|write) E[A-Z]+\))?\) and the source did not come back within 0\.5 s/);
  } finally {
    d.cleanup();
  }
});

test('a break before postcopy fails at once, naming the state', { skip }, async () => {
  const d = await destination({ recoverSeconds: 30 });
  try {
    d.source.channel.send(d.source.encoder.advise(PAGE));
    await waitFor(() => d.migration.state === 'ADVISE', 5000, 'ADVISE');
    d.source.channel.destroy();
    const error = (await d.failed) as Error & { code: string };
    assert.equal(error.code, 'ERR_POSTCOPY_CHANNEL_CLOSED');
    assert.match(error.message, /main channel closed by the peer( \((read|write) E[A-Z]+\))? in state ADVISE/);
  } finally {
    d.cleanup();
  }
});

test('a guest that cannot be stopped after a failure is declared stuck within the bound, never woken onto zeros', { skip }, async () => {
  let stuck: { message: string; at: number } | undefined;
  const d = await destination({
    recoverSeconds: 0,
    guestStopTimeoutMs: 300,
    stopGuest: () => new Promise<void>(() => undefined), // a thread in a fault cannot be terminated
    onGuestStuck: (message) => {
      stuck = { message, at: performance.now() };
      return undefined as never;
    },
  });
  try {
    const { channel } = d.source;
    await d.startPostcopy();
    const events = returnPath(d.source);
    const guest = startToucher(d.mapping, [7]);
    await waitFor(() => requestsIn(events).length > 0, 5000, 'the request');
    channel.destroy();
    await d.failed;
    const failedAt = performance.now();
    await waitFor(() => stuck !== undefined, 3000, 'the stuck guest');
    assert.match(stuck!.message, /did not stop within 300 ms/);
    assert.ok(stuck!.at - failedAt < 1000);
    assert.equal(guest.settled(), false, 'the descriptor stayed open: the thread never read a zero page');
    (d.migration as unknown as { uffd: { close(): void } }).uffd.close();
    await guest.done;
    await guest.worker.terminate();
  } finally {
    d.cleanup();
  }
});

test('no POISON (kernels before 6.6) and no stopGuest: after a failure the descriptor stays open, so a later access blocks instead of reading zeros', { skip }, async () => {
  const { features } = probeFeatures();
  const hadPoison = features.POISON;
  features.POISON = false; // as on 6.1: every part asks this (cached) report what the kernel has
  try {
    const d = await destination({ recoverSeconds: 0, stallSeconds: 5 });
    try {
      await d.startPostcopy();
      const uffd = (d.migration as unknown as { uffd: Userfaultfd }).uffd;
      assert.equal(uffd.features.has('POISON'), false);
      d.source.channel.destroy();
      await d.failed;
      assert.equal(uffd.closed, false, 'the descriptor stays open: closing it would wake an access onto a zero page');
      const guest = startToucher(d.mapping, [5]);
      await sleep(300);
      assert.equal(guest.settled(), false, 'a later access blocks: never a zero page');
      uffd.close(); // the test stands in for the end of the process
      await guest.done;
      await guest.worker.terminate();
    } finally {
      d.cleanup();
    }
  } finally {
    features.POISON = hadPoison;
  }
});
