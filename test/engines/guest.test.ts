import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Guest,
  Pattern,
  corruptPage,
  guestLayout,
  guestLedger,
  guestPageHeader,
  readGuestPage,
  verify,
  verifyInWorker,
  writeGuestPage,
} from '../../src/guest/index.js';
import { MiB, T, copyOf, shared, sleep, snapshot, stoppedGuest, until } from '../support/guest.js';

const { PAGE_SIZE, bodyChecksum, readLedger, readSlot, writePage, writeSlot } = { ...guestLayout, ...guestLedger };

function versions(buffer: SharedArrayBuffer): number[] {
  const n = buffer.byteLength / PAGE_SIZE;
  const v: number[] = [];
  for (let p = 1; p < n; p++) v.push(guestPageHeader(buffer, p).version);
  return v;
}

// Every guest is ended after the file, even if a test failed or hung half-way (even inside
// Guest.start): live workers would otherwise keep the test process waiting forever.
after(() => Guest.terminateAll());

/** A data page with version >= 1 (so that corrupting it is visible). */
function writtenPage(buffer: SharedArrayBuffer, from = 1): number {
  for (let p = from; p < buffer.byteLength / PAGE_SIZE; p++) if (guestPageHeader(buffer, p).version > 0) return p;
  throw new Error('no written page');
}

for (const threads of [1, 2, 8]) {
  for (const pattern of ['sequential', 'random', 'hotset', 'read'] as Pattern[]) {
    test(`${pattern} x ${threads} threads: ops, pause, verify, counts add up`, T, async () => {
      const { memory, buffer } = shared();
      const fill = pattern === 'read' ? 1 : 0; // give readers real pages to check
      const g = await Guest.start({ memory, threads, pattern, seed: 11, fill, paused: true });
      try {
        assert.equal(g.allParked(), true);
        await g.runOps(300);
        const s = g.stats();
        assert.equal(s.ops, threads * 300);
        assert.equal(s.errors, 0);
        for (const t of s.perThread) assert.equal(t.ops, 300);
        if (pattern === 'read') {
          assert.equal(s.writes, 0);
          assert.equal(s.reads, s.ops);
        } else {
          assert.equal(s.writes, s.ops);
          assert.equal(s.reads, 0);
        }
        assert.equal(s.ledgerWrites, s.writes);
        const r = verify(buffer);
        assert.equal(r.ok, true, r.firstBad?.reason);
        assert.equal(r.exact, true);
        assert.equal(r.ledgerWrites, s.writes);
        assert.equal(r.versionSum, fill * r.checked + s.writes);
        assert.equal(r.ledger?.pattern, pattern);
        assert.equal(r.ledger?.threads, threads);
        if (pattern === 'read') assert.ok(versions(buffer).every((v) => v === 1), 'a read-only guest wrote a data page');
      } finally {
        await g.stop();
      }
    });
  }
}

test('patterns have their shape (sequential even, hotset concentrated, random spread)', T, async () => {
  const pages = 511;
  {
    const { buffer } = await stoppedGuest('sequential', 1, 1200);
    const v = versions(buffer);
    // 1200 = 2 * 511 + 178: the first 178 pages have 3 versions, the rest 2.
    assert.deepEqual(v, Array.from({ length: pages }, (_, i) => (i < 178 ? 3 : 2)));
  }
  {
    const { buffer } = await stoppedGuest('hotset', 1, 2000);
    const v = versions(buffer).sort((a, b) => b - a);
    const hot = v.slice(0, Math.floor(pages / 16)).reduce((a, b) => a + b, 0);
    assert.ok(hot >= 0.85 * 2000, `hot set got ${hot} of 2000 writes`);
  }
  {
    const { buffer } = await stoppedGuest('random', 1, 2000);
    const v = versions(buffer);
    const touched = v.filter((x) => x > 0).length;
    assert.ok(touched > 0.9 * pages, `random touched only ${touched} pages`);
    assert.ok(Math.max(...v) < 15, `random max version ${Math.max(...v)}`);
  }
});

