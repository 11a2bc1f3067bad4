// One bulk channel of the destination, on its own worker thread: it reads the channel's
// packets straight into one receive buffer, checks them (BulkPacketDecoder), and applies their
// pages from where they landed. Before LISTEN a page is a plain write into the block; from
// LISTEN on it is placed atomically (UFFDIO_COPY of runs of contiguous 4 KiB pages, ZEROPAGE
// for zero runs, one copy per huge page), which wakes any guest thread faulting on it. The main
// thread learns what is in memory from 'applied' messages and sets the received bits: a page
// placed here and not yet reported is only sent again, and EEXIST says it is already there.
//
// After a SYNC packet the worker stops reading until the main thread says LISTEN: the main
// channel's MULTIFD_FLUSH waits for every channel's SYNC, so no precopy write can land after a
// discard, and no page is written plainly once the block is registered.
import { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { TARGET_PAGE_SIZE, isConnectionError } from '../base/index.js';
import { RangePlacer } from '../kernel/userfaultfd.js';
import { setSocketBuffers } from '../kernel/socket.js';
import { BulkFlag, BulkPacketDecoder, MAX_PACKET_BYTES, type BulkPacket } from '../wire/bulk-packet.js';
import { channelClosedMessage } from '../transport/channel.js';
import { HugePageAssembler } from '../pager/huge-page-assembler.js';
import { PrecopyWriter } from '../pager/precopy-writer.js';
import { RunPlacer } from '../pager/run-placer.js';
import type { BulkWorkerTask, FromBulkWorker, ToBulkWorker } from './bulk-protocol.js';

/** The receive buffer: several packets, so that one read brings many. */
const RECEIVE_BYTES = 4 << 20;
/** A read gets at least this much room (the buffer grows if unapplied bytes leave less). */
const MIN_READ_BYTES = 64 << 10;
/**
 * The socket's receive buffer from LISTEN on: a page requested in postcopy that the source
 * had already handed to this channel waits behind what is queued here (bulk-senders.ts).
 */
const POSTCOPY_SOCKET_BYTES = 256 << 10;

interface Applied {
  ranges: number[];
  pages: number;
  zero: number;
}

/**
 * Calls `run` for each run of contiguous offsets of a packet, normal pages first: byte offset,
 * length, and where its data starts in the packet's bytes (-1 for a run of zero pages).
 */
function forEachRun(packet: BulkPacket, run: (offset: number, length: number, dataAt: number) => void): void {
  const { offsets, normal, dataOffset } = packet;
  for (let i = 0; i < offsets.length; ) {
    const limit = i < normal ? normal : offsets.length;
    let j = i + 1;
    while (j < limit && offsets[j] === offsets[j - 1] + TARGET_PAGE_SIZE) j++;
    run(offsets[i], (j - i) * TARGET_PAGE_SIZE, i < normal ? dataOffset + i * TARGET_PAGE_SIZE : -1);
    i = j;
  }
}

class BulkWorker {
  private buffer = Buffer.allocUnsafe(RECEIVE_BYTES);
  /** Bytes [start, end) of the buffer are received and not yet applied. */
  private start = 0;
  private end = 0;
  private readonly decoder: BulkPacketDecoder;
  private readonly socket: Socket;
  /** Before LISTEN: plain writes. */
  private writer: PrecopyWriter | undefined;
  /** From LISTEN on: atomic placement, one target per block. */
  private placers: RangePlacer[] | undefined;
  private readonly runs = new RunPlacer();
  private assembler: HugePageAssembler | undefined;
  /** After SYNC: nothing more is read or applied until LISTEN. */
  private waitingForListen = false;
  private done = false;
  private lastReceivedAt = performance.now();
  private bytes = 0;
  private readonly applied = new Map<number, Applied>();
  private readonly stallTimer: NodeJS.Timeout;

  constructor(private readonly task: BulkWorkerTask) {
    this.decoder = new BulkPacketDecoder(task.blocks, task.channel);
    if (task.uffdFd !== undefined) this.listen(task.uffdFd);
    else this.writer = new PrecopyWriter(task.blocks);
    // onread (Node's own option, missing from @types/node's constructor options): reads go
    // straight into the receive buffer, after what is there already
    const options = {
      fd: task.socketFd,
      readable: true,
      writable: true,
      onread: { buffer: () => this.readTarget(), callback: (n: number) => this.received(n) },
    };
    this.socket = new Socket(options);
    this.socket.on('end', () => this.fail(new Error(channelClosedMessage(task.channel)), true));
    this.socket.on('error', (error) => this.fail(new Error(channelClosedMessage(task.channel, error)), true));
    this.stallTimer = setInterval(() => this.checkStall(), Math.max(50, task.stallMs / 4));
    parentPort!.on('message', (m: ToBulkWorker) => this.command(m));
  }

  private command(m: ToBulkWorker): void {
    if (this.done) return;
    if (m.type === 'stop') {
      this.close();
      return this.post({ type: 'stopped' });
    }
    this.listen(m.uffdFd);
    if (!this.waitingForListen) return;
    this.waitingForListen = false;
    this.lastReceivedAt = performance.now();
    this.applyBuffered();
    if (!this.waitingForListen && !this.done) this.socket.resume();
  }

  private listen(uffdFd: number): void {
    setSocketBuffers(this.task.socketFd, 0, POSTCOPY_SOCKET_BYTES);
    this.placers = this.task.blocks.map((b) => new RangePlacer(uffdFd, b.address, b.length));
    this.writer?.close(); // plain writes end here
    this.writer = undefined;
  }

  /**
   * onread: where the next read goes. Node asks right after each read callback and keeps the
   * answer until the following read, so this is the one place the buffer's layout may change:
   * moving bytes anywhere else would leave the pending read pointing at the old `end`.
   */
  private readTarget(): Buffer {
    if (this.start === this.end) this.start = this.end = 0;
    else if (this.buffer.length - this.end < MAX_PACKET_BYTES) {
      // the incomplete packet (or, paused after SYNC, the unapplied ones) moves to the front
      this.buffer.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
      if (this.buffer.length - this.end < MIN_READ_BYTES) {
        const bigger = Buffer.allocUnsafe(this.buffer.length * 2);
        this.buffer.copy(bigger, 0, 0, this.end);
        this.buffer = bigger;
      }
    }
    return this.buffer.subarray(this.end);
  }

  /** onread: `n` more bytes at `end`. False pauses reading (after SYNC, until LISTEN). */
  private received(n: number): boolean {
    this.end += n;
    this.bytes += n;
    this.lastReceivedAt = performance.now();
    this.applyBuffered();
    return !this.waitingForListen && !this.done;
  }

  private applyBuffered(): void {
    try {
      while (!this.waitingForListen && !this.done) {
        const decoded = this.decoder.decode(this.buffer, this.start, this.end);
        if (!decoded) break;
        this.start += decoded.size;
        this.apply(decoded.packet);
      }
      this.report();
    } catch (error) {
      this.fail(error as Error, isConnectionError(error));
    }
  }

  private apply(packet: BulkPacket): void {
    if (packet.flags & BulkFlag.END) {
      this.report();
      this.close();
      return this.post({ type: 'ended' });
    }
    if (packet.flags & BulkFlag.SYNC) {
      this.report();
      if (!this.placers) this.waitingForListen = true;
      return this.post({ type: 'synced' });
    }
    if (packet.normal + packet.zero === 0) return; // keepalive
    const block = this.task.blocks[packet.block];
    if (this.placers) {
      if (block.pageSize === TARGET_PAGE_SIZE) this.placeRuns(packet);
      else this.placeHugePage(packet);
    } else {
      this.write(packet);
    }
  }

  /**
   * Before LISTEN: plain writes, one per run of contiguous pages; a zero page only where memory
   * is not zero already (untouched memory stays unallocated).
   */
  private write(packet: BulkPacket): void {
    forEachRun(packet, (offset, length, dataAt) => {
      if (dataAt < 0) this.writer!.writeZeros(packet.block, offset, length);
      else this.writer!.write(packet.block, offset, packet.bytes, dataAt, length);
      this.note(packet.block, offset, length, dataAt < 0);
    });
  }

  /** 4 KiB pages: each run of contiguous offsets is one ioctl, copied straight from the receive buffer. */
  private placeRuns(packet: BulkPacket): void {
    const block = this.task.blocks[packet.block];
    forEachRun(packet, (offset, length, dataAt) => {
      this.runs.place(this.placers![packet.block], block, offset, dataAt < 0 ? null : packet.bytes, Math.max(0, dataAt), length);
      this.note(packet.block, offset, length, dataAt < 0);
    });
  }

  /** A huge page: its target pages (one packet holds all of them) assembled, then one atomic copy. */
  private placeHugePage(packet: BulkPacket): void {
    const { offsets, normal, bytes, dataOffset } = packet;
    const block = this.task.blocks[packet.block];
    const assembler = this.assembler?.buffer.length === block.pageSize ? this.assembler : (this.assembler = new HugePageAssembler(this.task.channel, block.pageSize));
    for (let i = 0; i < offsets.length; i++) {
      assembler.add(block, offsets[i], i < normal ? bytes.subarray(dataOffset + i * TARGET_PAGE_SIZE, dataOffset + (i + 1) * TARGET_PAGE_SIZE) : null);
    }
    const zero = assembler.allZero;
    this.runs.place(this.placers![packet.block], block, assembler.hostOffset, zero ? null : assembler.buffer, 0, block.pageSize);
    this.note(packet.block, assembler.hostOffset, block.pageSize, zero);
    assembler.reset();
  }

  /** Pages now in memory (placed, or already there), coalesced into ranges until the next report. */
  private note(block: number, offset: number, length: number, zero: boolean): void {
    let a = this.applied.get(block);
    if (!a) this.applied.set(block, (a = { ranges: [], pages: 0, zero: 0 }));
    const pages = length / TARGET_PAGE_SIZE;
    a.pages += pages;
    if (zero) a.zero += pages;
    const r = a.ranges;
    if (r.length && r[r.length - 2] + r[r.length - 1] === offset) r[r.length - 1] += length;
    else r.push(offset, length);
  }

  private report(): void {
    for (const [block, a] of this.applied) {
      this.post({ type: 'applied', block, ranges: Float64Array.from(a.ranges), pages: a.pages, zero: a.zero, bytes: this.bytes });
    }
    this.applied.clear();
  }

  private checkStall(): void {
    if (this.waitingForListen || this.done) return;
    const silentMs = performance.now() - this.lastReceivedAt;
    if (silentMs > this.task.stallMs) {
      this.fail(new Error(`${this.task.channel} channel stalled: nothing received for ${(silentMs / 1000).toFixed(1)} s (bound ${this.task.stallMs / 1000} s)`), true);
    }
  }

  private fail(error: Error, connection: boolean): void {
    if (this.done) return;
    this.close();
    const { channel } = this.task;
    const message = error.message.startsWith(channel) ? error.message : `${channel}: ${error.message}`;
    this.post({ type: 'failed', message, code: (error as { code?: string }).code ?? 'ERR_POSTCOPY_PROTOCOL', connection });
  }

  private close(): void {
    this.done = true;
    clearInterval(this.stallTimer);
    this.socket.destroy();
    this.writer?.close();
    this.writer = undefined;
    this.placers = undefined; // the main thread closes the userfaultfd's duplicate once this thread is gone
  }

  private post(message: FromBulkWorker): void {
    parentPort!.postMessage(message);
  }
}

new BulkWorker(workerData as BulkWorkerTask);
