// Precopy pages are plain writes into memory nobody is registered on yet. They go through
// /proc/self/mem (SelfMemory): the kernel faults the pages in itself, one system call per run,
// where stores from JavaScript would take a page fault per fresh 4 KiB page (see bench/README:
// ten times the copy on a virtual host). Where /proc/self/mem cannot be opened, views
// of the blocks take the stores. A zero page is written only where memory is not zero already,
// so untouched memory stays unallocated. The main thread and bulk workers write the same way.
import { TARGET_PAGE_SIZE } from '../base/index.js';
import { SelfMemory, attachMapping } from '../kernel/index.js';
import { ZERO_PAGE, isZero } from '../memory/index.js';

/** A block as a writer needs it: where it is, and how long. Plain data: a worker gets it too. */
export interface WritableBlock {
  address: number;
  length: number;
}

/** The largest zero run checked at once (a bulk packet's worth). */
const ZERO_CHECK_BYTES = 512 * TARGET_PAGE_SIZE;

export class PrecopyWriter {
  private selfMemory: SelfMemory | undefined = SelfMemory.open();
  private readonly views: (Buffer | undefined)[];
  private zeroCheck: Uint8Array | undefined;

  constructor(private readonly blocks: readonly WritableBlock[]) {
    this.views = blocks.map(() => undefined);
  }

  /** Copies `length` bytes of `src` from `srcOffset` to `offset` in block `block`. */
  write(block: number, offset: number, src: Uint8Array, srcOffset: number, length: number): void {
    const b = this.blocks[block];
    if (this.selfMemory) return this.selfMemory.write(b.address + offset, src, srcOffset, length);
    this.view(block).set(src.subarray(srcOffset, srcOffset + length), offset);
  }

  /** Zeros [offset, offset + length), page by page where a page is not zero already. */
  writeZeros(block: number, offset: number, length: number): void {
    for (let done = 0; done < length; done += ZERO_CHECK_BYTES) {
      const chunk = Math.min(ZERO_CHECK_BYTES, length - done);
      const { bytes, at } = this.read(block, offset + done, chunk);
      for (let page = 0; page < chunk; page += TARGET_PAGE_SIZE) {
        if (!isZero(bytes, at + page, TARGET_PAGE_SIZE)) this.write(block, offset + done + page, ZERO_PAGE, 0, TARGET_PAGE_SIZE);
      }
    }
  }

  /** Plain writes end (the blocks are about to be registered): descriptors and views go. */
  close(): void {
    this.selfMemory?.close();
    this.selfMemory = undefined;
    this.views.fill(undefined);
  }

  /** What [offset, offset + length) holds now, read without allocating untouched memory. */
  private read(block: number, offset: number, length: number): { bytes: Uint8Array; at: number } {
    if (!this.selfMemory) return { bytes: this.view(block), at: offset };
    const bytes = (this.zeroCheck ??= new Uint8Array(ZERO_CHECK_BYTES));
    this.selfMemory.read(this.blocks[block].address + offset, bytes, 0, length);
    return { bytes, at: 0 };
  }

  private view(block: number): Buffer {
    const b = this.blocks[block];
    return (this.views[block] ??= Buffer.from(attachMapping(BigInt(b.address), b.length)));
  }
}