test('writers partition the pages: each page is written only by its owner', T, async () => {
  const { buffer } = await stoppedGuest('random', 5, 400);
  for (let p = 1; p < 512; p++) {
    const h = guestPageHeader(buffer, p);
    if (h.version > 0) assert.equal(h.writer, (p - 1) % 5, `page ${p}`);
  }
});

test('readers racing writers see no bad page; counts add up', T, async () => {
  const { memory, buffer } = shared();
  const g = await Guest.start({ memory, threads: 4, pattern: 'random', seed: 5, readerFraction: 0.5, fill: 1 });
  try {
    assert.equal(g.info.writers, 2);
    await until(() => g.stats().writes > 20000 && g.stats().reads > 20000);
    await g.pause();
    const s = g.stats();
    assert.equal(s.errors, 0, JSON.stringify(g.badPages()));
    assert.equal(s.writes + s.reads, s.ops);
    const r = verify(buffer);
    assert.equal(r.ok, true, r.firstBad?.reason);
    assert.equal(r.ledgerWrites, s.writes);
    assert.equal(r.versionSum, r.checked + s.writes);
  } finally {
    await g.stop();
  }
});

test('readers report a genuinely bad page to the controller, naming it', T, async () => {
  const { memory, buffer } = shared();
  const g = await Guest.start({ memory, threads: 2, pattern: 'read', seed: 9, fill: 1, paused: true });
  try {
    const seen: number[] = [];
    g.on('bad', (b: { page: number }) => seen.push(b.page));
    corruptPage(buffer, 77, 'body'); // safe: the guest is parked and this is shared memory
    await g.runOps(5000);
    const s = g.stats();
    assert.ok(s.errors > 0, 'no reader noticed page 77');
    const bad = g.badPages();
    assert.ok(bad.length > 0);
    assert.ok(bad.every((b) => b.page === 77), JSON.stringify(bad));
    assert.match(bad[0].reason, /^page 77: checksum/);
    assert.ok(seen.includes(77));
  } finally {
    await g.stop();
  }
});

test('pause really parks: memory does not change while paused, and does after resume', T, async () => {
  const { memory, buffer } = shared();
  const g = await Guest.start({ memory, threads: 4, pattern: 'random', seed: 2 });
  try {
    await until(() => g.stats().ops > 1000);
    await g.pause();
    const a = snapshot(buffer);
    const ops = g.stats().ops;
    await sleep(50);
    assert.ok(a.equals(snapshot(buffer)), 'memory changed 50 ms into the pause');
    await sleep(50);
    assert.ok(a.equals(snapshot(buffer)), 'memory changed 100 ms into the pause');
    assert.equal(g.stats().ops, ops);
    g.resume();
    await until(() => g.stats().ops > ops + 1000);
    await g.pause();
    assert.ok(!a.equals(snapshot(buffer)), 'memory did not change after resume');
    assert.ok(g.stats().ops > ops);
    assert.equal(verify(buffer).ok, true);
  } finally {
    await g.stop();
  }
});

test('stop, then resumeFrom a copy: fresh threads continue from the ledger', T, async () => {
  const { memory, buffer } = shared();
  const g = await Guest.start({ memory, threads: 3, pattern: 'random', seed: 4, paused: true });
  await g.runOps(400);
  const before = g.stats().ledgerWrites;
  await g.stop();
  assert.equal(g.status, 'stopped');
  await assert.rejects(g.pause(), /stopped/);
  const stopped = snapshot(buffer);

  const other = copyOf(buffer);
  const g2 = await Guest.resumeFrom({ memory: { kind: 'shared', buffer: other }, paused: true });
  try {
    assert.deepEqual(g2.info, g.info);
    assert.equal(g2.stats().ledgerWrites, before);
    await g2.runOps(250);
    const s = g2.stats();
    assert.equal(s.writes, 750);
    assert.equal(s.ledgerWrites, before + 750);
    const r = verify(other, { expectWrites: before + 750 });
    assert.equal(r.ok, true, r.firstBad?.reason);
    assert.ok(stopped.equals(snapshot(buffer)), 'the stopped original changed');
    const r0 = verify(buffer, { expectWrites: before });
    assert.equal(r0.ok, true, r0.firstBad?.reason);
  } finally {
    await g2.stop();
  }
});

