// Background snapshots of real memory while real guest threads write to it. Each file must
// equal memory at the instant of protection, byte for byte (a reference copy is taken while
// the guest is paused for protection), and the reference guest's ledger in it must verify.
import test from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Mapping } from '../../src/index.js';
import {
  BackgroundSnapshot,
  SnapshotIncompleteError,
  SnapshotReader,
  type SnapshotBlock,
  type SnapshotReport,
  type UnpopulatedMode,
} from '../../src/snapshot/index.js';
import { featureSkip, hugeSkip } from '../support/hugepages.js';
import { CLI, assertJsonFailure, runCli } from '../support/cli.js';
import { loopSeed } from '../support/seed.js';
import { Guest, type Pattern, seededRandom, verifyInWorker } from '../../src/testing/index.js';

const MiB = 1 << 20;
const T = { timeout: 120_000 };
const dir = mkdtempSync(join(tmpdir(), 'postcopy-snapshot-test-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

const wpSkip = featureSkip('PAGEFAULT_FLAG_WP');
const shmemSkip = featureSkip('PAGEFAULT_FLAG_WP', 'WP_HUGETLBFS_SHMEM');

interface Case {
  name: string;
  size: number;
  threads: number;
  shared?: boolean;
  huge?: boolean;
  unpopulated?: UnpopulatedMode;
  /** Extra blocks: one never touched, one written with zeros only. */
  emptyBlocks?: boolean;
  fill?: number;
  /** A tiny aside pool: faults must save pages themselves when it is full. */
  asideBytes?: number;
  claimPages?: number;
  pattern?: Pattern;
}

/** Reads every page of a block of a complete file. */
function filePages(reader: SnapshotReader, block: number): Buffer {
  const b = reader.blocks[block];
  const out = Buffer.alloc(b.usedLength);
  reader.readPages(block, 0, b.pages, out);
  return out;
}

function firstDifference(a: Buffer, b: Buffer, pageSize: number): number {
  for (let p = 0; p * pageSize < a.length; p++) if (a.compare(b, p * pageSize, (p + 1) * pageSize, p * pageSize, (p + 1) * pageSize) !== 0) return p;
  return -1;
}

async function snapshotUnderWriters(c: Case): Promise<{ report: SnapshotReport; reader: SnapshotReader; writes: number; duringSnapshot: number }> {
  const path = join(dir, `${c.name}.snap`);
  const guestMap = new Mapping(c.size, { shared: c.shared, huge: c.huge, name: 'guest.ram' });
  const blocks: SnapshotBlock[] = [{ idstr: 'guest.ram', mapping: guestMap }];
  const extras: Mapping[] = [];
  if (c.emptyBlocks) {
    const untouched = new Mapping(4 * MiB, { shared: c.shared, name: 'untouched' });
    const zeros = new Mapping(4 * MiB, { shared: c.shared, name: 'zeros' });
    zeros.bytes().fill(0); // populated, but every byte zero
    extras.push(untouched, zeros);
    blocks.push({ idstr: 'untouched', mapping: untouched }, { idstr: 'zeros', mapping: zeros });
  }
  const guest = await Guest.start({ memory: { kind: 'mapping', ...guestMap.descriptor }, threads: c.threads, pattern: c.pattern ?? 'random', fill: c.fill ?? 0 });
  const references: Buffer[] = [];
  let writes = 0;
  try {
    await guest.runFor(100);
    const report = await BackgroundSnapshot.take({
      path,
      blocks,
      pauseGuest: () => guest.pause(),
      resumeGuest: () => guest.resume(),
      deviceState: () => {
        writes = guest.stats().ledgerWrites;
        return Buffer.from(JSON.stringify({ writes }));
      },
      unpopulated: c.unpopulated,
      asideBytes: c.asideBytes,
      claimPages: c.claimPages,
      atProtection: () => {
        for (const b of blocks) references.push(Buffer.from(b.mapping.bytes().slice()));
      },
    });
    const duringSnapshot = guest.stats().ledgerWrites - writes;
    await guest.stop();
    const reader = SnapshotReader.open(path);
    blocks.forEach((b, i) => {
      const pages = filePages(reader, i);
      const diff = firstDifference(pages, references[i], b.mapping.pageSize);
      assert.equal(diff, -1, `${c.name}: block ${b.idstr} page ${diff} differs from memory at the instant of protection`);
    });
    assert.equal(JSON.parse(reader.deviceState.toString()).writes, writes);
    return { report, reader, writes, duringSnapshot };
  } finally {
    await guest.terminate();
    guestMap.unmap();
    for (const m of extras) m.unmap();
  }
}

/** The guest's ledger in the file verifies: the file is one consistent instant of the guest. */
async function verifyRestoredGuest(reader: SnapshotReader, writes: number): Promise<void> {
  const b = reader.blocks[0];
  const copy = new Mapping(b.usedLength, { huge: b.pageSize > 4096 });
  try {
    reader.readPages(0, 0, b.pages, copy.bytes());
    const report = await verifyInWorker({ kind: 'mapping', ...copy.descriptor }, { expectWrites: writes });
    assert.equal(report.ok, true, `restored guest: ${JSON.stringify(report).slice(0, 400)}`);
  } finally {
    copy.unmap();
  }
}

const cases: (Case & { skip: string | false })[] = [
  { name: 'anon-2t', size: 64 * MiB, threads: 2, fill: 1, skip: wpSkip },
  { name: 'anon-8t', size: 64 * MiB, threads: 8, skip: wpSkip },
  { name: 'anon-populate', size: 32 * MiB, threads: 2, unpopulated: 'populate', emptyBlocks: true, skip: wpSkip },
  { name: 'anon-wp-unpopulated', size: 32 * MiB, threads: 2, unpopulated: 'kernel', emptyBlocks: true, skip: featureSkip('PAGEFAULT_FLAG_WP', 'WP_UNPOPULATED') },
  { name: 'anon-aside-pool-of-one', size: 32 * MiB, threads: 4, fill: 1, asideBytes: 4096, skip: wpSkip },
  { name: 'memfd-2t', size: 32 * MiB, threads: 2, shared: true, emptyBlocks: true, skip: shmemSkip },
  { name: 'memfd-8t', size: 32 * MiB, threads: 8, shared: true, fill: 1, skip: shmemSkip },
  { name: 'hugetlb-2t', size: 64 * MiB, threads: 2, huge: true, skip: shmemSkip || hugeSkip(32) },
  { name: 'hugetlb-8t', size: 64 * MiB, threads: 8, huge: true, fill: 1, skip: shmemSkip || hugeSkip(32) },
];

for (const c of cases) {
  test(`snapshot under writers equals memory at protection: ${c.name}`, { ...T, skip: c.skip }, async () => {
    const { report, reader, writes, duringSnapshot } = await snapshotUnderWriters(c);
    try {
      assert.ok(duringSnapshot > 0, 'the guest kept writing during the snapshot');
      assert.equal(report.pages.by_fault + report.pages.by_walker, report.pages.total);
      assert.equal(report.unpopulated, c.unpopulated === 'populate' ? 'populate' : 'kernel');
      if (c.emptyBlocks) {
        assert.equal(reader.blocks[1].present.count(), 0, 'a block never touched is all holes');
        assert.equal(reader.blocks[2].present.count(), 0, 'a block of zeros is all holes');
      }
      await verifyRestoredGuest(reader, writes);
    } finally {
      reader.close();
    }
  });
}

test('a snapshot that cannot be written (disk full) fails naming the cause; the guest runs on, unprotected', { ...T, skip: wpSkip }, async (t) => {
  const mount = join(dir, 'full');
  execFileSync('mkdir', ['-p', mount]);
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mount], { stdio: 'ignore' });
  } catch (error) {
    t.skip(`cannot mount a small tmpfs (${(error as Error).message.split('\n')[0]})`);
    return;
  }
  const mapping = new Mapping(64 * MiB, { name: 'guest.ram' });
  const guest = await Guest.start({ memory: { kind: 'mapping', ...mapping.descriptor }, threads: 2, pattern: 'random', fill: 1 });
  try {
    const path = join(mount, 'full.snap');
    await assert.rejects(
      BackgroundSnapshot.take({ path, blocks: [{ idstr: 'guest.ram', mapping }], pauseGuest: () => guest.pause(), resumeGuest: () => guest.resume() }),
      (e: Error & { code?: string }) => e.code === 'ERR_SNAPSHOT_FAILED' && /ENOSPC|no space/i.test(e.message),
    );
    // Never left protected or blocked: every thread goes on writing, and the guest verifies.
    const before = guest.stats().ops;
    await guest.runFor(300);
    assert.ok(guest.stats().ops > before + 100, `the guest ran on after the failure (${before} -> ${guest.stats().ops})`);
    await guest.stop();
    const report = await guest.verify();
    assert.equal(report.ok, true, JSON.stringify(report).slice(0, 300));
    assert.equal(existsSync(path), false, 'no file under the final name');
    const status = SnapshotReader.inspect(path + '.partial');
    assert.equal(status.complete, false);
    assert.match(status.reason ?? '', /failed: .*(ENOSPC|no space)/i);
  } finally {
    await guest.terminate();
    mapping.unmap();
    execFileSync('umount', [mount]);
  }
});

