// MISSING faults from real worker threads, served on the main thread's event loop.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Mapping, Userfaultfd, hasFeatures, type MappingOptions } from '../../src/kernel/index.js';
import { PageServer, patternImage, shuffled, type Resolution } from '../support/serve.js';
import { featureSkip, hugeSkip } from '../support/hugepages.js';
import { sleep, startToucher, waitFor } from '../support/threads.js';
import { EEXIST } from '../../src/base/index.js';

const PAGE = 4096;
/** POSTCOPY_TEST_MAX_THREADS: test:vm sets 2, eight threads at once being slow under emulation. */
const MAX_THREADS = Number(process.env.POSTCOPY_TEST_MAX_THREADS ?? Infinity);
const threadSkip = (threads: number) => threads > MAX_THREADS && `left out: ${threads} threads, POSTCOPY_TEST_MAX_THREADS=${MAX_THREADS}`;

function openMissing(): Userfaultfd {
  return Userfaultfd.open({ features: hasFeatures('THREAD_ID') ? ['THREAD_ID'] : [] });
}

test('a worker thread faulting on a missing page really blocks until the page is placed', { skip: featureSkip() }, async () => {
  const mapping = new Mapping(16 * PAGE);
  const uffd = openMissing();
  const ioctls = uffd.register(mapping.address, mapping.length, 'missing');
  assert.ok(ioctls.has('COPY') && ioctls.has('ZEROPAGE') && ioctls.has('WAKE'), `ioctls ${[...ioctls]}`);
  const faults: { address: number; tid: number; write: boolean }[] = [];
  uffd.onEvents((batch) => {
    for (let i = 0; i < batch.count; i++) faults.push({ address: batch.address(i), tid: batch.threadId(i), write: batch.isWrite(i) });
  });
  try {
    const toucher = startToucher(mapping, [3]);
    const tid = await toucher.tid;
    await waitFor(() => faults.length === 1, 5000, 'the fault event');
    await sleep(50);
    assert.equal(toucher.settled(), false, 'the thread went on without its page');
    assert.equal(faults[0].address, mapping.base + 3 * PAGE);
    assert.equal(faults[0].write, false);
    if (uffd.features.has('THREAD_ID')) assert.equal(faults[0].tid, tid, 'fault reports the faulting thread id');
    const page = patternImage(PAGE, 77);
    assert.equal(uffd.copy(mapping.address + 3n * BigInt(PAGE), page, PAGE), PAGE);
    const { words } = await toucher.done;
    assert.equal(words[0], new Int32Array(page.buffer)[0]);
    assert.deepEqual(mapping.bytes(3 * PAGE, PAGE), page);
    assert.equal(faults.length, 1);
    await toucher.worker.terminate();
  } finally {
    uffd.close();
    mapping.unmap();
  }
});

test('eight threads faulting on one page: one placement, every thread wakes', { skip: threadSkip(8) || featureSkip() }, async () => {
  const mapping = new Mapping(4 * PAGE);
  const uffd = openMissing();
  uffd.register(mapping.address, mapping.length, 'missing');
  let events = 0;
  const tids = new Set<number>();
  uffd.onEvents((batch) => {
    for (let i = 0; i < batch.count; i++) {
      events++;
      tids.add(batch.threadId(i));
    }
  });
  try {
    const touchers = Array.from({ length: 8 }, () => startToucher(mapping, [1]));
    const workerTids = await Promise.all(touchers.map((t) => t.tid));
    // every thread is blocked in the kernel when each has reported its own fault
    await waitFor(() => events === 8, 10000, 'eight fault events');
    await sleep(20);
    assert.ok(touchers.every((t) => !t.settled()), 'a thread went on without its page');
    if (uffd.features.has('THREAD_ID')) assert.deepEqual([...tids].sort(), [...workerTids].sort());
    const page = patternImage(PAGE, 5);
    uffd.copy(mapping.address + BigInt(PAGE), page, PAGE);
    const results = await Promise.all(touchers.map((t) => t.done));
    for (const r of results) assert.equal(r.words[0], new Int32Array(page.buffer)[0]);
    assert.equal(events, 8, 'no thread faulted again after the placement');
    await Promise.all(touchers.map((t) => t.worker.terminate()));
  } finally {
    uffd.close();
    mapping.unmap();
  }
});

