// The snapshot file on disk: layouts round-trip; every truncation, every damaged byte of the
// structure and a file that is no snapshot at all are refused naming the field, the offset and
// the file (never a crash, never accepted); damaged page data is found by its block's checksum.
// Byte flips are seeded: POSTCOPY_FUZZ_SEED reproduces a run, POSTCOPY_SNAPSHOT_FLIPS sets how many.
import test from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, copyFileSync, existsSync, openSync, readFileSync, readSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { Bitmap } from '../../src/memory/index.js';
import { SnapshotIncompleteError, SnapshotReader, SnapshotWriter } from '../../src/snapshot/index.js';
import { SnapshotFormatError, encodeHeader, planLayout, type SnapshotBlockSpec, type SnapshotLayout } from '../../src/wire/snapshot-format.js';
import { loopSeed } from '../support/seed.js';
import { MiB, fillPages, randomBytes, tempDir, writeSnapshot, type WrittenSnapshot } from '../support/snapshot.js';
import { seededRandom } from '../../src/testing/index.js';

const SEED = loopSeed('POSTCOPY_FUZZ_SEED', 20261203);
const FLIPS = Number(process.env.POSTCOPY_SNAPSHOT_FLIPS ?? 4000);
console.log(`snapshot-format: seed ${SEED} (POSTCOPY_FUZZ_SEED=${SEED} reproduces), ${FLIPS} byte flips`);

const PAGE = 4096;
const HUGE = 2 * MiB;

/** Two 4 KiB blocks and a hugetlb one, device state, page checksums: every part of the format. */
const MIXED: SnapshotBlockSpec[] = [
  { idstr: 'pc.ram', usedLength: 1 * MiB, pageSize: PAGE },
  { idstr: 'vga', usedLength: 64 * 1024, pageSize: PAGE },
  { idstr: 'huge', usedLength: 4 * MiB, pageSize: HUGE },
];

function expectContent(reader: SnapshotReader, written: WrittenSnapshot): void {
  written.pages.forEach((pages, block) => {
    const b = reader.blocks[block];
    const all = Buffer.alloc(b.usedLength);
    reader.readPages(block, 0, b.pages, all);
    pages.forEach((page, i) => {
      assert.equal(b.present.get(i), page !== undefined, `block ${block} page ${i}: bit`);
      const got = all.subarray(i * b.pageSize, (i + 1) * b.pageSize);
      assert.ok(page ? got.equals(page) : got.every((x) => x === 0), `block ${block} page ${i}: content`);
    });
  });
}

const layouts: [string, SnapshotBlockSpec[], { deviceStateLength?: number; pageChecksums?: boolean }][] = [
  ['one block', [{ idstr: 'pc.ram', usedLength: 2 * MiB, pageSize: PAGE }], {}],
  ['many blocks of odd sizes', Array.from({ length: 7 }, (_, i) => ({ idstr: `block-${i}`, usedLength: (i * 37 + 1) * PAGE, pageSize: PAGE })), { pageChecksums: true }],
  ['hugetlb 2 MiB pages', [{ idstr: 'huge', usedLength: 6 * MiB, pageSize: HUGE }], { pageChecksums: true }],
  ['device state, no page checksums', MIXED, { deviceStateLength: 12345 }],
  ['device state and page checksums', MIXED, { deviceStateLength: 3, pageChecksums: true }],
];

for (const [name, blocks, options] of layouts) {
  test(`round trip: ${name}`, (t) => {
    const path = join(tempDir(t), 'a.snap');
    const written = writeSnapshot(path, blocks, { ...options, seed: SEED });
    assert.ok(!existsSync(path + '.partial'), 'the .partial file is renamed');
    const reader = SnapshotReader.open(path);
    try {
      assert.deepEqual(reader.blocks.map((b) => [b.idstr, b.usedLength, b.pageSize, b.pages]), blocks.map((b) => [b.idstr, b.usedLength, b.pageSize, b.usedLength / b.pageSize]));
      for (const b of reader.blocks) assert.equal(b.pagesOffset % MiB, 0, `${b.idstr}: page region aligned to 1 MiB`);
      assert.equal(reader.pageChecksums, options.pageChecksums === true);
      expectContent(reader, written);
      assert.deepEqual(reader.deviceState, written.deviceState ?? Buffer.alloc(0));
    } finally {
      reader.close();
    }
    const status = SnapshotReader.inspect(path);
    assert.equal(status.complete, true, status.reason);
    assert.equal(status.pageData?.every((b) => b.ok), options.pageChecksums ? true : undefined);
  });
}

