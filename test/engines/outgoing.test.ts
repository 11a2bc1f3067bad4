// The source against a real destination in this process (nobody touching the memory, so no
// guest threads): the end of the stream is decided by the dirty bitmap, a silent destination
// is noticed within the stall bound, and a connection cut in postcopy is recovered with every
// page arriving exactly once where it was not placed before.
import test from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readSync } from 'node:fs';
import { Mapping, RamBlock, RamList } from '../../src/index.js';
import { PM_PRESENT, PagemapReader } from '../../src/kernel/index.js';
import { IncomingMigration } from '../../src/incoming/index.js';
import { OutgoingMigration, type OutgoingOptions } from '../../src/outgoing/index.js';
import { IncomingListener, connectChannel, type ChannelRole } from '../../src/transport/index.js';
import { Capability } from '../../src/wire/index.js';
import { patternImage } from '../support/serve.js';
import { featureSkip } from '../support/hugepages.js';
import { waitFor } from '../support/threads.js';
import { startPageWriter, startWriter } from '../support/writer.js';
import { type GuestBlock } from '../../src/pager/index.js';
import { convergenceJudge } from '../../src/outgoing/precopy.js';

const skip = featureSkip('PAGEFAULT_FLAG_WP');
const SIZE = 8 << 20;

/** pattern: every page but every 8th; first-half: the first half of the pages, the rest never touched. */
type Fill = 'none' | 'pattern' | 'first-half';

function blockList(fill: Fill): RamList<Mapping> {
  const mapping = new Mapping(SIZE);
  if (fill === 'first-half') mapping.bytes(0, SIZE / 2).set(patternImage(SIZE / 2, 6));
  if (fill === 'pattern') {
    const image = patternImage(SIZE, 5);
    // every 8th page stays zero: zero records travel too
    for (let page = 0; page < SIZE / 4096; page++) if (page % 8) mapping.bytes(page * 4096, 4096).set(image.subarray(page * 4096, (page + 1) * 4096));
  }
  return new RamList<Mapping>([new RamBlock<Mapping>({ idstr: 'ram0', usedLength: SIZE, host: mapping })]);
}

async function pair(source: Partial<OutgoingOptions>, incoming: { recoverSeconds?: number; stallSeconds?: number } = {}, preempt = true, sourceFill: Fill = 'pattern') {
  const sourceBlocks = blockList(sourceFill);
  const destBlocks = blockList('none');
  const migration = new IncomingMigration({ blocks: destBlocks, ...incoming });
  const listener = new IncomingListener<GuestBlock>({ endpoint: { kind: 'tcp', host: '127.0.0.1', port: 0 }, token: 't', blocks: destBlocks });
  listener.admit = (hello) => migration.admit(hello);
  listener.on('channel', (accepted) => migration.attach(accepted));
  const endpoint = await listener.listen();
  const connect = (role: ChannelRole, timeout = 5) => connectChannel<GuestBlock>({
    endpoint, sessionId: 's', role, token: 't', blocks: sourceBlocks, timeout, capabilities: role === 'main' && preempt ? Capability.PREEMPT : 0,
  });
  const outgoing = new OutgoingMigration({
    blocks: sourceBlocks,
    main: await connect('main'),
    preempt: preempt ? await connect('preempt') : undefined,
    reconnect: connect,
    precopySeconds: 0,
    pauseGuest: async () => undefined,
    ...source,
  });
  const ended = new Promise<string>((resolve) => {
    migration.on('end', () => resolve('END'));
    migration.on('failed', (e) => resolve(`FAILED: ${e.message}`));
  });
  const cleanup = () => {
    listener.close();
    for (const b of [...sourceBlocks, ...destBlocks]) b.host!.unmap();
  };
  const same = () => Buffer.compare(Buffer.from(sourceBlocks.byId('ram0')!.host!.bytes()), Buffer.from(destBlocks.byId('ram0')!.host!.bytes())) === 0;
  return { migration, outgoing, ended, cleanup, same, listener, sourceBlocks };
}

