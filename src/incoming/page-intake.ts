// Pages that arrive on the main and preempt channels. Before LISTEN they are plain writes
// (PrecopyWriter). From LISTEN on they are placed atomically: contiguous 4 KiB pages of one
// read go as one run (one UFFDIO_COPY, or UFFDIO_ZEROPAGE for zero pages), and the target pages
// of a huge page are assembled per channel and placed whole. A page a thread waits for is never
// held back: the run is placed as soon as it holds one.
import { TARGET_PAGE_SIZE } from '../base/index.js';
import type { Channel } from '../transport/index.js';
import { HugePageAssembler, PrecopyWriter, type GuestBlock, type PagePlacer } from '../pager/index.js';

/** Most 4 KiB pages placed by one UFFDIO_COPY. */
const RUN_PAGES = 16;

export interface IntakeCounts {
  precopy: number;
  zero: number;
  duplicate: number;
}

export class PageIntake {
  private writer: PrecopyWriter | undefined;
  /** Each block's index for the writer (blocks may be allocated on MEM_SIZE, so taken at the first write). */
  private readonly writerIndex = new Map<GuestBlock, number>();
  private placer: PagePlacer<GuestBlock> | undefined;
  private readonly assemblers = new Map<Channel, HugePageAssembler>();
  private readonly run = { block: undefined as GuestBlock | undefined, offset: 0, length: 0, zero: false, buffer: new Uint8Array(RUN_PAGES * TARGET_PAGE_SIZE) };

  constructor(
    private readonly blocks: Iterable<GuestBlock>,
    private readonly counts: IntakeCounts,
    /** Whether a guest thread waits for the host page holding `offset`. */
    private readonly isWaiting: (block: GuestBlock, offset: number) => boolean,
  ) {}

  /** ADVISE: placements have their userfaultfd. */
  advise(placer: PagePlacer<GuestBlock>): void {
    this.placer = placer;
  }

  /** LISTEN: the blocks are registered; no plain write from here on. */
  listen(): void {
    this.writer?.close();
    this.writer = undefined;
  }

  /** A page (null: a zero page); `atomic` from LISTEN on. */
  receive(channel: Channel, block: GuestBlock, offset: number, data: Uint8Array | null, atomic: boolean): void {
    if (!data) this.counts.zero++;
    if (!atomic) return this.writePrecopy(block, offset, data);
    if (block.pageSize === TARGET_PAGE_SIZE) {
      if (block.isReceived(offset)) this.counts.duplicate++;
      else this.addToRun(block, offset, data);
      return;
    }
    let assembler = this.assemblers.get(channel);
    if (!assembler) this.assemblers.set(channel, (assembler = new HugePageAssembler(channel.name, block.pageSize)));
    if (!assembler.add(block, offset, data)) return;
    const hostOffset = assembler.hostOffset;
    if (block.isHostPageReceived(hostOffset)) this.counts.duplicate += block.pageSize / TARGET_PAGE_SIZE;
    else this.placer!.place(block, hostOffset, assembler.allZero ? null : assembler.buffer);
    assembler.reset();
  }

  /** Places the pending run. Commands are ordering points: pages before them are placed first. */
  flush(): void {
    const run = this.run;
    if (!run.length) return;
    const length = run.length;
    run.length = 0;
    this.placer!.place(run.block!, run.offset, run.zero ? null : run.buffer, length);
  }

  /** A broken connection: half-assembled huge pages are dropped (the source sends them again). */
  dropAssemblies(): void {
    for (const assembler of this.assemblers.values()) assembler.reset();
    this.assemblers.clear();
  }

  close(): void {
    this.writer?.close();
    this.writer = undefined;
  }

  private addToRun(block: GuestBlock, offset: number, data: Uint8Array | null): void {
    const run = this.run;
    const zero = data === null;
    if (run.length && (run.block !== block || run.offset + run.length !== offset || run.zero !== zero || run.length === run.buffer.length)) this.flush();
    if (!run.length) {
      run.block = block;
      run.offset = offset;
      run.zero = zero;
    }
    if (data) run.buffer.set(data, run.length);
    run.length += TARGET_PAGE_SIZE;
    if (this.isWaiting(block, offset)) this.flush();
  }

  private writePrecopy(block: GuestBlock, offset: number, data: Uint8Array | null): void {
    const writer = (this.writer ??= this.openWriter());
    const index = this.writerIndex.get(block)!;
    if (data) writer.write(index, offset, data, 0, TARGET_PAGE_SIZE);
    else writer.writeZeros(index, offset, TARGET_PAGE_SIZE);
    block.markReceived(offset, TARGET_PAGE_SIZE);
    this.counts.precopy++;
  }

  private openWriter(): PrecopyWriter {
    const blocks = [...this.blocks];
    blocks.forEach((b, i) => this.writerIndex.set(b, i));
    return new PrecopyWriter(blocks.map((b) => ({ address: b.host!.base, length: b.host!.length })));
  }
}
