// Every dirty log kind, forced: a sync reports exactly the pages a worker thread wrote since the
// previous one, whatever the kernel. A kind the kernel does not offer skips, saying why.
import test from 'node:test';
import assert from 'node:assert/strict';
import { release } from 'node:os';
import { Mapping, probeFeatures } from '../../src/kernel/index.js';
import { DIRTY_LOG_KINDS, dirtyLogKinds, type DirtyLogKind } from '../../src/outgoing/index.js';
import { startPageWriter } from '../support/writer.js';
import { createDirtyLog } from '../../src/outgoing/dirty-log.js';

const PAGES = 64;
const offered = probeFeatures().available ? dirtyLogKinds([{ shared: false, huge: false }]) : [];

function skipUnless(kind: DirtyLogKind): string | false {
  if (offered.includes(kind)) return false;
  const why: Record<DirtyLogKind, string> = {
    'pagemap-scan': 'needs WP_ASYNC, WP_UNPOPULATED and PAGEMAP_SCAN (6.7+)',
    'uffd-wp': 'needs PAGEFAULT_FLAG_WP (5.7+)',
    'soft-dirty': 'needs soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)',
  };
  return `kernel ${release()} does not offer the ${kind} dirty log: it ${why[kind]}`;
}

for (const kind of DIRTY_LOG_KINDS) {
  test(`dirty log ${kind}: each sync reports exactly the pages written since the last one`, { skip: skipUnless(kind), timeout: 60_000 }, async () => {
    const mapping = new Mapping(PAGES * 4096);
    const writer = startPageWriter(mapping);
    let dirty = new Set<number>();
    const log = createDirtyLog([{
      mapping,
      onDirty: (offset, length) => {
        for (let p = offset / 4096; p < (offset + length) / 4096; p++) dirty.add(p);
      },
    }], kind, (critical) => critical()); // the writer is idle during every sync
    const sync = (final = false) => {
      dirty = new Set();
      log.sync({ final });
      return [...dirty].sort((a, b) => a - b);
    };
    try {
      log.start();
      assert.equal(log.kind, kind);
      assert.deepEqual(sync(), [], 'nothing written since start');
      await writer.write([1, 2, 3, 10, 63]);
      assert.deepEqual(sync(), [1, 2, 3, 10, 63]);
      await writer.write([2, 40]);
      assert.deepEqual(sync(), [2, 40], 'only what was written since the previous sync');
      assert.deepEqual(sync(), [], 'nothing written');
      await writer.write([0, 5, 6]);
      assert.deepEqual(sync(true), [0, 5, 6], 'the final sync');
    } finally {
      log.stop();
      await writer.close();
      mapping.unmap();
    }
  });
}

test('a dirty log the kernel cannot give for this memory is refused, naming it and what is offered', () => {
  const mapping = new Mapping(4096);
  try {
    const missing = DIRTY_LOG_KINDS.find((k) => !offered.includes(k));
    if (missing) assert.throws(() => createDirtyLog([{ mapping, onDirty: () => undefined }], missing, (c) => c()), new RegExp(`dirty log ${missing}: not possible .* \\(offered: `));
    if (offered.includes('soft-dirty')) {
      assert.throws(() => createDirtyLog([{ mapping, onDirty: () => undefined }], 'soft-dirty'), /soft-dirty: .* needs holdGuest/);
    }
  } finally {
    mapping.unmap();
  }
});
