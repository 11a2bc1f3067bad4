// Atomic placement of whole host pages into registered blocks. EEXIST means the page is
// already there (placed by another channel, or a request raced the stream): never data loss.
import { Userfaultfd, errnoError, hasFeatures, type Feature, type Mapping } from '../kernel/index.js';
import { type RamBlock } from '../memory/index.js';
import { EAGAIN, EEXIST, hex, TARGET_PAGE_SIZE } from '../base/index.js';

const MAX_EAGAIN_RETRIES = 1000;

/** A placement call, again while the kernel says EAGAIN (the address space was changing), within a bound. */
export function retryOnEagain(call: () => number): number {
  let status: number;
  let tries = 0;
  do status = call();
  while (status === EAGAIN && ++tries < MAX_EAGAIN_RETRIES);
  return status;
}

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

export class PagePlacer {
  /** Pages the kernel already had when we placed them (EEXIST). */
  alreadyPresent = 0;
  private zeroHugePage: Uint8Array | undefined;

  constructor(
    private readonly uffd: Userfaultfd,
    /**
     * Called after the received bits are set, to end the waits of the threads behind them;
     * `fresh`: target pages whose bit this placement set (the others were received already).
     */
    private readonly onPlaced: (block: GuestBlock, offset: number, length: number, fresh: number) => void,
  ) {}

  /** Places one host page from `src` (at `srcOffset`), or zeros when `src` is null. */
  place(block: GuestBlock, hostOffset: number, src: Uint8Array | null, srcOffset = 0): void {
    const mapping = block.host!;
    const address = mapping.base + hostOffset;
    const size = block.pageSize;
    const status = retryOnEagain(() => {
      if (src) return this.uffd.tryCopy(address, src, size, 0, srcOffset);
      if (size === TARGET_PAGE_SIZE) return this.uffd.tryZeropage(address, size);
      return this.uffd.tryCopy(address, (this.zeroHugePage ??= new Uint8Array(size)), size);
    });
    if (status === EEXIST) this.alreadyPresent++;
    else if (status < 0) throw errnoError(status, src || size !== TARGET_PAGE_SIZE ? 'ioctl(UFFDIO_COPY)' : 'ioctl(UFFDIO_ZEROPAGE)', `block '${block.idstr}' offset ${hex(hostOffset)} length ${size}`);
    this.onPlaced(block, hostOffset, size, block.markReceived(hostOffset, size));
  }

  /**
   * Places a run of contiguous 4 KiB pages with one ioctl: copied from `src`, or zeros when
   * `src` is null. A page in the run that is already present stops the kernel there; the rest
   * is placed page by page.
   */
  placeRun(block: GuestBlock, offset: number, src: Uint8Array | null, length: number): void {
    const address = block.host!.base + offset;
    const status = src ? this.uffd.tryCopy(address, src, length) : this.uffd.tryZeropage(address, length);
    const done = status < 0 ? this.uffd.lastCount : length;
    if (done > 0) this.onPlaced(block, offset, done, block.markReceived(offset, done));
    for (let at = done; at < length; at += TARGET_PAGE_SIZE) this.place(block, offset + at, src, at);
  }
}
