// One bulk channel of the source, on its own worker thread: it looks at the pages the main
// thread hands it (zero pages go as offsets only) and writes the packets, the page data
// straight from guest memory. The main thread decides which pages go (the dirty bitmap lives
// there); this thread does the rest, so the source's main thread is not the bound. A packet is
// two native calls (kernel/page-io.ts): no page's bytes pass through JavaScript. A page the
// guest writes after it was looked at goes as it is then: the dirty log has it dirty again
// (in postcopy the source's guest is paused).
import { parentPort, workerData } from 'node:worker_threads';
import { attachMapping } from '../kernel/mapping.js';
import { markZeroPages, writeRuns } from '../kernel/page-io.js';
import { BulkFlag, MAX_PACKET_PAGES, encodeBulkHeader } from '../wire/bulk-packet.js';
import type { BulkSenderTask, FromBulkSender, ToBulkSender } from './bulk-protocol.js';
import { channelClosedMessage } from '../transport/channel.js';
import { TARGET_PAGE_SIZE } from '../base/index.js';

/** Target pages in one packet of a 4 KiB block (a huge page's packet holds that page). */
const PACKET_PAGES = 128;
/** A packet without pages: its header alone. */
const NO_RUNS = new Float64Array(0);
const NO_MEMORY = Buffer.alloc(0);

class BulkSender {
  private readonly memory: Buffer[];
  private number = 0;
  private lastWriteAt = Date.now();
  private done = false;
  private readonly heartbeat: NodeJS.Timeout;
  /** One packet's byte offsets and runs (offset, length pairs), reused: nothing is allocated per page. */
  private readonly offsets = new Float64Array(MAX_PACKET_PAGES);
  private readonly runs = new Float64Array(2 * MAX_PACKET_PAGES);

  constructor(private readonly task: BulkSenderTask) {
    this.memory = task.blocks.map((b) => Buffer.from(attachMapping(BigInt(b.address), b.length)));
    // idle, a heartbeat: the destination sees the channel alive, and this side a peer that went
    // (nothing is read here: the destination sends nothing on a bulk channel)
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastWriteAt >= task.heartbeatMs) this.writeHeader(encodeBulkHeader({ number: this.number++ }));
    }, task.heartbeatMs / 2);
    parentPort!.on('message', (m: ToBulkSender) => this.command(m));
  }

  private command(m: ToBulkSender): void {
    if (this.done) return;
    if (m.type === 'pages') return this.sendPages(m.block, m.pages, m.untouched);
    this.writeHeader(encodeBulkHeader({ flags: m.type === 'sync' ? BulkFlag.SYNC : BulkFlag.END, number: this.number++ }));
    if (m.type === 'end' && !this.done) {
      this.close();
      this.post({ type: 'ended' });
    }
  }

  private sendPages(blockIndex: number, pages: Float64Array, untouched: Uint8Array): void {
    const block = this.task.blocks[blockIndex];
    const perPacket = Math.max(PACKET_PAGES, block.pageSize / TARGET_PAGE_SIZE);
    for (let first = 0; first < pages.length && !this.done; first += perPacket) {
      const end = Math.min(first + perPacket, pages.length);
      this.sendPacket(blockIndex, pages.subarray(first, end), untouched.subarray(first, end));
    }
  }

  /**
   * One packet in two native calls: which pages are zero (`untouched` ones are, unread), then
   * its header and the normal pages written straight from guest memory, a run of contiguous
   * pages as one piece. Fresh buffers are not free: on a virtual machine the first touch of a
   * page can cost a host fault.
   */
  private sendPacket(blockIndex: number, pages: Float64Array, zero: Uint8Array): void {
    const memory = this.memory[blockIndex];
    const offsets = this.offsets.subarray(0, pages.length);
    for (let i = 0; i < pages.length; i++) offsets[i] = pages[i] * TARGET_PAGE_SIZE;
    const zeroCount = markZeroPages(memory, offsets, TARGET_PAGE_SIZE, zero);
    const normal = new Float64Array(pages.length - zeroCount);
    const zeros = new Float64Array(zeroCount);
    let runValues = 0;
    for (let i = 0, n = 0, z = 0; i < offsets.length; i++) {
      if (zero[i]) {
        zeros[z++] = offsets[i];
        continue;
      }
      normal[n++] = offsets[i];
      if (runValues && this.runs[runValues - 2] + this.runs[runValues - 1] === offsets[i]) this.runs[runValues - 1] += TARGET_PAGE_SIZE;
      else (this.runs[runValues++] = offsets[i]), (this.runs[runValues++] = TARGET_PAGE_SIZE);
    }
    const header = encodeBulkHeader({ number: this.number++, idstr: this.task.blocks[blockIndex].idstr, normal, zero: zeros });
    this.write(header, memory, this.runs.subarray(0, runValues), pages.length, zeroCount);
  }

  private writeHeader(header: Buffer): void {
    this.write(header, NO_MEMORY, NO_RUNS, 0, 0);
  }

  /**
   * Blocks this thread until the kernel has every byte (nothing else waits on it); a peer that
   * takes nothing for the stall bound, or went, fails the channel.
   */
  private write(header: Buffer, memory: Buffer, runs: Float64Array, pages: number, zero: number): void {
    if (this.done) return;
    let bytes: number;
    try {
      bytes = writeRuns(this.task.socketFd, header, memory, runs, this.task.stallMs);
    } catch (error) {
      if (!(error as NodeJS.ErrnoException).syscall) throw error; // a bad run is a bug here, not the link
      return this.fail(this.brokenMessage(error as NodeJS.ErrnoException));
    }
    this.lastWriteAt = Date.now();
    if (pages) this.post({ type: 'sent', pages, zero, bytes });
  }

  private brokenMessage(error: NodeJS.ErrnoException): string {
    const { channel, stallMs } = this.task;
    if (error.code === 'ETIMEDOUT') return `${channel} channel stalled: the destination took nothing for ${(stallMs / 1000).toFixed(1)} s`;
    return channelClosedMessage(channel, error);
  }

  private fail(message: string): void {
    if (this.done) return;
    this.close();
    this.post({ type: 'failed', message });
  }

  private close(): void {
    this.done = true;
    clearInterval(this.heartbeat); // the main thread closes the descriptor once this thread is gone
  }

  private post(message: FromBulkSender): void {
    parentPort!.postMessage(message);
  }
}

new BulkSender(workerData as BulkSenderTask);
