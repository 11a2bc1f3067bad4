// The async dirty log: WP_ASYNC + PAGEMAP_SCAN report exactly the pages written, and re-arm.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Mapping, PagemapScanner, Userfaultfd } from '../../src/kernel/index.js';
import { featureSkip } from '../support/hugepages.js';
import { startToucher } from '../support/threads.js';

const PAGE = 4096;

test('WP_ASYNC + PAGEMAP_SCAN: written pages are reported once, then protected again',
  { skip: featureSkip('PAGEFAULT_FLAG_WP', 'WP_ASYNC', 'WP_UNPOPULATED') }, async () => {
    const mapping = new Mapping(64 * PAGE);
    const uffd = Userfaultfd.open({ features: ['PAGEFAULT_FLAG_WP', 'WP_ASYNC', 'WP_UNPOPULATED'] });
    const scanner = new PagemapScanner(4);
    let faults = 0;
    try {
      uffd.register(mapping.address, mapping.length, 'wp');
      uffd.writeProtect(mapping.address, mapping.length);
      uffd.onEvents((batch) => (faults += batch.count));
      const scan = () => {
        const pages: number[] = [];
        scanner.scanWritten(mapping.base, mapping.base + mapping.length, (s, e) => {
          for (let a = s; a < e; a += PAGE) pages.push((a - mapping.base) / PAGE);
        });
        return pages;
      };
      assert.deepEqual(scan(), []);
      // more regions than the scanner's capacity of 4: the walk continues where it stopped
      const written = [3, 7, 8, 9, 20, 40, 41, 63];
      const writer = startToucher(mapping, written, { write: true, value: 1 });
      await writer.done;
      assert.deepEqual(scan(), written);
      assert.deepEqual(scan(), [], 'the scan write-protected the pages again');
      const again = startToucher(mapping, [8], { write: true, value: 2 });
      await again.done;
      assert.deepEqual(scan(), [8]);
      assert.equal(faults, 0, 'async write-protect never raises a fault event');
      await Promise.all([writer.worker.terminate(), again.worker.terminate()]);
    } finally {
      scanner.close();
      uffd.close();
      mapping.unmap();
    }
  });
