// The destination's side of the switchover's memory work: transparent huge pages off before
// the first precopy page, and discards of pages that changed on the source after they were sent.
import type { GuestBlock } from '../pager/index.js';

/**
 * No transparent huge pages, from before the first precopy page: a page written in precopy
 * would otherwise bring in a whole 2 MiB of zeros around it (THP "always", e.g. Debian's
 * kernels), present at LISTEN, so the pages there never fault and stay zero (or stale after a
 * discard). And a discard must drop 4 KiB.
 */
export function noTransparentHugePages(blocks: Iterable<GuestBlock>): void {
  for (const block of blocks) {
    const mapping = block.host!;
    if (!mapping.huge && !mapping.shared) mapping.madvise(0, mapping.length, 'nohugepage');
  }
}

/**
 * Drops the ranges' pages (one process_madvise per 1024 ranges where the kernel allows, so one
 * TLB flush per batch, not per range) and clears their received bits: they fault again and
 * come again. Returns the system calls made.
 */
export function discardRanges(block: GuestBlock, ranges: readonly (readonly [number, number])[]): number {
  const syscalls = block.host!.discardRanges(ranges);
  for (const [offset, length] of ranges) block.clearReceived(offset, length);
  return syscalls;
}
