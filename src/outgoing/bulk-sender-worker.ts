// One bulk channel of the source, on its own worker thread: it looks at the pages the main
// thread hands it (zero pages go as offsets only) and writes the packets, the page data
// straight from guest memory. The main thread decides which pages go (the dirty bitmap lives
// there); this thread does the rest, so the source's main thread is not the bound. A page the
// guest writes after it was looked at goes as it is then: the dirty log has it dirty again
// (in postcopy the source's guest is paused).
import { Socket } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { attachMapping } from '../kernel/mapping.js';
import { isZero } from '../memory/zero.js';
import { BulkFlag, encodeBulkHeader } from '../wire/bulk-packet.js';
import type { BulkSenderTask, FromBulkSender, ToBulkSender } from './bulk-protocol.js';
import { channelClosedMessage } from '../transport/channel.js';
import { TARGET_PAGE_SIZE } from '../base/index.js';

/** Target pages in one packet of a 4 KiB block (a huge page's packet holds that page). */
const PACKET_PAGES = 128;

class BulkSender {
  private readonly socket: Socket;
  private readonly memory: Buffer[];
  private number = 0;
  private lastWriteAt = Date.now();
  private done = false;
  private readonly heartbeat: NodeJS.Timeout;

  constructor(private readonly task: BulkSenderTask) {
    this.memory = task.blocks.map((b) => Buffer.from(attachMapping(BigInt(b.address), b.length)));
    this.socket = new Socket({ fd: task.socketFd, readable: true, writable: true });
    this.socket.setNoDelay(true);
    this.socket.on('error', (error) => this.fail(channelClosedMessage(task.channel, error)));
    this.socket.on('close', () => this.fail(channelClosedMessage(task.channel)));
    this.socket.on('data', () => undefined); // the destination sends nothing here; keep reading to see a close
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastWriteAt >= task.heartbeatMs) this.writeHeader(encodeBulkHeader({ number: this.number++ }));
    }, task.heartbeatMs / 2);
    parentPort!.on('message', (m: ToBulkSender) => this.command(m));
  }

  private command(m: ToBulkSender): void {
    if (this.done) return;
    if (m.type === 'pages') return this.sendPages(m.block, m.pages, m.untouched);
    this.writeHeader(encodeBulkHeader({ flags: m.type === 'sync' ? BulkFlag.SYNC : BulkFlag.END, number: this.number++ }));
    if (m.type === 'end') {
      this.done = true;
      clearInterval(this.heartbeat);
      this.socket.end(() => {
        this.socket.destroy();
        this.post({ type: 'ended' });
      });
    }
  }

  private sendPages(blockIndex: number, pages: Float64Array, untouched: Uint8Array): void {
    const block = this.task.blocks[blockIndex];
    const perPacket = Math.max(PACKET_PAGES, block.pageSize / TARGET_PAGE_SIZE);
    for (let first = 0; first < pages.length; first += perPacket) {
      const end = Math.min(first + perPacket, pages.length);
      this.sendPacket(blockIndex, pages.subarray(first, end), untouched.subarray(first, end));
    }
  }

  /**
   * One packet, without copying: its header, then the normal pages straight from guest memory
   * (a run of contiguous pages as one piece), corked into one writev. Fresh buffers are not
   * free: on a virtual machine the first touch of a page can cost a host fault.
   */
  private sendPacket(blockIndex: number, pages: Float64Array, untouched: Uint8Array): void {
    const memory = this.memory[blockIndex];
    const normal: number[] = [];
    const zero: number[] = [];
    pages.forEach((page, i) => {
      const offset = page * TARGET_PAGE_SIZE;
      (untouched[i] === 1 || isZero(memory, offset, TARGET_PAGE_SIZE) ? zero : normal).push(offset);
    });
    const header = encodeBulkHeader({ number: this.number++, idstr: this.task.blocks[blockIndex].idstr, normal, zero });
    const pieces: Uint8Array[] = [header];
    for (let i = 0; i < normal.length; ) {
      let j = i + 1;
      while (j < normal.length && normal[j] === normal[j - 1] + TARGET_PAGE_SIZE) j++;
      pieces.push(memory.subarray(normal[i], normal[j - 1] + TARGET_PAGE_SIZE));
      i = j;
    }
    this.write(pieces, pages.length, zero.length, header.length + normal.length * TARGET_PAGE_SIZE);
  }

  private writeHeader(header: Buffer): void {
    this.write([header], 0, 0, header.length);
  }

  private write(pieces: Uint8Array[], pages: number, zero: number, bytes: number): void {
    this.lastWriteAt = Date.now();
    if (pieces.length > 1) this.socket.cork();
    for (let i = 0; i < pieces.length - 1; i++) this.socket.write(pieces[i]);
    this.socket.write(pieces[pieces.length - 1], (error) => {
      if (!error) this.post({ type: 'sent', pages, zero, bytes });
    });
    if (pieces.length > 1) this.socket.uncork();
  }

  private fail(message: string): void {
    if (this.done) return;
    this.done = true;
    clearInterval(this.heartbeat);
    this.socket.destroy();
    this.post({ type: 'failed', message });
  }

  private post(message: FromBulkSender): void {
    parentPort!.postMessage(message);
  }
}

new BulkSender(workerData as BulkSenderTask);
