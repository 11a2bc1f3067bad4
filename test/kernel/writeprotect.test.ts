// Write-protect faults: the handler saves the old contents, then un-protects; the saved copy
// must equal the page as it was before the write.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Mapping, Userfaultfd, type Feature } from '../../src/kernel/index.js';
import { patternImage } from '../support/serve.js';
import { featureSkip } from '../support/hugepages.js';
import { sleep, startToucher, waitFor } from '../support/threads.js';

const PAGE = 4096;

async function writeProtectCase(options: { populate: boolean; features: Feature[] }) {
  const pages = 32;
  const mapping = new Mapping(pages * PAGE);
  const image = patternImage(mapping.length, 3);
  if (options.populate) mapping.bytes().set(image);
  const before = options.populate ? image : new Uint8Array(mapping.length);
  const uffd = Userfaultfd.open({ features: options.features });
  const saved = new Map<number, Uint8Array>();
  const faults: { page: number; wp: boolean; write: boolean }[] = [];
  let release = () => {};
  const released = new Promise<void>((r) => (release = r));
  try {
    const ioctls = uffd.register(mapping.address, mapping.length, 'wp');
    assert.ok(ioctls.has('WRITEPROTECT'), `ioctls ${[...ioctls]}`);
    uffd.writeProtect(mapping.address, mapping.length);
    uffd.onEvents((batch) => {
      for (let i = 0; i < batch.count; i++) {
        const page = Math.floor((batch.address(i) - mapping.base) / PAGE);
        faults.push({ page, wp: batch.isWriteProtect(i), write: batch.isWrite(i) });
        // save first (the page still holds its old contents), un-protect once the test says so
        saved.set(page, mapping.bytes(page * PAGE, PAGE).slice());
        released.then(() => uffd.unprotect(mapping.base + page * PAGE, PAGE));
      }
    });
    const writer = startToucher(mapping, [2, 9], { write: true, value: 0x7e57 });
    await waitFor(() => faults.length === 1, 5000, 'the write-protect fault');
    await sleep(50);
    assert.equal(writer.settled(), false, 'the writer went on through a write-protected page');
    assert.deepEqual(faults[0], { page: 2, wp: true, write: true });
    release();
    const { words } = await writer.done;
    assert.deepEqual(words, [0x7e57, 0x7e57]);
    assert.deepEqual(faults.map((f) => f.page), [2, 9]);
    for (const page of [2, 9]) {
      assert.deepEqual(saved.get(page), before.subarray(page * PAGE, (page + 1) * PAGE), `saved copy of page ${page}`);
      const now = mapping.bytes(page * PAGE, PAGE);
      assert.equal(new Int32Array(now.buffer, now.byteOffset, 1)[0], 0x7e57);
      assert.deepEqual(now.subarray(4), before.subarray(page * PAGE + 4, (page + 1) * PAGE), 'rest of the page unchanged');
    }
    // reads never fault on write-protected memory
    const reader = startToucher(mapping, [3, 4, 5]);
    await reader.done;
    assert.equal(faults.length, 2);
    await Promise.all([writer.worker.terminate(), reader.worker.terminate()]);
  } finally {
    uffd.close();
    mapping.unmap();
  }
}

test('write-protect on populated memory: a writer blocks, the old page is saved, then it goes on',
  { skip: featureSkip('PAGEFAULT_FLAG_WP') },
  () => writeProtectCase({ populate: true, features: ['PAGEFAULT_FLAG_WP'] }));

test('write-protect with WP_UNPOPULATED: never-touched pages are protected too, and save as zeros',
  { skip: featureSkip('PAGEFAULT_FLAG_WP', 'WP_UNPOPULATED') },
  () => writeProtectCase({ populate: false, features: ['PAGEFAULT_FLAG_WP', 'WP_UNPOPULATED'] }));

test('without WP_UNPOPULATED an unpopulated page is not protected: the write goes straight through',
  { skip: featureSkip('PAGEFAULT_FLAG_WP') }, async () => {
    const mapping = new Mapping(8 * PAGE);
    const uffd = Userfaultfd.open({ features: ['PAGEFAULT_FLAG_WP'] });
    let faults = 0;
    try {
      uffd.register(mapping.address, mapping.length, 'wp');
      uffd.writeProtect(mapping.address, mapping.length);
      uffd.onEvents((batch) => (faults += batch.count));
      const writer = startToucher(mapping, [1], { write: true, value: 5 });
      assert.deepEqual((await writer.done).words, [5]);
      assert.equal(faults, 0);
      await writer.worker.terminate();
    } finally {
      uffd.close();
      mapping.unmap();
    }
  });
