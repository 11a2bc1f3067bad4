// The ordered set of blocks that migrate, looked up by idstr.
import type { RamBlock } from './ramblock.js';

export class RamList<H = unknown> implements Iterable<RamBlock<H>> {
  readonly #blocks: RamBlock<H>[] = [];
  readonly #byId = new Map<string, RamBlock<H>>();

  constructor(blocks: Iterable<RamBlock<H>> = []) {
    for (const block of blocks) this.add(block);
  }

  add(block: RamBlock<H>): this {
    if (this.#byId.has(block.idstr)) throw new RangeError(`RamList: a block named '${block.idstr}' is already listed`);
    this.#blocks.push(block);
    this.#byId.set(block.idstr, block);
    return this;
  }

  byId(idstr: string): RamBlock<H> | undefined {
    return this.#byId.get(idstr);
  }

  has(idstr: string): boolean {
    return this.#byId.has(idstr);
  }

  /** Blocks in the order they were added (the order they go on the wire). */
  get blocks(): readonly RamBlock<H>[] {
    return this.#blocks;
  }

  get size(): number {
    return this.#blocks.length;
  }

  /** Sum of used lengths: the total a MEM_SIZE record carries. */
  get totalBytes(): number {
    let total = 0;
    for (const block of this.#blocks) total += block.usedLength;
    return total;
  }

  /** OR of every block's page size: what POSTCOPY_ADVISE carries (QEMU's page size summary). */
  get pageSizeSummary(): number {
    let summary = 0;
    for (const block of this.#blocks) summary |= block.pageSize; // page sizes are <= 2^30: no sign trouble
    return summary;
  }

  [Symbol.iterator](): Iterator<RamBlock<H>> {
    return this.#blocks[Symbol.iterator]();
  }
}
