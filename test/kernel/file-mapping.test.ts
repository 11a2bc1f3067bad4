// A memory file mapped read-only and shared (FileMapping): what is mapped, where its data and
// holes are, what a UFFDIO_COPY from it places, and that nothing is copied from it outside the
// file or once it is closed.
import test from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, fstatSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileMapping, Mapping, Userfaultfd } from '../../src/kernel/index.js';
import { featureSkip } from '../support/hugepages.js';
import { patternImage } from '../support/serve.js';

const PAGE = 4096;

function withDir(body: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'postcopy-file-'));
  try {
    body(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A file of `pages` pages, sparse, with data (patternImage) only on the pages given. */
function sparseFile(path: string, pages: number, data: number[]): Uint8Array {
  const image = patternImage(pages * PAGE, 7);
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, pages * PAGE);
    for (const p of data) writeSync(fd, image, p * PAGE, PAGE, p * PAGE);
  } finally {
    closeSync(fd);
  }
  return image;
}

function mapsLine(path: string): string | undefined {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').find((line) => line.endsWith(` ${path}`));
}

test('FileMapping maps the whole file read-only and shared; close unmaps it', () => withDir((dir) => {
  const path = join(dir, 'memory');
  writeFileSync(path, patternImage(3 * PAGE + 100));
  const file = FileMapping.open(path);
  assert.equal(file.length, 3 * PAGE + 100);
  assert.equal(file.base, Number(file.address));
  assert.equal(file.mapped, true);
  const line = mapsLine(path);
  assert.ok(line, 'the file is in /proc/self/maps');
  const [range, perms] = line.split(' ');
  assert.equal(perms, 'r--s', 'read-only, shared');
  const [start, end] = range.split('-').map((hex) => parseInt(hex, 16));
  assert.deepEqual([start, end - start], [file.base, 4 * PAGE], 'the whole file, to the end of its last page');
  file.close();
  assert.equal(file.mapped, false);
  assert.equal(mapsLine(path), undefined, 'unmapped');
  assert.throws(() => file.dataRanges(), { code: 'ERR_POSTCOPY_UNMAPPED' });
  file.close(); // again: nothing to do
}));

test('fromDescriptor maps an open file and leaves the descriptor to its owner', () => withDir((dir) => {
  const path = join(dir, 'memory');
  writeFileSync(path, patternImage(2 * PAGE));
  const fd = openSync(path, 'r');
  try {
    const file = FileMapping.fromDescriptor(fd);
    assert.equal(file.length, 2 * PAGE);
    assert.ok(mapsLine(path));
    file.close();
    assert.equal(fstatSync(fd).size, 2 * PAGE, 'still open');
  } finally {
    closeSync(fd);
  }
}));

test('dataRanges: the data of a sparse file exactly, holes left out; bounded; clipped to the file', () => withDir((dir) => {
  const sparse = join(dir, 'sparse');
  sparseFile(sparse, 16, [2, 5, 6, 15]);
  const file = FileMapping.open(sparse);
  const pages = (ranges: [number, number][]) => ranges.map(([s, e]) => [s / PAGE, e / PAGE]);
  assert.deepEqual(pages(file.dataRanges()), [[2, 3], [5, 7], [15, 16]]);
  // past the bound, the rest is one range (data as far as anyone can tell)
  assert.deepEqual(pages(file.dataRanges(2)), [[2, 3], [5, 16]]);
  assert.deepEqual(pages(file.dataRanges(1)), [[2, 16]]);
  assert.throws(() => file.dataRanges(0), { code: 'ERR_OUT_OF_RANGE' });
  file.close();

  const holes = join(dir, 'holes');
  sparseFile(holes, 8, []);
  const empty = FileMapping.open(holes);
  assert.deepEqual(empty.dataRanges(), [], 'all holes');
  empty.close();

  const tail = join(dir, 'tail');
  writeFileSync(tail, patternImage(2 * PAGE + 104));
  const full = FileMapping.open(tail);
  assert.deepEqual(full.dataRanges(), [[0, 2 * PAGE + 104]], 'no holes, to the last byte');
  // the file grows after it was mapped: the ranges stay inside what is mapped
  writeFileSync(tail, patternImage(4 * PAGE));
  assert.deepEqual(full.dataRanges(), [[0, 2 * PAGE + 104]]);
  full.close();
}));

