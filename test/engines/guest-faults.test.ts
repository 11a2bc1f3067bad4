// The reference guest on real userfaultfd memory: its threads fault on missing pages, the
// main thread serves every fault (by copy from a source image, or as zero pages), and the
// guest's own verifier finds every page and the ledger intact.
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { Mapping, Userfaultfd, hasFeatures, type MappingOptions } from '../../src/index.js';
import { PageServer, type Resolution } from '../support/serve.js';
import { featureSkip, hugeSkip } from '../support/hugepages.js';
import { Guest, type GuestMemory } from '../../src/testing/index.js';

after(() => Guest.terminateAll());

const kinds: { name: string; options: MappingOptions; length: number; skip: () => string | false }[] = [
  { name: 'anonymous', options: {}, length: 1 << 20, skip: () => featureSkip() },
  { name: 'shared memfd', options: { shared: true }, length: 1 << 20, skip: () => featureSkip('MISSING_SHMEM') },
  { name: 'hugetlb', options: { huge: true }, length: 8 << 20, skip: () => featureSkip('MISSING_HUGETLBFS') || hugeSkip(4) },
];

/** A source image where a guest has run: pages at many versions, ledger filled in. */
async function sourceImage(length: number, threads: number): Promise<{ image: Uint8Array; writes: number }> {
  const buffer = new SharedArrayBuffer(length);
  const guest = await Guest.start({ memory: { kind: 'shared', buffer }, threads, pattern: 'random', seed: threads });
  await guest.runOps(300);
  await guest.stop();
  return { image: new Uint8Array(buffer), writes: guest.stats().ledgerWrites };
}

for (const kind of kinds) {
  for (const resolution of ['copy', 'zeropage'] as Resolution[]) {
    for (const threads of [1, 2, 8]) {
      test(`guest on ${kind.name} memory, ${threads} thread(s), faults resolved by ${resolution}: verifies clean`,
        { skip: kind.skip(), timeout: 60_000 }, async () => {
          const source = resolution === 'copy' ? await sourceImage(kind.length, threads) : undefined;
          const mapping = new Mapping(kind.length, kind.options);
          const uffd = Userfaultfd.open({ features: hasFeatures('THREAD_ID') ? ['THREAD_ID'] : [] });
          uffd.register(mapping.address, mapping.length, 'missing');
          const server = new PageServer(uffd, mapping, resolution, source?.image).start();
          const memory: GuestMemory = { kind: 'mapping', ...mapping.descriptor };
          try {
            // copy: fresh threads resume the source's workload from memory alone;
            // zeropage: a new guest starts on blank memory (its ledger page faults first)
            const guest = source
              ? await Guest.resumeFrom({ memory })
              : await Guest.start({ memory, threads, pattern: 'random', seed: 7 });
            await guest.runOps(200);
            await guest.stop();
            assert.deepEqual(guest.errors, []);
            const stats = guest.stats();
            assert.equal(stats.errors, 0, 'readers saw bad pages');
            const report = await guest.verify({ expectWrites: stats.ledgerWrites });
            assert.ok(report.ok, `verify: ${report.firstBad?.reason}`);
            if (source) assert.ok(stats.ledgerWrites >= source.writes + 200, 'the resumed guest carried on from the ledger');
            assert.deepEqual(server.errors, []);
            assert.ok(server.faults > 0 && server.placements > 0, 'the guest really faulted');
            // on 4 KiB pages each writer faults on its own pages; a 2 MiB page is shared by all
            const faulters = mapping.huge ? 1 : threads;
            if (uffd.features.has('THREAD_ID')) assert.ok(server.threadIds.size >= faulters, `faults from ${server.threadIds.size} threads`);
            // the verifier ran in a worker and faulted in what the workload had not touched:
            // now every host page is placed exactly once
            assert.equal(server.placements, mapping.length / mapping.pageSize);
          } finally {
            server.stop();
            uffd.close();
            mapping.unmap();
          }
        });
    }
  }
}