test('a snapshot killed mid-walk (SIGKILL) leaves a .partial file that is refused, naming why', { ...T, skip: wpSkip }, async () => {
  const path = join(dir, 'killed.snap');
  const child = spawn(process.execPath, [CLI, 'snapshot', '--out', path, '--size', '512M', '--threads', '2', '--warmup-seconds', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    let seen = '';
    child.stderr!.on('data', (d) => {
      seen += d;
      if (/\[snapshot\] saved [1-9]\d*\//.test(seen)) {
        child.kill('SIGKILL');
        resolve();
      }
    });
    child.on('exit', () => reject(new Error(`the snapshot ended before it could be killed:\n${seen}`)));
  });
  await new Promise((r) => child.once('exit', r));
  assert.equal(existsSync(path), false, 'no file under the final name');
  assert.throws(() => SnapshotReader.open(path + '.partial'), (e: Error) => e instanceof SnapshotIncompleteError && /did not finish/.test(e.message) && e.message.includes(path));
});

test('a snapshot of an idle block reports every page and writes only the non-zero ones', { ...T, skip: wpSkip }, async () => {
  const mapping = new Mapping(8 * MiB);
  const bytes = mapping.bytes();
  for (let p = 0; p < 2048; p += 3) bytes[p * 4096 + 17] = 1 + (p % 250);
  try {
    const report = await BackgroundSnapshot.take({ path: join(dir, 'idle.snap'), blocks: [{ idstr: 'b', mapping }], pauseGuest: () => {}, resumeGuest: () => {} });
    assert.equal(report.pages.total, 2048);
    assert.equal(report.pages.written, Math.ceil(2048 / 3));
    assert.equal(report.pages.zero, 2048 - Math.ceil(2048 / 3));
    assert.equal(report.write_faults.count, 0);
    const reader = SnapshotReader.open(join(dir, 'idle.snap'));
    assert.ok(filePages(reader, 0).equals(Buffer.from(bytes)));
    reader.close();
  } finally {
    mapping.unmap();
  }
});

