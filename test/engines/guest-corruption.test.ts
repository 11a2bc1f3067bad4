// The reference guest must not launder corruption: a writer checks a page before writing
// over it, and the verifier checks every word of the ledger and of every page header (or
// a checksum covers it). Each test here fails if one of those checks is removed.
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { Guest, GuestCorruptionError, corruptPage, guestLayout, guestLedger, guestPageHeader, verify } from '../../src/guest/index.js';
import { T, copyOf, shared, stoppedGuest, until } from '../support/guest.js';

const { FILL_WRITER, HEADER_WORDS, H_FLAGS, MAX_THREADS, PAGE_SIZE, PAGE_WORDS, P_RANDOM, S_READS_HI, S_READS_LO, S_RNG } = { ...guestLayout, ...guestLedger };
const { checkPage, pageOf, pickIndex, readSlot, slotBase, writePage, writeSlot, xs32 } = { ...guestLayout, ...guestLedger };

after(() => Guest.terminateAll());


test('a writer finds a page corrupted under it before rewriting it: the guest fails naming the page', T, async () => {
  // 8 data pages, 2 sequential writers: thread 1 rewrites each of its 4 pages every 4 writes.
  const { memory, buffer } = shared(9 * PAGE_SIZE);
  const g = await Guest.start({ memory, threads: 2, pattern: 'sequential', seed: 4, rate: 200 });
  const seen: Error[] = [];
  g.on('threadError', (e: Error) => seen.push(e));
  try {
    await until(() => g.stats().perThread[1].ops >= 8); // every page written at least once
    // Parked, no writer can race the flip (a write that overwrites it would legitimately erase
    // it, and a write between reading the version and the flip would change the version).
    await g.pause();
    const page = 6; // owned by thread 1 ((6 - 1) % 2)
    const version = guestPageHeader(buffer, page).version;
    corruptPage(buffer, page, 'body');
    g.resume();
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

test('a writer does not write over a page whose header is damaged (other index, busy, version without its body)', T, async () => {
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

/**
 * Flip every bit of each of `words` (Int32 indexes into the block) in turn, verifying with
 * and without the RNG replay (the checksums alone must catch it), and restore it. Returns
 * the flips that verified clean, as "word.bit (mode)".
 */
function flipsThatVerify(buffer: SharedArrayBuffer, words: number[]): string[] {
  const i32 = new Int32Array(buffer);
  const escaped: string[] = [];
  for (const w of words) {
    for (let bit = 0; bit < 32; bit++) {
      i32[w] ^= 1 << bit;
      if (verify(buffer).ok) escaped.push(`${w}.${bit}`);
      if (verify(buffer, { replay: false }).ok) escaped.push(`${w}.${bit} (no replay)`);
      i32[w] ^= 1 << bit;
    }
  }
  return escaped;
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

const flipped = [
  { pattern: 'random', threads: 4, readers: 2 },
  { pattern: 'hotset', threads: 3, readers: 1 },
  { pattern: 'sequential', threads: 3, readers: 1 },
  { pattern: 'read', threads: 2, readers: 2 },
] as const;

for (const { pattern, threads, readers } of flipped) {
  test(`every single-bit flip in the ledger or a page header of a parked ${pattern} guest fails verify`, T, async () => {
    const { memory, buffer } = shared(17 * PAGE_SIZE); // 16 data pages: verify stays quick
    const g = await Guest.start({ memory, threads, readers, pattern, seed: 21, fill: pattern === 'read' ? 1 : 0, paused: true });
    try {
      await g.runOps(6); // writers leave some of their 8 pages blank (version 0)
      const blank = range(1, 17).filter((p) => guestPageHeader(buffer, p).version === 0).length;
      assert.ok(pattern === 'read' ? blank === 0 : blank > 0 && blank < 16, `${blank} blank pages`);
      assert.equal(verify(buffer).ok, true);
      assert.deepEqual(flipsThatVerify(buffer, range(0, PAGE_WORDS)), [], 'ledger flips');
      const pages = range(1, 17);
      const headers = pages.flatMap((p) => range(p * PAGE_WORDS, p * PAGE_WORDS + HEADER_WORDS));
      assert.deepEqual(flipsThatVerify(buffer, headers), [], 'page header flips');
      // Body words: the first, the last and a spread between, of a few pages (blank ones included).
      const bodyOffsets = [HEADER_WORDS, HEADER_WORDS + 1, 200, 517, 1021, PAGE_WORDS - 1];
      const bodies = [1, 2, 9, 16].flatMap((p) => bodyOffsets.map((w) => p * PAGE_WORDS + w));
      assert.deepEqual(flipsThatVerify(buffer, bodies), [], 'page body flips');
      // Every bit was restored: the guest carries on and verifies clean.
      await g.runOps(40);
      const r = verify(buffer);
      assert.equal(r.ok, true, r.firstBad?.reason);
      assert.equal(r.exact, true);
    } finally {
      await g.stop();
    }
  });
}

test("a reader's read count, RNG and cursor are checked: by its slot checksum, and against each other", T, async () => {
  for (const pattern of ['random', 'sequential'] as const) {
    const { buffer } = await stoppedGuest(pattern, 3, 500, { readers: 1, fill: 1 });
    const reader = 2;
    const i32 = new Int32Array(buffer);
    const s = readSlot(i32, reader);
    assert.equal(s.reads, 500);
    for (const word of [S_READS_LO, S_READS_HI, S_RNG]) {
      for (let bit = 0; bit < 32; bit++) {
        i32[slotBase(reader) + word] ^= 1 << bit;
        const r = verify(buffer, { replay: false });
        assert.match(r.firstBad?.reason ?? 'verified', /^ledger: thread 2 slot checksum/, `${pattern}: word ${word} bit ${bit}`);
        i32[slotBase(reader) + word] ^= 1 << bit;
      }
    }
    // Rewritten with a valid checksum, a wrong count, RNG or cursor is still caught: they are
    // checked against each other (the RNG by replaying one draw per read from the seed).
    const wrongs = [
      { slot: { ...s, reads: s.reads + 1 }, reason: pattern === 'sequential' ? /cursor \d+ != \d+ after 501 sequential reads/ : /rng .* replayed from the seed over 501 reads/ },
      { slot: { ...s, rng: xs32(s.rng) }, reason: pattern === 'sequential' ? /sequential threads do not draw/ : /rng .* replayed from the seed over 500 reads/ },
      { slot: { ...s, cursor: (s.cursor + 1) % s.partSize }, reason: pattern === 'sequential' ? /after 500 sequential reads/ : /only sequential threads move it/ },
    ];
    for (const wrong of wrongs) {
      const c = copyOf(buffer);
      writeSlot(new Int32Array(c), reader, wrong.slot);
      const r = verify(c);
      assert.equal(r.ok, false, `${pattern}: ${JSON.stringify(wrong.slot)} verified`);
      assert.match(r.firstBad!.reason, /^ledger: thread 2 /);
      assert.match(r.firstBad!.reason, wrong.reason);
    }
  }
});

test('a thread finds its ledger slot damaged while it was parked, and fails instead of overwriting it', T, async () => {
  for (const thread of [0, 1]) {
    // thread 0 writes, thread 1 reads
    const { memory, buffer } = shared();
    const g = await Guest.start({ memory, threads: 2, readers: 1, pattern: 'random', seed: 2, fill: 1, paused: true });
    try {
      await g.runOps(50);
      new Int32Array(buffer)[slotBase(thread) + S_RNG] ^= 1 << 7;
      const expected = new RegExp(`^GuestCorruptionError: guest thread ${thread}: page 0 is corrupt before write: ledger: thread ${thread} slot checksum`);
      await assert.rejects(g.runOps(50), expected);
      await g.stop();
      assert.equal(g.status, 'failed');
      assert.equal((await g.verify()).ok, false);
      assert.match(verify(buffer).firstBad!.reason, new RegExp(`^ledger: thread ${thread} slot checksum`), 'the slot was overwritten');
    } finally {
      await g.stop();
    }
  }
});

test('a page header must name a thread or the fill as its writer, and leave the reserved flag bits clear', T, () => {
  const { buffer } = shared(4 * PAGE_SIZE);
  const i32 = new Int32Array(buffer);
  // owner -1: no ledger says whose page this is
  writePage(i32, 2, 1, 200);
  assert.equal(checkPage(i32, 2, -1, false), 'page 2: writer 200 is neither a thread nor the fill');
  writePage(i32, 2, 1, FILL_WRITER);
  assert.equal(checkPage(i32, 2, -1, false), null);
  writePage(i32, 2, 1, MAX_THREADS - 1);
  assert.equal(checkPage(i32, 2, -1, false), null);
  i32[2 * PAGE_WORDS + H_FLAGS] |= 1 << 9;
  assert.match(checkPage(i32, 2, MAX_THREADS - 1, false)!, /^page 2: reserved flag bits 0x00000200 set/);
});
