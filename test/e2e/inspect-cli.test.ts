// `postcopy inspect`: reports a complete file and exits 0; refuses anything else with exit 1 and
// a one-line reason (and complete:false plus the reason in --json); options checked like the rest.
import test from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { SnapshotReader, SnapshotWriter } from '../../src/snapshot/index.js';
import type { SnapshotBlockSpec } from '../../src/wire/snapshot-format.js';
import { assertJsonFailure, runCli } from '../support/cli.js';
import { MiB, fillPages, tempDir, writeSnapshot } from '../support/snapshot.js';
import { seededRandom } from '../../src/testing/index.js';

const BLOCKS: SnapshotBlockSpec[] = [
  { idstr: 'pc.ram', usedLength: 2 * MiB, pageSize: 4096 },
  { idstr: 'huge', usedLength: 4 * MiB, pageSize: 2 * MiB },
];

/**
 * A refused file: exit 1, one line on stderr naming the file and the reason, which --json
 * repeats in `reason` and in `error`, with the refusal's `error_code`.
 */
async function expectRefused(path: string, reason: RegExp, code: string): Promise<Record<string, any>> {
  const text = await runCli(['inspect', path]);
  assert.equal(text.code, 1, text.stderr);
  assert.match(text.stdout, new RegExp(`^${path}: NOT COMPLETE\n`));
  assert.equal(text.stderr.trimEnd().split('\n').length, 1, `one line: ${text.stderr}`);
  assert.match(text.stderr, new RegExp(`^postcopy: ${path}: `));
  assert.match(text.stderr, reason);
  const json = await runCli(['inspect', '--json', path]);
  const report = assertJsonFailure(json, 1, code, reason);
  assert.equal(report.complete, false);
  assert.match(report.reason, reason);
  assert.equal(report.error, `${path}: ${report.reason}`);
  return report;
}

test('a complete file: header, blocks, pages present and zero, checksums verified; exit 0', async (t) => {
  const path = join(tempDir(t), 'good.snap');
  const written = writeSnapshot(path, BLOCKS, { deviceStateLength: 4000, pageChecksums: true, seed: 7 });
  const present = written.pages.map((pages) => pages.filter((p) => p !== undefined).length);
  const text = await runCli(['inspect', path]);
  assert.equal(text.code, 0, text.stderr);
  assert.equal(text.stderr, '');
  assert.match(text.stdout, new RegExp(`^${path}: complete\n`));
  assert.match(text.stdout, /format +version 2, target page 4096, flags PAGE_CHECKSUMS/);
  assert.match(text.stdout, /device state 4000 bytes at \d+/);
  assert.match(text.stdout, new RegExp(`pc.ram +2097152 +4096 +512 +${present[0]} +${512 - present[0]}\n`));
  assert.match(text.stdout, new RegExp(`huge +4194304 +2097152 +2 +${present[1]} +${2 - present[1]}\n`));
  assert.match(text.stdout, /checksums +header ok, bitmaps ok, device state ok; page data: pc.ram ok, huge ok/);

  const json = await runCli(['inspect', path, '--json']);
  assert.equal(json.code, 0);
  const r = json.report!;
  assert.equal(r.complete, true);
  assert.equal(r.reason, undefined);
  assert.equal(r.error, undefined);
  assert.equal(json.stdout.trimEnd().split('\n').length, 1);
  assert.deepEqual(r.flags, ['PAGE_CHECKSUMS']);
  assert.equal(r.deviceStateLength, 4000);
  assert.deepEqual(r.blocks.map((b: any) => [b.idstr, b.pages, b.present, b.zeroPages]), [['pc.ram', 512, present[0], 512 - present[0]], ['huge', 2, present[1], 2 - present[1]]]);
  assert.deepEqual(r.checksums, { header: true, bitmaps: true, deviceState: true, pageData: { 'pc.ram': true, huge: true } });
});

test('without page checksums the report says page data is not in the file', async (t) => {
  const path = join(tempDir(t), 'nosums.snap');
  writeSnapshot(path, BLOCKS);
  const json = await runCli(['inspect', path, '--json']);
  assert.equal(json.code, 0);
  assert.equal(json.report?.checksums.pageData, 'not in file');
});

test('an interrupted .partial file, a failed one and a missing file are refused naming why', async (t) => {
  const dir = tempDir(t);
  const interrupted = SnapshotWriter.create(join(dir, 'cut.snap'), BLOCKS);
  fillPages(interrupted, BLOCKS, 0.5, seededRandom(3));
  interrupted.close();
  const cut = await expectRefused(join(dir, 'cut.snap.partial'), /no trailer at offset \d+: the snapshot did not finish/, 'ERR_SNAPSHOT_INCOMPLETE');
  assert.deepEqual(cut.blocks.map((b: any) => [b.idstr, b.present]), [['pc.ram', null], ['huge', null]], 'the header is still reported');
  assert.equal(cut.checksums, null);

  await expectRefused(join(dir, 'cut.snap'), /cannot read it: no such file \(.*cut\.snap\.partial exists: the snapshot did not finish\)/, 'ENOENT');

  const failed = SnapshotWriter.create(join(dir, 'failed.snap'), BLOCKS);
  failed.fail('disk full');
  await expectRefused(join(dir, 'failed.snap.partial'), /the snapshot failed: disk full/, 'ERR_SNAPSHOT_INCOMPLETE');
});

test('damaged files are refused naming the field and offset; damaged page data names the block', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'a.snap');
  writeSnapshot(path, BLOCKS, { pageChecksums: true, presentShare: 1, seed: 5 });
  const { layout } = SnapshotReader.inspect(path);
  const fd = openSync(path, 'r+');
  const byte = Buffer.alloc(1);
  const at = layout!.blocks[1].pagesOffset + 12345;
  readSync(fd, byte, 0, 1, at);
  writeSync(fd, Buffer.of(byte[0] ^ 0x40), 0, 1, at);
  closeSync(fd);
  const r = await expectRefused(path, /page data of block 1 \(huge\) does not match its checksum \(0x[0-9a-f]+, the trailer says 0x[0-9a-f]+\)/, 'ERR_SNAPSHOT_FORMAT');
  assert.deepEqual(r.checksums.pageData, { 'pc.ram': true, huge: false });

  truncateSync(path, layout!.trailerOffset - 1);
  await expectRefused(path, new RegExp(`file length at offset ${layout!.trailerOffset - 1}: truncated`), 'ERR_SNAPSHOT_FORMAT');

  const text = join(dir, 'notes.txt');
  writeFileSync(text, 'not a snapshot\n');
  await expectRefused(text, /magic at offset 0: "not a sn" is not "PCSNAP01"/, 'ERR_SNAPSHOT_FORMAT');
});

const usage: [string[], RegExp][] = [
  [['inspect'], /inspect needs a snapshot FILE/],
  [['inspect', 'a', 'b'], /inspect takes one FILE, not 2: a b/],
  [['inspect', 'a', '--bogus'], /unknown option --bogus/],
  [['inspect', 'a', '--json=yes'], /--json takes no value/],
];
for (const [args, message] of usage) {
  test(`postcopy ${args.join(' ')}: refused with a usage error`, async () => {
    const r = await runCli(args);
    assert.equal(r.code, 2);
    assert.match(r.stderr, message);
  });
}