const kinds: { name: string; options: MappingOptions; pages: number; skip: () => string | false }[] = [
  { name: 'anonymous', options: {}, pages: 256, skip: () => featureSkip() },
  { name: 'shared memfd', options: { shared: true }, pages: 256, skip: () => featureSkip('MISSING_SHMEM') },
  { name: 'hugetlb', options: { huge: true }, pages: 8 * 512, skip: () => featureSkip('MISSING_HUGETLBFS') || hugeSkip(8) },
];

for (const kind of kinds) {
  for (const resolution of ['copy', 'zeropage'] as Resolution[]) {
    for (const threads of [1, 2, 8]) {
      test(`${kind.name}: ${threads} thread(s) fault on every page, resolved by ${resolution}`, { skip: threadSkip(threads) || kind.skip() }, async () => {
        const length = kind.pages * PAGE;
        const mapping = new Mapping(length, kind.options);
        const uffd = openMissing();
        uffd.register(mapping.address, length, 'missing');
        const source = patternImage(length, threads);
        const server = new PageServer(uffd, mapping, resolution, source).start();
        try {
          const order = shuffled(kind.pages, threads * 7 + 1);
          const touchers = Array.from({ length: threads }, (_, t) =>
            startToucher(mapping, order.filter((_, i) => i % threads === t)));
          const results = await Promise.all(touchers.map((t) => t.done));
          const sourceWords = new Int32Array(source.buffer);
          touchers.forEach((_, t) => {
            const pages = order.filter((_, i) => i % threads === t);
            pages.forEach((page, i) => {
              const expected = resolution === 'copy' ? sourceWords[(page * PAGE) / 4] : 0;
              assert.equal(results[t].words[i], expected, `thread ${t} read page ${page}`);
            });
          });
          assert.deepEqual(server.errors, []);
          const hostPages = length / mapping.pageSize;
          assert.equal(server.placements, hostPages, 'each host page placed exactly once');
          assert.ok(server.faults >= hostPages);
          // byte for byte: everything the threads could see
          const expected = resolution === 'copy' ? source : new Uint8Array(length);
          assert.equal(Buffer.compare(mapping.bytes(), expected), 0, 'mapping differs from what was placed');
          await Promise.all(touchers.map((t) => t.worker.terminate()));
        } finally {
          server.stop();
          uffd.close();
          mapping.unmap();
        }
      });
    }
  }
}

test('one UFFDIO_COPY of 64 contiguous pages places all of them', { skip: featureSkip() }, async () => {
  const mapping = new Mapping(128 * PAGE);
  const uffd = openMissing();
  uffd.register(mapping.address, mapping.length, 'missing');
  let faults = 0;
  uffd.onEvents((batch) => (faults += batch.count));
  try {
    const run = patternImage(64 * PAGE, 9);
    assert.equal(uffd.copy(mapping.address + 16n * BigInt(PAGE), run, run.length), 64 * PAGE);
    assert.equal(uffd.lastCount, 64 * PAGE);
    const toucher = startToucher(mapping, Array.from({ length: 64 }, (_, i) => 16 + i));
    const { words } = await toucher.done;
    const runWords = new Int32Array(run.buffer);
    words.forEach((w, i) => assert.equal(w, runWords[(i * PAGE) / 4], `page ${16 + i}`));
    assert.equal(faults, 0, 'a placed page faulted');
    assert.deepEqual(mapping.bytes(16 * PAGE, 64 * PAGE), run);
    // the pages around the run are still missing: placing them works, re-placing fails
    assert.equal(uffd.tryCopy(mapping.base + 15 * PAGE, run, PAGE), PAGE);
    assert.equal(uffd.tryCopy(mapping.base + 16 * PAGE, run, PAGE), EEXIST);
    await toucher.worker.terminate();
  } finally {
    uffd.close();
    mapping.unmap();
  }
});
