// Restore on the real kernel: eager and lazy restores equal the memory that was saved, byte
// for byte; the reference guest resumed from a restored copy verifies; a lazy restore keeps
// threads blocked until their page is served, fails loudly (never a zero page) when the file
// goes bad under it, and records and replays a working set.
import test from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Mapping } from '../../src/index.js';
import {
  LazyRestore, SnapshotReader, WorkingSet, restoreEager, workingSetPath,
  type LazyRestoreOptions,
} from '../../src/snapshot/index.js';
import { featureSkip, hugeSkip } from '../support/hugepages.js';
import { fillPages, writeGuestSnapshot, writeSnapshot, type SnapshotSource } from '../support/snapshot-file.js';
import { startGatedReaders } from '../support/gated-reader.js';
import { waitFor } from '../support/threads.js';
import { Guest } from '../../src/testing/index.js';

const PAGE = 4096;
const HUGE = 2 << 20;
const MiB = 1 << 20;
const skip = featureSkip('MISSING_SHMEM');
const dir = mkdtempSync(join(tmpdir(), 'postcopy-restore-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

let files = 0;
const fileName = () => join(dir, `s${files++}.snap`);

/** Blocks of different kinds: dense, sparse (runs and holes), all zero. */
function sources(pageSize: number): SnapshotSource[] {
  const huge = pageSize > PAGE;
  const make = (idstr: string, bytes: number, pages: (n: number) => number[], seed: number): SnapshotSource => {
    const mapping = new Mapping(bytes, { huge, name: idstr });
    fillPages(mapping, pages(bytes / pageSize), seed);
    return { idstr, mapping };
  };
  const all = (n: number) => Array.from({ length: n }, (_, i) => i);
  return [
    make('dense', huge ? 3 * HUGE : 2 * MiB, all, 1),
    make('sparse', huge ? 4 * HUGE : 4 * MiB, (n) => all(n).filter((i) => i % 7 < 3 || (i > n / 2 && i < n / 2 + 40)), 2),
    make('zero', huge ? HUGE : MiB, () => [], 3),
  ];
}

function freshTargets(srcs: SnapshotSource[]): Mapping[] {
  return srcs.map((s) => new Mapping(s.mapping.length, { huge: s.mapping.huge, name: s.idstr }));
}

function assertSameMemory(targets: Mapping[], srcs: SnapshotSource[]): void {
  srcs.forEach((s, i) => {
    const want = s.mapping.bytes();
    const got = targets[i].bytes();
    if (Buffer.compare(want, got) === 0) return;
    const at = want.findIndex((b, j) => b !== got[j]);
    assert.fail(`block '${s.idstr}' differs at offset 0x${at.toString(16)} (page ${Math.floor(at / s.mapping.pageSize)})`);
  });
}

function unmapAll(...lists: (Mapping | SnapshotSource)[][]): void {
  for (const list of lists) for (const m of list) ('mapping' in m ? m.mapping : m).unmap();
}

/** A snapshot of sources(pageSize), open, with fresh targets; everything is released after `body`. */
async function withSnapshot(pageSize: number, body: (s: { srcs: SnapshotSource[]; file: string; reader: SnapshotReader; targets: Mapping[] }) => Promise<void>, version?: number): Promise<void> {
  const srcs = sources(pageSize);
  const file = fileName();
  writeSnapshot(file, srcs, { version });
  const reader = SnapshotReader.open(file);
  const targets = freshTargets(srcs);
  try {
    await body({ srcs, file, reader, targets });
  } finally {
    reader.close();
    unmapAll(srcs, targets);
  }
}

/** A restore that must not end the test process: stuck guests are reported here instead. */
function stuckRecorder(): { options: Pick<LazyRestoreOptions, 'onGuestStuck'>; message(): string | undefined } {
  let message: string | undefined;
  return { options: { onGuestStuck: (m) => (message = m) as never }, message: () => message };
}

for (const pageSize of [PAGE, HUGE]) {
  const kind = pageSize === PAGE ? '4 KiB' : 'hugetlb';
  const hugeNeed = pageSize === PAGE ? false : hugeSkip(2 * 8 + 2);
  const caseSkip = skip || hugeNeed;

  test(`eager restore of several blocks (${kind}; dense, sparse, all zero) equals the saved memory`, { skip: caseSkip }, () =>
    withSnapshot(pageSize, async ({ srcs, reader, targets }) => {
      const report = await restoreEager(reader, targets);
      assertSameMemory(targets, srcs);
      assert.equal(report.checksum_verified, true);
      const present = reader.blocks.reduce((s, b) => s + b.present.count(), 0);
      assert.equal(report.pages_read, present);
      assert.equal(report.zero_pages, reader.blocks.reduce((s, b) => s + b.pages, 0) - present);
      assert.ok(report.gb_per_s > 0);
    }));

  test(`lazy restore of several blocks (${kind}) equals the saved memory; every page placed once`, { skip: caseSkip }, () =>
    withSnapshot(pageSize, async ({ srcs, reader, targets }) => {
      const report = await LazyRestore.start(reader, targets).finished;
      assertSameMemory(targets, srcs);
      assert.equal(report.state, 'done');
      assert.equal(report.checksum_verified, true);
      assert.equal(report.pages.by_prefetch + report.pages.by_fault, report.pages.total);
      assert.equal(report.pages.already_present, 0);
      assert.equal(report.pages.zero, reader.blocks.reduce((s, b) => s + b.pages - b.present.count(), 0));
      assert.ok(report.all_present_ms !== null);
    }));
}

test('a version 1 file (CRC-32 page checksums) is still read: inspected, restored eager and lazy, checksums verified; new files are version 2', { skip }, async () => {
  await withSnapshot(PAGE, async ({ srcs, file, reader, targets }) => {
    assert.equal(reader.layout.version, 1);
    const status = SnapshotReader.inspect(file);
    assert.equal(status.complete, true, status.reason);
    assert.ok(status.pageData!.every((b) => b.ok));
    const report = await restoreEager(reader, targets);
    assert.equal(report.checksum_verified, true);
    assertSameMemory(targets, srcs);
    const lazyTargets = freshTargets(srcs);
    try {
      const lazy = await LazyRestore.start(reader, lazyTargets).finished;
      assert.equal(lazy.checksum_verified, true);
      assertSameMemory(lazyTargets, srcs);
    } finally {
      unmapAll(lazyTargets);
    }
  }, 1);
  await withSnapshot(PAGE, async ({ reader }) => assert.equal(reader.layout.version, 2));
});

test('restores refuse targets that do not fit, naming the block and the mismatch', { skip }, () =>
  withSnapshot(PAGE, async ({ reader, targets }) => {
    const small = new Mapping(MiB * 3);
    try {
      await assert.rejects(restoreEager(reader, targets.slice(0, 2)), (e: Error & { code?: string }) => e.code === 'ERR_RESTORE_TARGET' && /has 3 block\(s\) \('dense', 'sparse', 'zero'\), 2 target/.test(e.message));
      const wrong = [targets[0], small, targets[2]];
      await assert.rejects(restoreEager(reader, wrong), /block 'sparse' \(#1\) of .* is 4194304 bytes, its target mapping 3145728/);
      assert.throws(() => LazyRestore.start(reader, wrong), /block 'sparse' \(#1\) of .* is 4194304 bytes, its target mapping 3145728/);
    } finally {
      small.unmap();
    }
  }));

/** A reference guest run on real memory, paused, saved; returns the file and its ledger writes. */
async function guestSnapshot(threads: number): Promise<{ file: string; writes: number; length: number }> {
  const file = fileName();
  const writes = await writeGuestSnapshot(file, { size: 8 * MiB, threads, ops: 3000 });
  return { file, writes, length: 8 * MiB };
}

async function resumeAndVerify(target: Mapping, writes: number, afterRun = () => undefined as void): Promise<void> {
  const guest = await Guest.resumeFrom({ memory: { kind: 'mapping', ...target.descriptor }, paused: true });
  await guest.runOps(500);
  afterRun();
  await guest.stop();
  const stats = guest.stats();
  const v = await guest.verify({ expectWrites: stats.ledgerWrites });
  assert.ok(v.ok, `verification: ${v.firstBad?.reason}`);
  assert.ok(stats.ledgerWrites > writes, `ledger ${stats.ledgerWrites} writes, the snapshot had ${writes}`);
}

test('the reference guest resumed from an eager restore verifies', { skip }, async () => {
  const { file, writes, length } = await guestSnapshot(2);
  const reader = SnapshotReader.open(file);
  const target = new Mapping(length);
  try {
    await restoreEager(reader, [target]);
    assert.deepEqual(JSON.parse(reader.deviceState.toString()).blocks[0], { idstr: 'ram0', writes, threads: 2, guest: true });
    await resumeAndVerify(target, writes);
  } finally {
    reader.close();
    target.unmap();
  }
});

test('the reference guest resumed at once on a lazy restore verifies; its faults are counted', { skip }, async () => {
  const { file, writes, length } = await guestSnapshot(3);
  const reader = SnapshotReader.open(file);
  const target = new Mapping(length);
  try {
    // the prefetcher waits until the guest ran: its pages come by fault
    const restore = LazyRestore.start(reader, [target], { guestThreads: 3, prefetch: false });
    const verified = resumeAndVerify(target, writes, () => restore.startPrefetch());
    const report = await restore.finished;
    await verified;
    assert.equal(report.state, 'done');
    assert.ok(report.faults > 0, 'the guest resumed before the prefetcher had loaded everything');
    assert.ok(report.latency_us.count > 0 && report.latency_us.count <= report.faults, `${report.latency_us.count} latencies, ${report.faults} faults`);
    assert.ok(report.pages.by_fault > 0);
  } finally {
    reader.close();
    target.unmap();
  }
});

test('lazy: many threads faulting on one page stay blocked until it is served, then all see its data', { skip }, () =>
  withSnapshot(PAGE, async ({ srcs, reader, targets }) => {
    const page = 5;
    const readers = startGatedReaders(targets[0], Array.from({ length: 8 }, (_, i) => page * PAGE + i * 4 * 97));
    try {
      const restore = LazyRestore.start(reader, targets, { prefetch: false, guestThreads: 8 });
      await readers.waitReady();
      readers.open();
      // this thread serves the faults: while it is held here nobody can, and no reader gets through
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300);
      assert.equal(readers.done(), 0, 'a reader got past a page that was never placed');
      assert.equal(restore.isPlaced(0, page), false);
      await waitFor(() => readers.done() === 8, 10_000, 'every reader');
      const want = new Int32Array(srcs[0].mapping.view(page * PAGE, PAGE));
      assert.deepEqual(readers.words(), Array.from({ length: 8 }, (_, i) => want[i * 97]));
      assert.ok(readers.words().every((w) => w !== 0));
      assert.equal(restore.isPlaced(0, page), true);
      const report = restore.report();
      assert.ok(report.faults >= 1);
      assert.equal(report.latency_us.count, 1, 'one page, served once');
      assert.equal(report.pages.by_fault, 16, 'a fault places a run of 16 pages');
      assert.equal(report.pages.by_prefetch, 0);
      restore.abort('test over');
    } finally {
      await Promise.all(readers.workers.map((w) => w.terminate()));
    }
  }));

test('lazy: a page whose read fails ends the restore loudly; the waiting thread never gets a zero page', { skip }, () =>
  withSnapshot(PAGE, async ({ file, reader, targets }) => {
    const stuck = stuckRecorder();
    const page = 98;
    const b = reader.blocks[1];
    assert.ok(b.present.get(page) && b.present.get(page + 1));
    // the file loses its tail under the restore: the page is no longer there to read
    truncateSync(file, b.pagesOffset + page * PAGE + 100);
    const readers = startGatedReaders(targets[1], [page * PAGE + 8]);
    try {
      const restore = LazyRestore.start(reader, targets, { prefetch: false, ...stuck.options });
      await readers.waitReady();
      readers.open();
      await assert.rejects(restore.finished, (e: Error & { code?: string }) =>
        e.code === 'ERR_RESTORE_FAILED' && /reading block 'sparse' page 98 of .* failed: .*truncated/.test(e.message));
      assert.equal(restore.report().state, 'failed');
      assert.match(stuck.message() ?? '', /restore from .* failed .* while guest threads wait for pages that will never arrive/);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(readers.done(), 0, 'the waiting thread was woken');
      assert.equal(restore.isPlaced(1, page), false);
      // the process would end here (exitNow): the test releases the thread itself
      (restore as unknown as { uffd: { close(): void } }).uffd.close();
      await waitFor(() => readers.done() === 1, 5000, 'the released reader');
    } finally {
      await Promise.all(readers.workers.map((w) => w.terminate()));
    }
  }));

test('lazy: a page changed in the file fails the checksum at the end; eager refuses it too', { skip }, () =>
  withSnapshot(PAGE, async ({ srcs, file, reader, targets }) => {
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, reader.blocks[0].pagesOffset + 3 * PAGE + 17);
    closeSync(fd);
    const eagerTargets = freshTargets(srcs);
    let stopped = false;
    try {
      const restore = LazyRestore.start(reader, targets, { stopGuest: async () => void (stopped = true) });
      await assert.rejects(restore.finished, /block dense page data at offset \d+: checksum 0x[0-9a-f]+ of the pages restored does not match the trailer/);
      await waitFor(() => stopped, 2000, 'the guest stopped');
      await assert.rejects(restoreEager(reader, eagerTargets), /block dense page data .* does not match the trailer/);
    } finally {
      unmapAll(eagerTargets);
    }
  }));

test('working set: recorded in fault order, saved beside the snapshot, refused when stale or damaged, prefetched first', { skip }, () =>
  withSnapshot(PAGE, async ({ srcs, file, reader, targets }) => {
    const restore = LazyRestore.start(reader, targets, { prefetch: false, recordWorkingSet: true });
    for (const page of [300, 40, 700, 41]) {
      const one = startGatedReaders(targets[1], [page * PAGE]);
      await one.waitReady();
      one.open();
      await waitFor(() => one.done() === 1, 5000, `page ${page}`);
      await one.workers[0].terminate();
    }
    // 41 came in with 40's run: no fault, not recorded
    assert.deepEqual(restore.recordedWorkingSet().pages, [300, 40, 700].map((page) => ({ block: 1, page })));
    restore.abort('recorded');
    const ws = workingSetPath(file);
    restore.recordedWorkingSet().save(ws, reader);
    assert.deepEqual(WorkingSet.load(ws, reader).pages, restore.recordedWorkingSet().pages);

    const damaged = readFileSync(ws);
    damaged[40] ^= 1;
    writeFileSync(ws + '.bad', damaged);
    assert.throws(() => WorkingSet.load(ws + '.bad', reader), (e: Error & { code?: string }) => e.code === 'ERR_WORKING_SET' && /checksum .* does not match its contents/.test(e.message));
    const other = fileName();
    fillPages(srcs[0].mapping, [0], 77);
    writeSnapshot(other, srcs);
    const otherReader = SnapshotReader.open(other);
    try {
      assert.throws(() => WorkingSet.load(ws, otherReader), /working set refused: stale: recorded for another snapshot/);
    } finally {
      otherReader.close();
    }

    const replayTargets = freshTargets(srcs);
    try {
      const replay = LazyRestore.start(reader, replayTargets, { workingSet: WorkingSet.load(ws, reader) });
      const atLoad = new Promise<boolean[]>((resolve) => replay.once('working-set-loaded', () => resolve([
        replay.isPlaced(1, 300), replay.isPlaced(1, 40), replay.isPlaced(1, 700), replay.isPlaced(0, 0), replay.isPlaced(1, 0), replay.isPlaced(2, 0),
      ])));
      const report = await replay.finished;
      assert.deepEqual(await atLoad, [true, true, true, false, false, false], 'the working set comes before the sequential prefetch');
      assert.equal(report.working_set.used, 3);
      assertSameMemory(replayTargets.slice(1), srcs.slice(1)); // block 0 of srcs changed for the other snapshot
    } finally {
      unmapAll(replayTargets);
    }
  }));
