// `postcopy restore` as a user runs it: eager and lazy restores of a reference guest's
// snapshot verify; a working set is recorded, replayed, and refused when stale; a damaged or
// incomplete file and bad options are refused with one line naming why.
import test from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { featureSkip } from '../support/hugepages.js';
import { assertJsonFailure, runCli } from '../support/cli.js';
import { writeGuestSnapshot } from '../support/snapshot-file.js';

const skip = featureSkip('MISSING_SHMEM');
const dir = mkdtempSync(join(tmpdir(), 'postcopy-restore-cli-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

let snapshot: Promise<{ file: string; writes: number }> | undefined;
/** One guest snapshot for the tests that only read it. */
function guestSnapshot() {
  snapshot ??= (async () => {
    const file = join(dir, 'guest.snap');
    return { file, writes: await writeGuestSnapshot(file, { size: 16 * MiB, threads: 2, ops: 4000, pattern: 'hotset' }) };
  })();
  return snapshot;
}

for (const mode of ['eager', 'lazy'] as const) {
  test(`restore --${mode}: the resumed guest verifies, the report says how`, { skip }, async () => {
    const { file, writes } = await guestSnapshot();
    const r = await runCli(['restore', file, `--${mode}`, '--run-seconds', '0.3', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const report = r.report!;
    assert.equal(report.verified, true, report.reason);
    assert.equal(report.error, undefined);
    assert.equal(report.mode, mode);
    assert.ok(report.verification[0].writes > writes, 'the resumed guest wrote on from the snapshot');
    assert.equal(report.verification[0].source_writes, writes);
    assert.equal(report.restore.checksum_verified, true);
    assert.ok(report.timings.total_ms > 0 && report.timings.restored_ms > 0);
    if (mode === 'lazy') {
      assert.equal(report.restore.state, 'done');
      assert.ok(report.restore.all_present_ms > 0);
      assert.equal(report.restore.latency_us.histogram.length, 24);
      assert.equal(typeof report.restore.blocktime_ms, 'number');
      assert.match(r.stderr, /every page present after/);
    } else {
      assert.ok(report.restore.gb_per_s > 0);
    }
  });
}

test('restore --lazy --record-working-set saves FILE.ws; the next lazy restore prefetches it; a stale one is refused', { skip }, async () => {
  const file = join(dir, 'ws.snap');
  await writeGuestSnapshot(file, { size: 16 * MiB, threads: 2, ops: 3000, pattern: 'hotset' });
  const first = await runCli(['restore', file, '--lazy', '--record-working-set', '--run-seconds', '0.3', '--json']);
  assert.equal(first.code, 0, first.stderr);
  assert.ok(first.report!.working_set.recorded > 0, 'the guest faulted on some pages');
  assert.equal(first.report!.working_set.recorded, readFileSync(file + '.ws').readUInt32LE(28));
  const second = await runCli(['restore', file, '--lazy', '--run-seconds', '0', '--json']);
  assert.equal(second.code, 0, second.stderr);
  assert.equal(second.report!.working_set.used, first.report!.working_set.recorded);
  assert.match(second.stderr, /prefetching the working set of \d+ pages first/);

  const other = join(dir, 'other.snap');
  await writeGuestSnapshot(other, { size: 16 * MiB, threads: 2, ops: 100 });
  copyFileSync(file + '.ws', other + '.ws');
  const stale = await runCli(['restore', other, '--lazy', '--run-seconds', '0', '--json']);
  assert.equal(stale.code, 0, stale.stderr);
  assert.equal(stale.report!.verified, true);
  assert.equal(stale.report!.working_set.used, 0);
  assert.match(stale.report!.working_set.refused, /working set refused: stale: recorded for another snapshot/);
});

test('restore refuses a damaged or incomplete file with one line naming why (with --json, one object naming it)', { skip }, async () => {
  const { file } = await guestSnapshot();
  const bytes = readFileSync(file);
  const flipped = join(dir, 'flipped.snap');
  const header = Buffer.from(bytes);
  header[20] ^= 0x40;
  writeFileSync(flipped, header);
  const cut = join(dir, 'cut.snap');
  copyFileSync(file, cut);
  truncateSync(cut, bytes.length - 30);
  const refusals = [[flipped, /flipped\.snap: .* at offset \d+: /, 'ERR_SNAPSHOT_FORMAT'], [cut, /cut\.snap: .*(trailer|truncated|file length)/, 'ERR_SNAPSHOT_FORMAT']] as const;
  for (const [damaged, why, code] of refusals) {
    for (const mode of ['--eager', '--lazy']) {
      const text = await runCli(['restore', damaged, mode]);
      assert.equal(text.code, 1);
      assert.equal(text.stdout, '');
      assert.equal(text.stderr.trimEnd().split('\n').length, 1, text.stderr);
      assert.match(text.stderr, /^postcopy: /);
      assert.match(text.stderr, why);
      assertJsonFailure(await runCli(['restore', damaged, mode, '--json']), 1, code, why);
    }
  }
});

test('restore of a missing file: one line naming it; with --json, one object naming error and error_code', async () => {
  const file = join(dir, 'nothing.snap');
  const missing = await runCli(['restore', file]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^postcopy: ENOENT: no such file or directory, open '.*nothing\.snap'\n$/);
  assertJsonFailure(await runCli(['restore', file, '--json']), 1, 'ENOENT', /nothing\.snap/);
});

test('restore options are checked, naming option and value', async () => {
  const cases: [string[], RegExp][] = [
    [['restore'], /restore needs a snapshot FILE/],
    [['restore', 'x.snap', '--lazy', '--eager'], /--lazy and --eager exclude each other/],
    [['restore', 'x.snap', '--run-seconds', 'soon'], /--run-seconds 'soon' must be a number from 0 to 3600/],
    [['restore', 'x.snap', '--record-working-set'], /--record-working-set records the faults of a lazy restore: add --lazy/],
    [['restore', 'x.snap', '--fast'], /unknown option --fast/],
    [['restore', 'x.snap', 'y.snap'], /restore takes one FILE, not 2: x.snap y.snap/],
    [['restore', '--lazy', '--eager', 'x.snap'], /--lazy and --eager exclude each other/],
  ];
  for (const [args, message] of cases) {
    const r = await runCli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
  }
});