test('a page whose bit is clear reads as zeros, whatever bytes the file holds there', (t) => {
  const path = join(tempDir(t), 'a.snap');
  const writer = SnapshotWriter.create(path, [{ idstr: 'pc.ram', usedLength: 4 * PAGE, pageSize: PAGE }]);
  writeSync(writer.fd, Buffer.alloc(PAGE, 0xaa), 0, PAGE, writer.pageOffset(0, 1));
  writeSync(writer.fd, Buffer.alloc(PAGE, 0xbb), 0, PAGE, writer.pageOffset(0, 2));
  const present = new Bitmap(4);
  present.set(2);
  writer.finish([present], []);
  const reader = SnapshotReader.open(path);
  const into = Buffer.alloc(4 * PAGE, 0xff);
  reader.readPages(0, 0, 4, into);
  reader.close();
  assert.ok(into.subarray(0, 2 * PAGE).every((x) => x === 0), 'pages 0 and 1 are zeros');
  assert.ok(into.subarray(2 * PAGE, 3 * PAGE).every((x) => x === 0xbb), 'page 2 is as saved');
  assert.ok(into.subarray(3 * PAGE).every((x) => x === 0), 'page 3 is zeros');
});

test('the writer refuses what would land outside a block or mislabel the file', (t) => {
  const writer = SnapshotWriter.create(join(tempDir(t), 'a.snap'), [{ idstr: 'pc.ram', usedLength: 4 * PAGE, pageSize: PAGE }], { pageChecksums: true });
  try {
    assert.throws(() => writer.pageOffset(0, 4), /page 4 of block 0 \(pc.ram, 4 pages\)/);
    assert.throws(() => writer.pageOffset(1, 0), /page 0 of block 1 \(1 blocks\)/);
    assert.throws(() => writer.finish([new Bitmap(5)], [0]), /block pc.ram has 4 pages, its bitmap 5 bits/);
    assert.throws(() => writer.finish([new Bitmap(4)], []), /0 page checksums for 1 blocks/);
  } finally {
    writer.fail('test over');
  }
  assert.throws(() => SnapshotWriter.create('/tmp/x', [{ idstr: 'a', usedLength: PAGE, pageSize: PAGE }, { idstr: 'a', usedLength: PAGE, pageSize: PAGE }]), /two blocks are named "a"/);
  assert.throws(() => SnapshotWriter.create('/tmp/x', [{ idstr: 'a', usedLength: 2 ** 33 * PAGE, pageSize: PAGE }]), /more than 4294967296 pages/);
});

/** Opening must refuse the file, naming it; inspect must say the same without throwing. */
function expectRefused(path: string, pattern: RegExp): Error {
  let error: unknown;
  try {
    SnapshotReader.open(path).close();
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof SnapshotFormatError || error instanceof SnapshotIncompleteError, `refused with a snapshot error, got ${error}`);
  assert.ok(error.message.startsWith(`${path}: `), `names the file: ${error.message}`);
  assert.match(error.message, pattern);
  const status = SnapshotReader.inspect(path);
  assert.equal(status.complete, false);
  assert.ok(status.reason && error.message.endsWith(status.reason), `inspect gives the same reason: ${status.reason}`);
  return error;
}