test('postcopy snapshot -> inspect -> restore --lazy and --eager: a complete file, and the resumed guest verifies', { ...T, skip: wpSkip }, async () => {
  const path = join(dir, 'cli.snap');
  const snap = await runCli(['snapshot', '--out', path, '--size', '32M', '--threads', '2', '--json']);
  assert.equal(snap.code, 0, snap.stderr);
  assert.equal(snap.report?.complete, true);
  assert.equal(snap.report!.error, undefined);
  assert.equal(snap.stdout.trimEnd().split('\n').length, 1, 'one line: the report');
  assert.ok(snap.report!.guest.writes_during_snapshot > 0, 'the guest wrote during the snapshot');
  assert.equal(snap.report!.pages.by_fault + snap.report!.pages.by_walker, snap.report!.pages.total);
  const inspect = await runCli(['inspect', path, '--json']);
  assert.equal(inspect.code, 0, inspect.stderr);
  assert.equal(inspect.report?.complete, true);
  for (const mode of ['--lazy', '--eager']) {
    const restore = await runCli(['restore', path, mode, '--run-seconds', '0.3', '--json']);
    assert.equal(restore.code, 0, restore.stderr);
    assert.equal(restore.report?.verified, true, `${mode}: ${restore.stdout.slice(-600)}`);
  }
});