test('resuming is exact: stop + resumeFrom gives the same bytes as one uninterrupted run', T, async () => {
  const one = shared();
  const a = await Guest.start({ memory: one.memory, threads: 3, pattern: 'hotset', seed: 8, paused: true });
  await a.runOps(700);
  await a.stop();

  const two = shared();
  const b = await Guest.start({ memory: two.memory, threads: 3, pattern: 'hotset', seed: 8, paused: true });
  await b.runOps(300);
  await b.stop();
  const moved = copyOf(two.buffer);
  const c = await Guest.resumeFrom({ memory: { kind: 'shared', buffer: moved }, paused: true });
  await c.runOps(400);
  await c.stop();
  assert.ok(snapshot(one.buffer).equals(snapshot(moved)), 'resumed run diverged from the uninterrupted one');
});

test('read-only resume reads under load and writes nothing, not even the ledger', T, async () => {
  const { buffer } = await stoppedGuest('random', 2, 300);
  const before = snapshot(buffer);
  const g = await Guest.resumeFrom({ memory: { kind: 'shared', buffer }, readOnly: true, paused: true });
  try {
    await g.runOps(500);
    const s = g.stats();
    assert.equal(s.reads, 1000);
    assert.equal(s.writes, 0);
    assert.equal(s.ledgerWrites, 600);
    assert.equal(s.errors, 0);
  } finally {
    await g.stop();
  }
  assert.ok(before.equals(snapshot(buffer)), 'read-only guest changed memory');
});

test('verifier: clean blank memory, and a written page over a blank ledger', T, () => {
  const { buffer } = shared(MiB);
  const r = verify(buffer);
  assert.equal(r.ok, true);
  assert.equal(r.zeroPages, 255);
  assert.equal(r.checked, 255);
  assert.equal(r.pages, 256);
  writePage(new Int32Array(buffer), 9, 1, 0);
  const r2 = verify(buffer);
  assert.equal(r2.ok, false);
  assert.equal(r2.firstBad?.page, 9);
  assert.match(r2.firstBad!.reason, /page 9: version 1/);
  assert.match(r2.badPages.map((b) => b.reason).join('\n'), /ledger: blank but data page versions sum 1/);
});

test('verifier catches a corrupted body byte, a wrong index, bad checksum, busy page, and names the page', T, async () => {
  const { buffer } = await stoppedGuest('random', 2, 800);
  assert.equal(verify(buffer).ok, true);
  const p = writtenPage(buffer, 17);
  const cases: Array<[Parameters<typeof corruptPage>[2], RegExp]> = [
    ['body', new RegExp(`^page ${p}: checksum 0x[0-9a-f]{8} in header != 0x[0-9a-f]{8} of body`)],
    ['index', new RegExp(`^page ${p}: header says page ${p + 1}$`)],
    ['checksum', new RegExp(`^page ${p}: checksum`)],
    ['busy', new RegExp(`^page ${p}: busy flag`)],
    ['version', new RegExp(`^page ${p}: checksum`)], // checksum is seeded with the version
  ];
  for (const [how, re] of cases) {
    const c = copyOf(buffer);
    corruptPage(c, p, how);
    const r = verify(c);
    assert.equal(r.ok, false, `${how} not caught`);
    assert.equal(r.firstBad?.page, p, `${how}: ${r.firstBad?.reason}`);
    assert.match(r.firstBad!.reason, re);
  }
  // The last body byte too (every byte of the body is covered by the checksum).
  const c = copyOf(buffer);
  corruptPage(c, p, 'body', PAGE_SIZE - 1);
  assert.equal(verify(c).firstBad?.page, p);
  // A page placed at the wrong offset names both.
  const d = copyOf(buffer);
  writeGuestPage(d, 9, readGuestPage(buffer, p));
  assert.match(verify(d).firstBad!.reason, new RegExp(`^page 9: header says page ${p}$`));
  // Deep mode regenerates the body: a body rewritten with a matching checksum is still caught.
  const e = copyOf(buffer);
  const i32 = new Int32Array(e, p * PAGE_SIZE, 1024);
  i32[200] ^= 1;
  i32[2] = bodyChecksum(new Int32Array(e), p * 1024, p, i32[1]); // consistent checksum: only the content is wrong
  assert.equal(verify(e).ok, true, 'shallow verify trusts a consistent checksum');
  const rd = verify(e, { deep: true });
  assert.equal(rd.firstBad?.page, p);
  assert.match(rd.firstBad!.reason, /body word 200 differs/);
});