test('every truncation class is refused, naming where the file ends', (t) => {
  const dir = tempDir(t);
  const good = join(dir, 'good.snap');
  writeSnapshot(good, MIXED, { deviceStateLength: 100, pageChecksums: true, seed: SEED });
  const { layout } = SnapshotReader.inspect(good) as { layout: SnapshotLayout };
  const [, vga, huge] = layout.blocks;
  const cuts: [string, number, RegExp][] = [
    ['empty file', 0, /magic at offset 0: truncated: the file is empty/],
    ['inside the magic', 4, /fixed header at offset 0: truncated/],
    ['inside the fixed header', 30, /fixed header at offset 0: truncated: needs 64 bytes/],
    ['inside the block table', layout.headerLength - 10, new RegExp(`block table at offset 64: truncated: the header is ${layout.headerLength} bytes, the file only ${layout.headerLength - 10}`)],
    ['inside the bitmaps', vga.bitmapOffset + 3, new RegExp(`file length at offset ${vga.bitmapOffset + 3}: truncated: the file ends at byte \\d+, in block 1 \\(vga\\) bitmap`)],
    ['inside a page region', huge.pagesOffset + 5000, /truncated: the file ends at byte \d+, in block 2 \(huge\) page region/],
    ['at the end of a page region', vga.pagesOffset + vga.usedLength, /truncated: the file ends at byte \d+, in alignment padding/],
    ['inside the device state', layout.deviceStateOffset + 50, /truncated: the file ends at byte \d+, in the device state/],
    ['before the trailer', layout.trailerOffset, new RegExp(`not a complete snapshot: no trailer at offset ${layout.trailerOffset}: the snapshot did not finish`)],
    ['inside the trailer', layout.trailerOffset + 20, new RegExp(`trailer at offset ${layout.trailerOffset}: truncated`)],
    ['one byte short', layout.fileLength - 1, /trailer at offset \d+: truncated: needs \d+ bytes, the file ends \d+ bytes later/],
    ['one byte extra', layout.fileLength + 1, new RegExp(`file length at offset ${layout.fileLength}: 1 bytes follow the trailer`)],
  ];
  for (const [name, length, pattern] of cuts) {
    const path = join(dir, `${name.replaceAll(' ', '-')}.snap`);
    copyFileSync(good, path);
    truncateSync(path, length);
    expectRefused(path, pattern);
  }
});

test('a .partial file without a trailer, and one with a failure note, are refused naming why', (t) => {
  const dir = tempDir(t);
  const interrupted = SnapshotWriter.create(join(dir, 'cut.snap'), MIXED);
  fillPages(interrupted, MIXED, 0.5, seededRandom(SEED));
  interrupted.close(); // as if the process died here
  assert.ok(!existsSync(join(dir, 'cut.snap')), 'nothing is published under the final name');
  expectRefused(join(dir, 'cut.snap.partial'), /not a complete snapshot: no trailer at offset \d+: the snapshot did not finish/);

  const failed = SnapshotWriter.create(join(dir, 'failed.snap'), MIXED, { deviceStateLength: 10 });
  failed.fail('write of block pc.ram page 7: ENOSPC: no space left on device');
  expectRefused(join(dir, 'failed.snap.partial'), /not a complete snapshot: the snapshot failed: write of block pc.ram page 7: ENOSPC/);
});

test('a file that is not a snapshot is refused naming the magic', (t) => {
  const dir = tempDir(t);
  const random = join(dir, 'random.bin');
  writeFileSync(random, randomBytes(100_000, seededRandom(SEED)));
  expectRefused(random, /magic at offset 0: ".*" is not "PCSNAP01": not a postcopy snapshot/);
  const text = join(dir, 'notes.txt');
  writeFileSync(text, 'this is a text file, not a snapshot\n'.repeat(10));
  expectRefused(text, /magic at offset 0: "this is " is not "PCSNAP01"/);
});

