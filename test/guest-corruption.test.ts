// The reference guest must not launder corruption: a writer checks a page before writing
// over it, and the verifier checks every word of the ledger and of every page header (or
// a checksum covers it). Each test here fails if one of those checks is removed.
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { Guest, GuestCorruptionError, corruptPage, guestLayout, guestPageHeader, verify } from '../src/guest/index.js';
import { T, copyOf, shared, stoppedGuest, until } from './support/guest.js';

const { PAGE_SIZE, P_RANDOM, pageOf, pickIndex, readSlot } = guestLayout;

after(() => Guest.terminateAll());

/** Resolves just after thread t finished an operation (spinning, to catch it early). */
async function justAfterAnOp(g: Guest, t: number): Promise<void> {
  const ops = g.stats().perThread[t].ops;
  const moved = (): boolean => {
    for (const end = performance.now() + 20; performance.now() < end; ) if (g.stats().perThread[t].ops !== ops) return true;
    return false;
  };
  await until(moved, `thread ${t} finishing an operation`);
}

test('a writer finds a page corrupted under it before rewriting it: the guest fails naming the page', T, async () => {
  // 8 data pages, 2 sequential writers: thread 1 rewrites each of its 4 pages every 4 writes.
  const { memory, buffer } = shared(9 * PAGE_SIZE);
  const g = await Guest.start({ memory, threads: 2, pattern: 'sequential', seed: 4, rate: 200 });
  const seen: Error[] = [];
  g.on('threadError', (e: Error) => seen.push(e));
  try {
    await until(() => g.stats().perThread[1].ops >= 8); // every page written at least once
    // Rate-limited, the writer sleeps about 5 ms after each write: flipping then cannot race
    // a write of the page (a write that overwrites the flip would legitimately erase it).
    await justAfterAnOp(g, 1);
    const page = 6; // owned by thread 1 ((6 - 1) % 2)
    const version = guestPageHeader(buffer, page).version;
    corruptPage(buffer, page, 'body');
    await until(() => g.status === 'failed', 'the guest failing');

    const expected = new RegExp(
      `^guest thread 1: page ${page} is corrupt before write: checksum 0x[0-9a-f]{8} in header != 0x[0-9a-f]{8} of body \\(version ${version}\\)$`,
    );
    assert.equal(g.errors.length, 1, g.errors.join('\n'));
    assert.ok(g.errors[0] instanceof GuestCorruptionError);
    assert.match(g.errors[0].message, expected);
    assert.deepEqual(seen, g.errors);
    assert.equal((g.errors[0] as GuestCorruptionError).page, page);
    assert.equal(guestPageHeader(buffer, page).version, version, 'the corrupt page was written over');
    await assert.rejects(g.runOps(1), (e) => e === g.errors[0]);

    await g.stop();
    assert.equal(g.status, 'failed', 'stop() made the failure look like a clean stop');
    const report = await g.verify();
    assert.equal(report.ok, false);
    assert.equal(report.firstBad?.page, page);
    assert.match(report.firstBad!.reason, expected);
    // Memory holds the corrupt page, and nothing else is wrong: the other writer stopped cleanly.
    const memoryReport = verify(buffer);
    assert.equal(memoryReport.bad, 1, memoryReport.badPages.map((b) => b.reason).join('\n'));
    assert.match(memoryReport.firstBad!.reason, new RegExp(`^page ${page}: checksum`));
  } finally {
    await g.stop();
  }
});

test('a guest resumed on a copy with a corrupt page fails instead of writing over it', T, async () => {
  // The audit's case: a migrated page with one flipped byte, rewritten by the resumed guest.
  const { buffer } = await stoppedGuest('sequential', 1, 20, { fill: 1 });
  const copy = copyOf(buffer);
  const page = 1 + readSlot(new Int32Array(copy), 0).cursor; // the next page the writer writes
  corruptPage(copy, page, 'body', PAGE_SIZE - 1);
  const g = await Guest.resumeFrom({ memory: { kind: 'shared', buffer: copy }, paused: true });
  try {
    await assert.rejects(g.runOps(1000), new RegExp(`^GuestCorruptionError: guest thread 0: page ${page} is corrupt before write: checksum`));
    assert.equal(g.stats().writes, 0);
    await g.stop();
    const report = await g.verify();
    assert.equal(report.ok, false);
    assert.equal(report.firstBad?.page, page);
  } finally {
    await g.stop();
  }
});

test('a writer does not write over a page that another thread wrote or left busy', T, async () => {
  for (const how of ['index', 'busy', 'version'] as const) {
    const { buffer } = await stoppedGuest('random', 1, 2000);
    const copy = copyOf(buffer);
    // the writer's next page: one more step of its RNG
    const slot = readSlot(new Int32Array(copy), 0);
    const page = pageOf(slot, pickIndex(P_RANDOM, { rng: slot.rng, cursor: slot.cursor }, slot.partSize, 0, 1, 0), 1);
    corruptPage(copy, page, how);
    const g = await Guest.resumeFrom({ memory: { kind: 'shared', buffer: copy }, paused: true });
    try {
      await assert.rejects(g.runOps(1), new RegExp(`guest thread 0: page ${page} is corrupt before write`), how);
    } finally {
      await g.stop();
    }
  }
});