test('verifier catches a rolled-back (stale) page and a lost page, by name and by the sum invariant', T, async () => {
  const { memory, buffer } = shared();
  const g = await Guest.start({ memory, threads: 2, pattern: 'random', seed: 6, paused: true });
  try {
    await g.runOps(600);
    const old = copyOf(buffer);
    await g.runOps(600);
    await g.pause();
    // A page whose version moved on between the two copies.
    let p = 0;
    for (let q = 1; q < 512 && !p; q++) if (guestPageHeader(old, q).version > 0 && guestPageHeader(buffer, q).version > guestPageHeader(old, q).version) p = q;
    assert.ok(p > 0);
    const stale = copyOf(buffer);
    writeGuestPage(stale, p, readGuestPage(old, p)); // an old but self-consistent version
    const r = verify(stale);
    assert.equal(r.ok, false);
    assert.equal(r.firstBad?.page, p);
    assert.match(r.firstBad!.reason, new RegExp(`^page ${p}: version \\d+ \\(stale page\\), ledger implies version \\d+`));
    assert.ok(r.versionSum < r.expectedVersionSum);
    // Without the replay only the invariant is left: it fails and names the writer thread.
    const r2 = verify(stale, { replay: false });
    assert.equal(r2.ok, false);
    assert.equal(r2.exact, false);
    assert.equal(r2.firstBad?.page, 0);
    assert.match(r2.firstBad!.reason, new RegExp(`^ledger: thread ${(p - 1) % 2} pages' versions sum`));
    assert.match(r2.badPages.map((b) => b.reason).join('\n'), /ledger: versions sum \d+ != writes 2400/);
    // A lost page (placed as zeros) is a valid-looking version-0 page: still caught.
    const lost = copyOf(buffer);
    corruptPage(lost, p, 'zero');
    assert.match(verify(lost).firstBad!.reason, new RegExp(`^page ${p}: all zero \\(lost page\\)`));
    // A stale ledger (old ledger page over new data pages) is caught too.
    const oldLedger = copyOf(buffer);
    writeGuestPage(oldLedger, 0, readGuestPage(old, 0));
    assert.equal(verify(oldLedger).ok, false);
    // A torn 2 MiB "huge page": the first half of the block from the old copy.
    const torn = copyOf(buffer);
    new Uint8Array(torn, PAGE_SIZE, 255 * PAGE_SIZE).set(new Uint8Array(old, PAGE_SIZE, 255 * PAGE_SIZE));
    const rt = verify(torn);
    assert.equal(rt.ok, false);
    assert.ok(rt.firstBad!.page >= 1 && rt.firstBad!.page <= 255, rt.firstBad!.reason);
    // The whole memory rolled back is self-consistent; only the caller's count catches it.
    assert.equal(verify(old).ok, true);
    assert.match(verify(old, { expectWrites: g.stats().ledgerWrites }).firstBad!.reason, /ledger: 1200 writes, expected exactly 2400/);
    assert.equal(verify(old, { minWrites: 2400 }).ok, false);
  } finally {
    await g.stop();
  }
});