test('an empty file, a directory and a missing file are refused with Node-shaped errors', () => withDir((dir) => {
  const empty = join(dir, 'empty');
  writeFileSync(empty, '');
  assert.throws(() => FileMapping.open(empty), {
    code: 'ERR_INVALID_ARG_VALUE',
    message: `The argument 'path' must be a file of at least one byte to map (it is empty). Received '${empty}'`,
  });
  assert.throws(() => FileMapping.open(dir), { code: 'ERR_INVALID_ARG_VALUE', message: /must be a regular file to map/ });
  assert.throws(() => FileMapping.open(join(dir, 'missing')), { code: 'ENOENT' });
  const fd = openSync(empty, 'r');
  try {
    assert.throws(() => FileMapping.fromDescriptor(fd), { code: 'ERR_INVALID_ARG_VALUE', message: /The argument 'fd' .* Received \d+$/ });
  } finally {
    closeSync(fd);
  }
  assert.throws(() => FileMapping.fromDescriptor(fd), { code: 'EBADF' });
  assert.equal(mapsLine(empty), undefined, 'nothing left mapped');
}));

test('tryCopyFrom places the file\'s bytes, zeros past its end in the last page, and refuses source ranges outside the live mapping', { skip: featureSkip() }, () => withDir((dir) => {
  const path = join(dir, 'memory');
  const image = sparseFile(path, 4, [0, 1, 2, 3]);
  truncateSync(path, 3 * PAGE + 100); // a short last page
  const file = FileMapping.open(path);
  const memory = new Mapping(8 * PAGE);
  const uffd = Userfaultfd.open();
  try {
    uffd.register(memory.address, memory.length, 'missing');
    assert.equal(uffd.tryCopyFrom(memory.base, file, PAGE, 2 * PAGE), 2 * PAGE);
    assert.deepEqual(memory.bytes(0, 2 * PAGE), image.subarray(PAGE, 3 * PAGE));
    assert.equal(uffd.tryCopyFrom(memory.address + BigInt(2 * PAGE), file, 3 * PAGE, PAGE), PAGE, 'the last page, whole');
    assert.deepEqual(memory.bytes(2 * PAGE, 100), image.subarray(3 * PAGE, 3 * PAGE + 100));
    assert.equal(memory.bytes(2 * PAGE + 100, PAGE - 100).some((b) => b !== 0), false, 'zeros past the end of the file');
    assert.equal(uffd.tryCopyFrom(memory.base, file, 0, PAGE), -17, 'EEXIST: the kernel answers for a placed page');

    for (const [srcOffset, length] of [[3 * PAGE, 2 * PAGE], [4 * PAGE, PAGE], [2 ** 40, PAGE]]) {
      assert.equal(uffd.tryCopyFrom(memory.base + 4 * PAGE, file, srcOffset, length), -14, `source ${srcOffset} length ${length}`);
      assert.equal(uffd.lastCount, 0);
    }
    assert.throws(() => uffd.tryCopyFrom(memory.base + 4 * PAGE, file, -PAGE, PAGE), { code: 'ERR_OUT_OF_RANGE', message: /"srcOffset"/ });
    assert.throws(() => uffd.tryCopyFrom(memory.base + 4 * PAGE, file, 1.5, PAGE), { code: 'ERR_OUT_OF_RANGE', message: /"srcOffset"/ });
    assert.throws(() => uffd.tryCopyFrom(memory.base + 4 * PAGE, file, 0n as never, PAGE), { code: 'ERR_INVALID_ARG_TYPE', message: /"srcOffset"/ });
    assert.equal(uffd.tryCopyFrom(memory.base + 8 * PAGE, file, 0, PAGE), -14, 'dst outside the registered range');
    file.close();
    assert.equal(uffd.tryCopyFrom(memory.base + 4 * PAGE, file, 0, PAGE), -14, 'closed');
    // (reading them here would wait for ever: nobody serves this thread's faults)
    assert.equal(uffd.tryZeropage(memory.base + 4 * PAGE, 4 * PAGE), 4 * PAGE, 'no refused call placed anything: still missing');
  } finally {
    uffd.close();
    memory.unmap();
    file.close();
  }
}));