test('a header claiming huge lengths is refused without allocating what it claims', (t) => {
  const dir = tempDir(t);
  const claims: [string, SnapshotLayout][] = [
    ['8 TiB block', planLayout([{ idstr: 'big', usedLength: 2 ** 43, pageSize: PAGE }], 0)],
    ['1 PiB device state', planLayout([{ idstr: 'small', usedLength: PAGE, pageSize: PAGE }], 2 ** 50)],
    ['1024 blocks of 4 TiB', planLayout(Array.from({ length: 1024 }, (_, i) => ({ idstr: `b${i}`.padEnd(255, 'x'), usedLength: 2 ** 42, pageSize: PAGE })), 0)],
  ];
  for (const [name, layout] of claims) {
    const path = join(dir, `${name.replaceAll(' ', '-')}.snap`);
    writeFileSync(path, Buffer.concat([encodeHeader(layout), Buffer.alloc(4096)]));
    const before = process.memoryUsage().arrayBuffers;
    expectRefused(path, /file length at offset \d+: truncated: the file ends at byte \d+, in/);
    const grew = process.memoryUsage().arrayBuffers - before;
    assert.ok(grew < 4 * MiB, `${name}: opening allocated ${grew} bytes`);
  }
  // A used length past 2^32 pages cannot come from planLayout: patch it into a valid header.
  const header = encodeHeader(planLayout([{ idstr: 'x', usedLength: PAGE, pageSize: PAGE }], 0));
  header.writeBigUInt64LE(2n ** 52n, 64 + 2 + 1);
  const path = join(dir, 'too-many-pages.snap');
  writeFileSync(path, header);
  expectRefused(path, /block 0 \(x\) used length at offset 67: 4503599627370496 is more than 4294967296 pages/);
});

test('versions: new files are version 2 (CRC32C page checksums), version 1 is still read, any other is refused naming both', (t) => {
  const layout = planLayout([{ idstr: 'x', usedLength: PAGE, pageSize: PAGE }], 0);
  assert.equal(layout.version, 2);
  assert.equal(planLayout([{ idstr: 'x', usedLength: PAGE, pageSize: PAGE }], 0, 0, 1).version, 1);
  assert.throws(() => planLayout([{ idstr: 'x', usedLength: PAGE, pageSize: PAGE }], 0, 0, 3), /version 3 \(this writer knows 1 and 2\)/);
  const header = encodeHeader(layout);
  header.writeUInt32LE(3, 8);
  const path = join(tempDir(t), 'version-3.snap');
  writeFileSync(path, header);
  expectRefused(path, /version at offset 8: 3 is not supported \(this reader knows 1 and 2\)/);
});

/** The field names the reader may give for a damaged byte at `offset`, by the part it is in. */
function acceptableFields(layout: SnapshotLayout, offset: number): RegExp {
  const fixed: [number, string][] = [
    [8, 'magic'], [12, 'version'], [16, 'flags'], [20, 'target page size'], [24, 'block count'],
    [32, 'device state offset'], [40, 'device state length'], [48, 'trailer offset'], [56, 'header length'], [60, 'header checksum'], [64, 'reserved'],
  ];
  if (offset < 64) {
    const field = fixed.find(([end]) => offset < end)![1];
    return new RegExp(`^(${field}|header checksum)$`);
  }
  if (offset < layout.headerLength) {
    const block = blockEntryAt(layout, offset);
    return new RegExp(`^block ${block} `);
  }
  const bitmap = layout.blocks.findIndex((b) => offset >= b.bitmapOffset && offset < b.bitmapOffset + b.bitmapLength);
  if (bitmap >= 0) return new RegExp(`^block ${bitmap} \\(${layout.blocks[bitmap].idstr}\\) bitmap$`);
  if (offset >= layout.deviceStateOffset && offset < layout.deviceStateOffset + layout.deviceStateLength) return /^device state$/;
  if (offset >= layout.trailerOffset) return /^trailer/;
  throw new Error(`offset ${offset} is in no checked part`);
}

function blockEntryAt(layout: SnapshotLayout, offset: number): number {
  let end = 64;
  return layout.blocks.findIndex((b) => (end += 2 + Buffer.byteLength(b.idstr) + 44) > offset);
}