test('the stream ends when the dirty bitmap is empty, even when every batch window has passed before its first page', { skip, timeout: 60_000 }, async () => {
  // batchMs 0: each batch's time is up before it starts (as after a preemption or GC pause);
  // a stream that ended on an empty batch would send COMPLETE with every page still dirty
  const p = await pair({ batchMs: 0 }, { recoverSeconds: 0 });
  try {
    const report = await p.outgoing.run();
    assert.equal(await p.ended, 'END');
    assert.equal(report.pages_sent.postcopy + report.pages_sent.requested, SIZE / 4096);
    assert.ok(p.same(), 'the destination holds the source memory byte for byte');
  } finally {
    p.cleanup();
  }
});

test('a destination that goes silent (no bytes, no close) is noticed within the stall bound, naming channel and phase', { skip, timeout: 60_000 }, async () => {
  const p = await pair({ stallSeconds: 1, recoverSeconds: 0 }, { recoverSeconds: 0, stallSeconds: 60 });
  try {
    // the destination stops reading and answering: a partition seen from the source
    (p.migration as unknown as { connection: { main: { socket: { pause(): void } } } }).connection.main.socket.pause();
    p.migration.removeAllListeners('state');
    const start = Date.now();
    await assert.rejects(p.outgoing.run(), (error: Error & { code: string }) => {
      assert.equal(error.code, 'ERR_POSTCOPY_CHANNEL_STALLED');
      assert.match(error.message, /main channel stalled: nothing received for 1\.\d s .* during (postcopy|switchover)/);
      return true;
    });
    assert.ok(Date.now() - start < 4000);
  } finally {
    p.migration.fail(new Error('test over'));
    p.cleanup();
  }
});

for (const preempt of [true, false]) {
  test(`a connection cut in postcopy is recovered: nothing placed is sent again, nothing unplaced is lost (preempt ${preempt})`, { skip, timeout: 60_000 }, async () => {
    const p = await pair({ recoverSeconds: 10 }, { recoverSeconds: 10 }, preempt);
    try {
      const placedBeforeCut = new Promise<number>((resolve) => {
        const timer = setInterval(() => {
          const count = p.migration.blocks.byId('ram0')!.receivedMap.count();
          if (count < 300) return;
          clearInterval(timer);
          // cut the source's side of the main channel in the middle of the stream
          (p.outgoing as unknown as { channels: { main: { channel: { destroy(): void } } } }).channels.main.channel.destroy();
          resolve(count);
        }, 1);
      });
      const report = await p.outgoing.run();
      const before = await placedBeforeCut;
      assert.equal(await p.ended, 'END');
      assert.ok(p.same(), 'the destination holds the source memory byte for byte');
      assert.equal(report.recoveries, 1);
      const dest = p.migration.report();
      assert.equal(dest.recoveries, 1);
      // every page placed exactly once; what was in flight at the cut came again
      const pages = SIZE / 4096;
      assert.equal(dest.pages.streamed + dest.pages.requested, pages);
      assert.ok(before < pages);
      const sent = report.pages_sent.postcopy + report.pages_sent.requested;
      assert.equal(sent, pages + report.pages_resent, `sent ${sent}, resent ${report.pages_resent}`);
      await waitFor(() => p.migration.state === 'END', 1000, 'END');
    } finally {
      p.cleanup();
    }
  });
}

/** The per-round numbers add up: each round's pages sum to the precopy total, left = what the next round sent. */
function assertRoundsAddUp(report: Awaited<ReturnType<OutgoingMigration['run']>>): void {
  const rounds = report.precopy_rounds;
  assert.equal(rounds.length, report.rounds);
  assert.equal(report.precopy_totals.rounds, report.rounds);
  assert.equal(rounds.reduce((a, r) => a + r.sent_pages, 0), report.pages_sent.precopy);
  assert.equal(report.precopy_totals.sent_pages, report.pages_sent.precopy);
  assert.equal(rounds.reduce((a, r) => a + r.dirtied_pages, 0), report.precopy_totals.dirtied_pages);
  assert.equal(rounds[0].sent_pages, SIZE / 4096, 'the first round sends every page');
  for (let i = 1; i < rounds.length; i++) assert.equal(rounds[i].sent_pages, rounds[i - 1].left_pages, `round ${i + 1} sends what round ${i} left`);
  for (const r of rounds) assert.ok(r.ms >= 0 && r.send_mib_s >= 0 && r.dirty_mib_s >= 0, JSON.stringify(r));
}