test('verifier catches a damaged ledger', T, async () => {
  const { buffer } = await stoppedGuest('sequential', 2, 100);
  const a = copyOf(buffer);
  new Uint8Array(a)[4 * 3] ^= 1; // thread count
  assert.match(verify(a).firstBad!.reason, /^ledger: header checksum/);
  const b = copyOf(buffer);
  new Int32Array(b)[0] = 0x12345678;
  assert.match(verify(b).firstBad!.reason, /^ledger: bad magic 0x12345678/);
  const c = copyOf(buffer); // a writer's cursor out of step with its count
  const i32 = new Int32Array(c);
  const s = readSlot(i32, 1);
  writeSlot(i32, 1, { ...s, cursor: (s.cursor + 1) % s.partSize });
  assert.match(verify(c).firstBad!.reason, /^ledger: thread 1 cursor/);
});

test('verifyInWorker agrees with verify; guest.verify refuses while running', T, async () => {
  const { memory, buffer } = shared();
  const g = await Guest.start({ memory, threads: 2, pattern: 'hotset', seed: 1 });
  try {
    await assert.rejects(g.verify(), /pause or stop/);
    await until(() => g.stats().writes > 100);
    await g.pause();
    const a = verify(buffer);
    const b = await g.verify();
    assert.equal(b.ok, true);
    assert.equal(b.versionSum, a.versionSum);
    assert.equal(b.ledgerWrites, g.stats().ledgerWrites);
    corruptPage(buffer, writtenPage(buffer), 'body');
    const c = await verifyInWorker(memory);
    assert.equal(c.ok, false);
    assert.match(c.firstBad!.reason, /checksum/);
  } finally {
    await g.stop();
  }
});

test('ops budget, rate limit and runFor', T, async () => {
  {
    const { memory } = shared();
    const g = await Guest.start({ memory, threads: 2, pattern: 'sequential', ops: 50 });
    await g.whenParked();
    assert.equal(g.stats().ops, 100);
    await g.stop();
  }
  {
    const { memory, buffer } = shared();
    const g = await Guest.start({ memory, threads: 2, pattern: 'random', rate: 100, paused: true });
    await g.runFor(300);
    const ops = g.stats().ops;
    assert.ok(ops > 0 && ops <= 2 * (0.3 * 100 + 1) + 20, `rate-limited ops ${ops}`);
    assert.equal(verify(buffer).ok, true);
    await g.stop();
  }
});

test('start validates: parameters, memory shape, an existing ledger; resumeFrom needs one', T, async () => {
  await assert.rejects(Guest.start({ memory: shared().memory, threads: 65 }), RangeError);
  await assert.rejects(Guest.start({ memory: shared().memory, threads: 2, readers: 2 }), RangeError);
  await assert.rejects(Guest.start({ memory: { kind: 'shared', buffer: new SharedArrayBuffer(4096) } }), /at least 2 pages/);
  await assert.rejects(Guest.start({ memory: { kind: 'shared', buffer: new SharedArrayBuffer(3 * 4096) }, threads: 3 }), /2 data pages/);
  await assert.rejects(Guest.resumeFrom({ memory: shared().memory }), /blank/);
  const { memory, buffer } = await stoppedGuest('random', 2, 10);
  await assert.rejects(Guest.start({ memory, threads: 3, pattern: 'random', seed: 3 }), /threads 2 \(asked 3\)/);
  const g = await Guest.start({ memory, threads: 2, pattern: 'random', seed: 3, paused: true }); // same parameters: continues
  assert.equal(g.stats().ledgerWrites, 20);
  await g.stop();
  const bad = copyOf(buffer);
  new Int32Array(bad)[0] = 1;
  await assert.rejects(Guest.resumeFrom({ memory: { kind: 'shared', buffer: bad } }), /ledger: bad magic/);
});

test('ledger write counts beyond 2^32 round-trip', T, () => {
  const { buffer } = shared(MiB);
  const i32 = new Int32Array(buffer);
  const s = { writes: 2 ** 32 + 7, rng: 123, cursor: 4, hotBase: 1, hotSize: 2, role: 0, part: 0, partSize: 9, reads: 2 ** 33 + 1 };
  writeSlot(i32, 3, s);
  assert.deepEqual(readSlot(i32, 3), s);
  assert.equal(readLedger(i32).kind, 'bad'); // a slot alone is not a ledger
});
