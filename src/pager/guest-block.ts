// Guest memory as every pager sees it: a RamBlock whose host is where its memory is, either a
// Mapping of this process or a region of a VMM's address space (page server), and the
// userfaultfd that serves MISSING faults on this process's blocks.
import { Mapping, Userfaultfd, hasFeatures, type Feature } from '../kernel/index.js';
import { TARGET_PAGE_SIZE } from '../base/index.js';
import type { RamBlock } from '../memory/index.js';

/** Where a block's memory is: its first address and its length. */
export interface HostRange {
  readonly base: number;
  readonly length: number;
}

/** A block of whatever address space the pager serves. */
export type PagerBlock = RamBlock<HostRange>;

/** A block of this process's memory. */
export type GuestBlock = RamBlock<Mapping>;

/**
 * A userfaultfd that can serve MISSING faults on these blocks: what their memory needs, thread
 * ids for blocktime, and POISON for a failure (see endGuestSurely) where the kernel has them.
 * It has registered and unregistered one scratch page: a process's first UFFDIO_REGISTER costs
 * 0.3-0.5 ms more than the next ones (measured here: the kernel's and cold code's first time),
 * and a migration opens this at ADVISE, so that LISTEN, inside the guest's downtime, pays only
 * its own.
 */
export function openForMissing(blocks: Iterable<GuestBlock>): Userfaultfd {
  const needs = new Set<Feature>();
  for (const block of blocks) {
    if (block.host!.huge) needs.add('MISSING_HUGETLBFS');
    else if (block.host!.shared) needs.add('MISSING_SHMEM');
  }
  if (hasFeatures('THREAD_ID')) needs.add('THREAD_ID');
  if (hasFeatures('POISON')) needs.add('POISON');
  const uffd = Userfaultfd.open({ features: [...needs] });
  const scratch = new Mapping(TARGET_PAGE_SIZE);
  try {
    uffd.register(scratch.address, scratch.length, 'missing');
    uffd.unregister(scratch.address, scratch.length);
  } finally {
    scratch.unmap();
  }
  return uffd;
}

/** Where a sequential prefetch is: a block and a host page of it. */
export interface PrefetchCursor {
  block: number;
  page: number;
}

/**
 * Moves `cursor` to the first host page not yet received, from where it stands across the
 * blocks in order; false once every page of every block is there.
 */
export function nextMissingPage(blocks: readonly RamBlock<unknown>[], cursor: PrefetchCursor): boolean {
  for (; cursor.block < blocks.length; cursor.block++, cursor.page = 0) {
    const block = blocks[cursor.block];
    const perPage = block.pageSize / TARGET_PAGE_SIZE;
    const missing = block.receivedMap.findNextZero(cursor.page * perPage);
    if (missing < block.receivedMap.size) {
      cursor.page = Math.floor(missing / perPage);
      return true;
    }
  }
  return false;
}
