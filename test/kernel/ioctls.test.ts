// The less common ioctls, each doing what the kernel documents: CONTINUE for MINOR faults,
// MOVE of present pages into a missing range, POISON that turns an access into SIGBUS.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { Mapping, Userfaultfd, hasFeatures } from '../../src/kernel/index.js';
import { patternImage } from '../support/serve.js';
import { featureSkip } from '../support/hugepages.js';
import { startToucher, waitFor } from '../support/threads.js';

const PAGE = 4096;

test('MINOR faults on shared memory are resolved by CONTINUE, mapping the page cache as it is', { skip: featureSkip('MINOR_SHMEM') }, async () => {
  const mapping = new Mapping(8 * PAGE, { shared: true });
  const image = patternImage(8 * PAGE, 11);
  mapping.bytes().set(image);
  mapping.madvise(0, mapping.length, 'dontneed'); // drops the mappings, keeps the page cache
  const uffd = Userfaultfd.open({ features: ['MINOR_SHMEM'] });
  const minor: number[] = [];
  try {
    const ioctls = uffd.register(mapping.address, mapping.length, 'minor');
    assert.ok(ioctls.has('CONTINUE'));
    uffd.onEvents((batch) => {
      for (let i = 0; i < batch.count; i++) {
        assert.equal(batch.isMinor(i), true);
        const page = Math.floor((batch.address(i) - mapping.base) / PAGE);
        minor.push(page);
        assert.equal(uffd.continue(mapping.base + page * PAGE, PAGE), PAGE);
      }
    });
    const reader = startToucher(mapping, [1, 6]);
    const { words } = await reader.done;
    const imageWords = new Int32Array(image.buffer);
    assert.deepEqual(words, [imageWords[PAGE / 4], imageWords[(6 * PAGE) / 4]]);
    assert.deepEqual(minor, [1, 6]);
    await reader.worker.terminate();
  } finally {
    uffd.close();
    mapping.unmap();
  }
});

test('MOVE takes present anonymous pages into a missing range without a copy', { skip: featureSkip('MOVE') }, async () => {
  const source = new Mapping(8 * PAGE);
  const target = new Mapping(8 * PAGE);
  const image = patternImage(4 * PAGE, 12);
  source.bytes(0, 4 * PAGE).set(image);
  const uffd = Userfaultfd.open({ features: ['MOVE'] });
  try {
    uffd.register(target.address, target.length, 'missing');
    assert.equal(uffd.move(target.address + BigInt(2 * PAGE), source.address, 4 * PAGE), 4 * PAGE);
    assert.deepEqual(target.bytes(2 * PAGE, 4 * PAGE), image);
    assert.equal(source.bytes(0, 4 * PAGE).some((b) => b !== 0), false, 'the pages left the source');
    assert.throws(() => uffd.move(target.address + BigInt(2 * PAGE), source.address + BigInt(4 * PAGE), PAGE), { code: 'EEXIST' });
  } finally {
    uffd.close();
    source.unmap();
    target.unmap();
  }
});

test('POISON: the page can never arrive, and touching it is SIGBUS (in a child process)', { skip: featureSkip('POISON') }, () => {
  const kernel = join(__dirname, '..', '..', 'src', 'kernel', 'index.js');
  const script = `
    const { Mapping, Userfaultfd } = require(${JSON.stringify(kernel)});
    const m = new Mapping(4 * 4096);
    const u = Userfaultfd.open({ features: ['POISON'] });
    u.register(m.address, m.length, 'missing');
    process.stdout.write('poisoned ' + u.poison(m.address + 4096n, 4096) + '\\n');
    m.bytes()[4096];`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(r.stdout, 'poisoned 4096\n', r.stderr);
  assert.equal(r.signal, 'SIGBUS');
});

test('a fault held with DONTWAKE placement wakes only on WAKE', { skip: featureSkip() }, async () => {
  const mapping = new Mapping(4 * PAGE);
  const uffd = Userfaultfd.open();
  let faults = 0;
  try {
    uffd.register(mapping.address, mapping.length, 'missing');
    uffd.onEvents((batch) => (faults += batch.count));
    const reader = startToucher(mapping, [2]);
    await waitFor(() => faults === 1, 5000, 'the fault');
    uffd.copy(mapping.address + BigInt(2 * PAGE), new Uint8Array(PAGE).fill(3), PAGE, { dontWake: true });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(reader.settled(), false, 'DONTWAKE woke the thread');
    uffd.wake(mapping.address + BigInt(2 * PAGE), PAGE);
    assert.deepEqual((await reader.done).words, [0x03030303]);
    await reader.worker.terminate();
  } finally {
    uffd.close();
    mapping.unmap();
  }
});

test('MOVE and POISON where the kernel lacks them, or the descriptor was not opened for MOVE: refused naming the feature, not a bare EINVAL', { skip: featureSkip() }, (t) => {
  const memory = new Mapping(4 * 4096);
  const source = new Mapping(4096);
  const uffd = Userfaultfd.open();
  try {
    uffd.register(memory.address, memory.length, 'missing');
    const unsupported = (pattern: RegExp) => (error: Error & { code?: string }) => error.code === 'ERR_POSTCOPY_UNSUPPORTED' && pattern.test(error.message);
    if (hasFeatures('POISON')) t.diagnostic('this kernel has POISON: not refused');
    else assert.throws(() => uffd.poison(memory.address, 4096), unsupported(/^ioctl\(UFFDIO_POISON\): this kernel \(.*\) does not grant POISON \(Linux 6\.6\+\)$/));
    const move = () => uffd.move(memory.address, source.address, 4096);
    if (hasFeatures('MOVE')) assert.throws(move, unsupported(/^ioctl\(UFFDIO_MOVE\): this userfaultfd was not opened with it/));
    else assert.throws(move, unsupported(/^ioctl\(UFFDIO_MOVE\): this kernel \(.*\) does not grant MOVE \(Linux 6\.8\+\)$/));
  } finally {
    uffd.close();
    memory.unmap();
    source.unmap();
  }
});
