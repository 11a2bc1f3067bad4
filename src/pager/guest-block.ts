// Guest memory as every pager sees it: a RamBlock whose host is a Mapping of this process,
// and the userfaultfd that serves MISSING faults on such blocks.
import { Userfaultfd, hasFeatures, type Feature, type Mapping } from '../kernel/index.js';
import type { RamBlock } from '../memory/index.js';

export type GuestBlock = RamBlock<Mapping>;

/**
 * A userfaultfd that can serve MISSING faults on these blocks: what their memory needs, thread
 * ids for blocktime, and POISON for a failure (see endGuestSurely) where the kernel has them.
 */
export function openForMissing(blocks: Iterable<GuestBlock>): Userfaultfd {
  const needs = new Set<Feature>();
  for (const block of blocks) {
    if (block.host!.huge) needs.add('MISSING_HUGETLBFS');
    else if (block.host!.shared) needs.add('MISSING_SHMEM');
  }
  if (hasFeatures('THREAD_ID')) needs.add('THREAD_ID');
  if (hasFeatures('POISON')) needs.add('POISON');
  return Userfaultfd.open({ features: [...needs] });
}