test('postcopy snapshot --json into a full disk: exit 1, one JSON object naming the error and its code', { ...T, skip: wpSkip || (process.getuid?.() !== 0 && 'mounting a small tmpfs needs root') }, async (t) => {
  const mnt = mkdtempSync(join(tmpdir(), 'postcopy-full-'));
  try {
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt], { stdio: 'pipe' });
    } catch (error) {
      return t.skip(`cannot mount a tmpfs: ${(error as Error).message}`);
    }
    try {
      // 32 MiB of written pages into 8 MiB
      const r = await runCli(['snapshot', '--out', join(mnt, 'full.snap'), '--size', '32M', '--warmup-seconds', '0', '--json']);
      assertJsonFailure(r, 1, 'ERR_SNAPSHOT_FAILED', /ENOSPC/);
      assert.ok(!existsSync(join(mnt, 'full.snap')), 'no complete file');
    } finally {
      execFileSync('umount', [mnt]);
    }
  } finally {
    rmSync(mnt, { recursive: true, force: true });
  }
});

test('postcopy snapshot options are checked, naming option and value', async () => {
  for (const [args, pattern] of [
    [['snapshot'], /--out/],
    [['snapshot', '--out', join(dir, 'x.snap'), '--unpopulated', 'sometimes'], /unpopulated.*sometimes/],
    [['snapshot', '--out', join(dir, 'x.snap'), '--size', '3k'], /size/],
    [['snapshot', '--out', join(dir, 'x.snap'), '--bogus'], /bogus/],
  ] as [string[], RegExp][]) {
    const r = await runCli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}`);
    assert.match(r.stderr, pattern);
  }
});

// Seeded loop: every run a different mix of memory kind, size, threads, pattern, claim window,
// aside pool and populate path, each checked byte for byte against memory at protection.
const LOOP_SEED = loopSeed('POSTCOPY_SNAPSHOT_SEED', 20261203);
const LOOP_RUNS = Number(process.env.POSTCOPY_SNAPSHOT_RUNS ?? 8);
test(`seeded snapshot loop: ${LOOP_RUNS} runs, seed ${LOOP_SEED}`, { timeout: 60_000 + LOOP_RUNS * 30_000, skip: wpSkip }, async (t) => {
  t.diagnostic(`snapshot loop seed ${LOOP_SEED} (replay with POSTCOPY_SNAPSHOT_SEED=${LOOP_SEED})`);
  const random = seededRandom(LOOP_SEED);
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)];
  const kinds = ['anonymous', ...(shmemSkip ? [] : ['memfd']), ...(shmemSkip || hugeSkip(16) ? [] : ['hugetlb'])];
  const unpopulatedModes: UnpopulatedMode[] = featureSkip('WP_UNPOPULATED') ? ['populate'] : ['kernel', 'populate'];
  for (let run = 0; run < LOOP_RUNS; run++) {
    const kind = pick(kinds);
    const c: Case = {
      name: `loop-${LOOP_SEED}-${run}`,
      size: pick([8, 16, 32]) * MiB,
      threads: 1 + Math.floor(random() * 8),
      shared: kind === 'memfd',
      huge: kind === 'hugetlb',
      pattern: pick(['random', 'sequential', 'hotset'] as Pattern[]),
      fill: pick([0, 1]),
      claimPages: pick([1, 4, 16, 64]),
      asideBytes: pick([4096, 256 << 10, 64 << 20]),
      unpopulated: pick(unpopulatedModes),
      emptyBlocks: random() < 0.3,
    };
    t.diagnostic(`run ${run}: ${JSON.stringify({ ...c, size: c.size / MiB })}`);
    const { reader, writes } = await snapshotUnderWriters(c);
    try {
      await verifyRestoredGuest(reader, writes);
    } finally {
      reader.close();
    }
  }
});