test('seeded byte flips in header, block table, bitmaps, device state and trailer are refused naming the part', (t) => {
  const path = join(tempDir(t), 'flip.snap');
  writeSnapshot(path, MIXED, { deviceStateLength: 300, pageChecksums: true, seed: SEED });
  const { layout } = SnapshotReader.inspect(path) as { layout: SnapshotLayout };
  const regions: [number, number][] = [
    [0, 64],
    [64, layout.headerLength],
    ...layout.blocks.map((b): [number, number] => [b.bitmapOffset, b.bitmapOffset + b.bitmapLength]),
    [layout.deviceStateOffset, layout.deviceStateOffset + layout.deviceStateLength],
    [layout.trailerOffset, layout.fileLength],
  ];
  const random = seededRandom(SEED);
  const fd = openSync(path, 'r+');
  const original = Buffer.alloc(1);
  try {
    for (let n = 0; n < FLIPS; n++) {
      const [from, to] = regions[n % regions.length];
      const offset = from + Math.floor(random() * (to - from));
      const mask = 1 + Math.floor(random() * 255);
      readSync(fd, original, 0, 1, offset);
      writeSync(fd, Buffer.of(original[0] ^ mask), 0, 1, offset);
      try {
        const where = `flip ${n}: byte ${offset} ^ 0x${mask.toString(16)} (seed ${SEED})`;
        assert.throws(() => SnapshotReader.open(path).close(), (e: unknown) => {
          assert.ok(e instanceof SnapshotFormatError, `${where}: ${e}`);
          assert.match(e.field, acceptableFields(layout, offset), `${where}: ${e.message}`);
          assert.ok(e.message.startsWith(`${path}: ${e.field} at offset ${e.offset}: `), `${where}: ${e.message}`);
          return true;
        }, where);
      } finally {
        writeSync(fd, original, 0, 1, offset);
      }
    }
  } finally {
    closeSync(fd);
  }
  assert.equal(SnapshotReader.inspect(path).complete, true, 'every flip was undone');
});

test('a flipped byte in a present page is found by its block\'s page checksum; a flip in a hole is no damage', (t) => {
  const path = join(tempDir(t), 'pages.snap');
  const written = writeSnapshot(path, MIXED, { pageChecksums: true, seed: SEED });
  const random = seededRandom(SEED ^ 0x9e3779b9);
  const fd = openSync(path, 'r+');
  const pick = (present: boolean): [number, number, number] => {
    for (;;) {
      const block = Math.floor(random() * MIXED.length);
      const page = Math.floor(random() * written.pages[block].length);
      if ((written.pages[block][page] !== undefined) === present) return [block, page, Math.floor(random() * MIXED[block].pageSize)];
    }
  };
  try {
    const { layout } = SnapshotReader.inspect(path) as { layout: SnapshotLayout };
    for (let n = 0; n < 60; n++) {
      const present = n % 4 !== 0;
      const [block, page, byte] = pick(present);
      const offset = layout.blocks[block].pagesOffset + page * MIXED[block].pageSize + byte;
      const original = Buffer.alloc(1);
      readSync(fd, original, 0, 1, offset);
      writeSync(fd, Buffer.of(original[0] ^ (1 + Math.floor(random() * 255))), 0, 1, offset);
      try {
        SnapshotReader.open(path).close(); // page data is not read at open
        const status = SnapshotReader.inspect(path);
        const where = `block ${block} page ${page} byte ${byte} (seed ${SEED})`;
        if (!present) {
          assert.equal(status.complete, true, `${where}: a hole holds nothing`);
          continue;
        }
        assert.equal(status.complete, false, where);
        assert.match(status.reason!, new RegExp(`^page data of block ${block} \\(${MIXED[block].idstr}\\) does not match its checksum`), where);
        assert.deepEqual(status.pageData!.map((b) => b.ok), MIXED.map((_, i) => i !== block), where);
      } finally {
        writeSync(fd, original, 0, 1, offset);
      }
    }
  } finally {
    closeSync(fd);
  }
});

test('without page checksums a damaged page is not detectable (the flag says so)', (t) => {
  const path = join(tempDir(t), 'nosums.snap');
  writeSnapshot(path, MIXED, { seed: SEED, presentShare: 1 });
  const before = readFileSync(path);
  const { layout } = SnapshotReader.inspect(path) as { layout: SnapshotLayout };
  before[layout.blocks[0].pagesOffset] ^= 1;
  writeFileSync(path, before);
  const status = SnapshotReader.inspect(path);
  assert.equal(status.complete, true);
  assert.equal(status.pageData, undefined);
});
