// One huge page assembled per channel (QEMU's PostcopyTmpPage): the target pages of a huge
// host page are gathered here and placed in one atomic UFFDIO_COPY once all have arrived. A
// host page is never split across channels, so a target page of another host page arriving
// before this one is complete is a protocol error.
import { ProtocolError, TARGET_PAGE_SIZE, hex } from '../base/index.js';

/** What the assembler needs to know of a block. */
export interface HugePageBlock {
  readonly idstr: string;
  readonly pageSize: number;
}

export class HugePageAssembler {
  readonly buffer: Uint8Array;
  block: HugePageBlock | undefined;
  /** Offset in the block of the host page being gathered. */
  hostOffset = 0;
  targetPages = 0;
  allZero = true;
  /** Which target pages of the host page have arrived: a duplicate must not complete it early. */
  private readonly seen: Uint8Array;

  constructor(readonly channel: string, maxPageSize: number) {
    this.buffer = new Uint8Array(maxPageSize);
    this.seen = new Uint8Array(maxPageSize / TARGET_PAGE_SIZE);
  }

  /**
   * Adds one target page (data, or null for a zero page). Returns true when the host page is
   * complete and ready to place.
   */
  add(block: HugePageBlock, offset: number, data: Uint8Array | null): boolean {
    const hostOffset = offset - (offset % block.pageSize);
    if (this.targetPages === 0) {
      this.block = block;
      this.hostOffset = hostOffset;
      this.allZero = true;
    } else if (this.block !== block || this.hostOffset !== hostOffset) {
      throw new ProtocolError(
        `non-same host page on channel ${this.channel}: gathering block '${this.block!.idstr}' host page ${hex(this.hostOffset)} ` +
          `(${this.targetPages} of ${this.block!.pageSize / TARGET_PAGE_SIZE} target pages), received block '${block.idstr}' offset ${hex(offset)}`,
      );
    }
    const at = offset - hostOffset;
    const index = at / TARGET_PAGE_SIZE;
    if (this.seen[index]) {
      throw new ProtocolError(`target page at offset ${hex(offset)} of block '${block.idstr}' sent twice within host page ${hex(hostOffset)} on channel ${this.channel}`);
    }
    this.seen[index] = 1;
    if (data) {
      this.buffer.set(data, at);
      this.allZero = false;
    } else {
      this.buffer.fill(0, at, at + TARGET_PAGE_SIZE);
    }
    this.targetPages++;
    return this.targetPages === block.pageSize / TARGET_PAGE_SIZE;
  }

  reset(): void {
    if (this.block) this.seen.fill(0, 0, this.block.pageSize / TARGET_PAGE_SIZE);
    this.targetPages = 0;
    this.block = undefined;
    this.allZero = true;
  }
}