test('precopy with a guest writing every page flat out stops as not-converging, long before its time is up; verified', { skip, timeout: 60_000 }, async () => {
  let writer: { stop(): Promise<void> } | undefined;
  const progress: unknown[] = [];
  // the writer dirties every page (the hot set is the whole memory) faster than a link of
  // 16 MiB/s carries them: each round takes about half a second and finds everything dirty again
  const p = await pair({
    precopySeconds: 30,
    precopyMaxMiBs: 16,
    pauseGuest: async () => writer!.stop(),
    onProgress: (e) => e.phase === 'precopy' && progress.push(e),
  }, { recoverSeconds: 0 });
  try {
    writer = await startWriter(p.sourceBlocks.byId('ram0')!.host!);
    const report = await p.outgoing.run();
    assert.equal(await p.ended, 'END');
    assert.ok(p.same(), 'the destination holds the source memory byte for byte');
    assert.equal(report.precopy_end, 'not-converging', JSON.stringify(report.precopy_rounds));
    assert.ok(report.precopy_ms < 15_000, `precopy took ${report.precopy_ms} ms of 30 s`);
    assert.ok(report.rounds >= 3 && report.rounds <= 10, `${report.rounds} rounds`);
    for (const r of report.precopy_rounds) assert.ok(r.send_mib_s < 20, `rate limited: ${JSON.stringify(r)}`);
    assertRoundsAddUp(report);
    assert.ok(report.pages_sent.postcopy + report.pages_sent.requested > 16, 'postcopy moved what precopy could not');
    assert.ok(progress.some((e) => (e as { precopy?: { lastRound?: unknown } }).precopy?.lastRound), 'progress carries the last round');
  } finally {
    await writer?.stop();
    p.cleanup();
  }
});

test('precopy of an idle guest ends as converged after one round; verified', { skip, timeout: 60_000 }, async () => {
  const p = await pair({ precopySeconds: 30 }, { recoverSeconds: 0 });
  try {
    const report = await p.outgoing.run();
    assert.equal(await p.ended, 'END');
    assert.ok(p.same(), 'the destination holds the source memory byte for byte');
    assert.equal(report.precopy_end, 'converged');
    assert.equal(report.rounds, 1);
    assert.equal(report.precopy_rounds[0].dirtied_pages, 0);
    assert.equal(report.pages_sent.postcopy + report.pages_sent.requested, 0, 'nothing was left for postcopy');
    assertRoundsAddUp(report);
  } finally {
    p.cleanup();
  }
});

/** Pages of [base, base+length) that are not present in this process (raw pagemap bit 63). */
function notPresent(mapping: Mapping, pages: number[]): number[] {
  const fd = openSync('/proc/self/pagemap', 'r');
  try {
    const entry = Buffer.alloc(8);
    return pages.filter((page) => {
      readSync(fd, entry, 0, 8, ((mapping.base + page * 4096) / 4096) * 8);
      return (entry.readBigUInt64LE(0) & PM_PRESENT) === 0n;
    });
  } finally {
    closeSync(fd);
  }
}

test('pages never touched go as zero pages without being read; ones written during precopy still arrive with their data', { skip, timeout: 60_000 }, async () => {
  // the source's block: first half written, second half never touched (at least 512 pages stay
  // unpopulated even where THP is "always"); a page writer writes 16 of the untouched pages
  // while precopy runs, after the dirty log is armed
  let writes: Promise<void> | undefined;
  let writer: ReturnType<typeof startPageWriter> | undefined;
  const written = Array.from({ length: 16 }, (_, i) => SIZE / 4096 / 2 + 64 + i * 61);
  const p = await pair({
    precopySeconds: 30,
    holdGuest: (critical) => {
      critical(); // the page writer writes only when told: nothing to hold still
      writes = writer!.write(written);
    },
    pauseGuest: async () => writes,
  }, { recoverSeconds: 0 }, true, 'first-half');
  try {
    const mapping = p.sourceBlocks.byId('ram0')!.host!;
    writer = startPageWriter(mapping);
    const untouched: number[] = [];
    new PagemapReader().scanUnpopulated(mapping.base, mapping.base + SIZE, (start, end) => {
      for (let at = start; at < end; at += 4096) untouched.push((at - mapping.base) / 4096);
    });
    assert.ok(untouched.length >= 512, `${untouched.length} pages unpopulated before the migration`);
    const report = await p.outgoing.run();
    assert.equal(await p.ended, 'END');
    // each untouched page went once as a zero page unread; a written one may have gone so too,
    // before the sync that reported it sent it again with its data
    const neverWritten = untouched.filter((page) => !written.includes(page));
    assert.ok(report.pages_sent.untouched >= neverWritten.length && report.pages_sent.untouched <= untouched.length,
      `${report.pages_sent.untouched} sent unread, ${untouched.length} untouched, ${neverWritten.length} never written`);
    // (before anything here reads the source memory)
    assert.deepEqual(notPresent(mapping, neverWritten), neverWritten, 'the source never faulted in a page nobody wrote');
    for (const page of written) assert.notEqual(mapping.bytes(page * 4096 + 8, 1)[0], 0, `page ${page} was written`);
    assert.ok(p.same(), 'the destination holds the source memory byte for byte, the 16 written pages too');
  } finally {
    await writer?.close();
    p.cleanup();
  }
});

test('straight to postcopy, what the guest wrote before the switchover is synced outside the pause: the final sync finds nothing', { skip: featureSkip('PAGEFAULT_FLAG_WP', 'WP_ASYNC', 'WP_UNPOPULATED'), timeout: 60_000 }, async () => {
  // 256 untouched pages are written once the log is armed (by this thread: the PAGEMAP_SCAN log
  // records writes without a fault), and nothing is written after that
  const written = Array.from({ length: 256 }, (_, i) => SIZE / 4096 / 2 + i * 4);
  let mapping: Mapping | undefined;
  const p = await pair({
    dirtyLog: 'pagemap-scan',
    holdGuest: (critical) => {
      critical();
      for (const page of written) mapping!.bytes(page * 4096, 4096).fill(0x5a);
    },
  }, { recoverSeconds: 0 }, true, 'first-half');
  try {
    mapping = p.sourceBlocks.byId('ram0')!.host!;
    const report = await p.outgoing.run();
    assert.equal(await p.ended, 'END');
    assert.equal(report.final_sync_pages, 0, 'the pre-pause sync took the 256 written pages');
    assert.equal(report.discarded_pages, 0, 'nothing was sent before the pause: nothing to discard');
    assert.ok(p.same(), 'the destination holds the source memory byte for byte, the written pages too');
  } finally {
    p.cleanup();
  }
});

test('the convergence judge: outpaced twice, or a dirty set not halved in 3 rounds, stops; shrinking rounds go on', () => {
  const run = (rounds: [number, number, number][]) => {
    const judge = convergenceJudge();
    return rounds.map(([sent, dirtied, left], i) => judge({ round: i + 1, sent_pages: sent, dirtied_pages: dirtied, left_pages: left }));
  };
  // the first round (every page) is never judged; then two outpaced rounds
  assert.deepEqual(run([[100, 100, 100], [100, 100, 100], [100, 100, 100]]), [false, false, true]);
  // shrinking by half each round: converging
  assert.deepEqual(run([[800, 400, 400], [400, 200, 200], [200, 100, 100], [100, 50, 50]]), [false, false, false, false]);
  // noisy rounds that never get below half of where they were three rounds before
  assert.deepEqual(run([[800, 500, 500], [500, 400, 400], [400, 450, 450], [450, 300, 300]]), [false, false, false, true]);
});
