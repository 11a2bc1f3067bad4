// The destination of a postcopy migration: decodes each channel's stream, drives the state
// machine, writes precopy pages, places postcopy pages atomically, turns faults into page
// requests on the return path, and reports. Guest threads are stopped before the
// userfaultfd is closed on failure, so no guest thread can ever read a silent zero page.
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { Mapping, Userfaultfd, hasFeatures, type Feature } from '../kernel/index.js';
import { RamBlock, RamList, TARGET_PAGE_SIZE } from '../memory/index.js';
import { Command, ProtocolError, ReturnPathEncoder, commandName, encodePong, encodeShut, type MemSizeBlock, type StreamEvent } from '../wire/index.js';
import type { AcceptedChannel, Channel } from '../transport/index.js';
import { FaultService } from './fault-service.js';
import { PagePlacer, type GuestBlock } from './placement.js';
import { IncomingStateMachine, type IncomingState, type IncomingTransition } from './state.js';
import type { PostcopyReport } from './stats.js';
import { TempPage } from './temp-page.js';

/** Longest the bulk stream is held back for waiting threads before it is read again. */
const BULK_HOLD_MS = 1;

/** Most 4 KiB pages placed by one UFFDIO_COPY. */
const RUN_PAGES = 16;

export interface IncomingOptions {
  /** The destination's memory. Empty: blocks are allocated as the source's MEM_SIZE describes. */
  blocks?: RamList<Mapping>;
  /** How to allocate a block named by MEM_SIZE when `blocks` starts empty. */
  allocate?: (block: MemSizeBlock) => Mapping;
  /** Guest threads that will run here (for blocktime: when all are blocked). */
  guestThreads?: number;
  /**
   * Stops every guest thread. After a failure it is awaited before the userfaultfd is
   * closed; a thread blocked on a page that can no longer arrive stays blocked until then.
   */
  stopGuest?: () => Promise<void>;
}

export interface IncomingMigration {
  on(event: 'state', listener: (state: IncomingState, from: IncomingState) => void): this;
  on(event: 'run', listener: () => void): this;
  on(event: 'device-state', listener: (data: Uint8Array) => void): this;
  on(event: 'end', listener: (report: PostcopyReport) => void): this;
  on(event: 'failed', listener: (error: Error) => void): this;
}

export class IncomingMigration extends EventEmitter {
  readonly blocks: RamList<Mapping>;
  readonly machine = new IncomingStateMachine();
  private uffd: Userfaultfd | undefined;
  private placer: PagePlacer | undefined;
  private faults: FaultService | undefined;
  private readonly tempPages = new Map<Channel, TempPage>();
  private readonly views = new Map<GuestBlock, Uint8Array>();
  private readonly run = { block: undefined as GuestBlock | undefined, offset: 0, length: 0, zero: false, buffer: new Uint8Array(RUN_PAGES * TARGET_PAGE_SIZE) };
  private main: Channel | undefined;
  private preemptChannel: Channel | undefined;
  private bulkHeld: { channel: Channel; timer: NodeJS.Timeout } | undefined;
  private lastRequestAt = -Infinity;
  private readonly requests = new ReturnPathEncoder();
  private sourceComplete = false;
  private readonly started = performance.now();
  private listenAt = 0;
  private runAt = 0;
  private endAt = 0;
  readonly pages = { precopy: 0, streamed: 0, requested: 0, zero: 0, discarded: 0, duplicate: 0 };

  constructor(private readonly options: IncomingOptions = {}) {
    super();
    this.blocks = options.blocks ?? new RamList<Mapping>();
    this.machine.onChange((from, to) => from !== to && this.emit('state', to, from));
  }

  get state(): IncomingState {
    return this.machine.state;
  }

  /** How many guest threads run here: blocktime counts the time during which all are blocked. */
  set guestThreads(threads: number) {
    this.options.guestThreads = threads;
    this.faults?.blocktime.setThreads(threads);
  }

  /** Takes a channel that passed the handshake; the main one also carries the return path. */
  attach({ channel, decoder }: AcceptedChannel<GuestBlock>): void {
    if (channel.role === 'main') this.main = channel;
    else this.preemptChannel = channel;
    const pump = () => {
      try {
        for (let event = decoder.next(); event; event = decoder.next()) this.handle(event, channel);
        this.flushRun();
      } catch (error) {
        this.fail(error as Error);
        channel.destroy();
      }
    };
    channel.socket.on('data', (chunk: Buffer) => {
      if (this.machine.state === 'FAILED') return;
      channel.bytesReceived += chunk.length;
      decoder.push(chunk);
      pump();
      // While a guest thread waits for a page, the bulk stream steps aside: reading stops until
      // the waits are over (or a millisecond has passed), which leaves this thread to the
      // preempt channel and, through TCP backpressure, slows the source's stream too.
      // Only for a fresh request: a page the source had already sent is in this very stream,
      // and holding it back would only delay it.
      if (channel.role === 'main' && this.preemptChannel && (this.faults?.waiting ?? 0) > 0 && performance.now() - this.lastRequestAt < BULK_HOLD_MS) {
        this.holdBulk(channel);
      }
    });
    channel.socket.on('close', () => {
      if (channel.role !== 'main' || this.state === 'END' || this.state === 'FAILED') return;
      this.fail(new Error(`main channel closed in state ${this.state}${this.machine.atomicPlacement ? ' (postcopy: pages still missing)' : ''}`));
    });
    channel.socket.resume();
    pump();
  }

  private handle(event: StreamEvent<GuestBlock>, channel: Channel): void {
    switch (event.type) {
      case 'ram-page':
        return this.receivePage(channel, event.block, event.offset, event.data);
      case 'ram-zero':
        return this.receivePage(channel, event.block, event.offset, null);
      case 'mem-size':
        return this.checkLayout(event.blocks);
      case 'command':
        this.flushRun(); // commands are ordering points: pages before them are placed first
        return this.command(event, channel);
      case 'eof':
        this.flushRun();
        // after COMPLETE, pages may still be in flight on the preempt channel
        if (channel.role === 'main' && this.state !== 'END' && !this.sourceComplete) {
          throw new ProtocolError(`EOF in state ${this.state} before COMPLETE`);
        }
        return;
      default:
        return; // header, ram-eos, multifd-flush: framing only
    }
  }

  private checkLayout(list: MemSizeBlock[]): void {
    if (this.blocks.size === 0 && this.options.allocate) {
      for (const b of list) {
        const mapping = this.options.allocate(b);
        this.blocks.add(new RamBlock<Mapping>({ idstr: b.idstr, usedLength: b.usedLength, pageSize: b.pageSize, host: mapping }));
      }
    }
    for (const b of list) {
      const local = this.blocks.byId(b.idstr);
      if (!local) throw new ProtocolError(`MEM_SIZE: block '${b.idstr}' does not exist here`);
      if (local.usedLength !== b.usedLength) throw new ProtocolError(`MEM_SIZE: block '${b.idstr}' used length 0x${b.usedLength.toString(16)} != local 0x${local.usedLength.toString(16)}`);
      if (local.pageSize !== b.pageSize) throw new ProtocolError(`MEM_SIZE: block '${b.idstr}' page size ${b.pageSize} != local ${local.pageSize}`);
    }
    if (list.length !== this.blocks.size) throw new ProtocolError(`MEM_SIZE: ${list.length} blocks, the destination has ${this.blocks.size}`);
  }

  private transition(transition: IncomingTransition): void {
    this.machine.apply(transition);
  }

  private command(event: Extract<StreamEvent<GuestBlock>, { type: 'command' }>, channel: Channel): void {
    if (channel.role !== 'main') throw new ProtocolError(`command ${commandName(event.cmd)} on the ${channel.role} channel`);
    switch (event.cmd) {
      case Command.OPEN_RETURN_PATH:
        return;
      case Command.PING:
        this.main?.send(encodePong(event.value));
        return;
      case Command.POSTCOPY_ADVISE:
        this.transition('POSTCOPY_ADVISE');
        return this.advise(event.pageSizeSummary);
      case Command.POSTCOPY_RAM_DISCARD: {
        const first = this.state !== 'DISCARD';
        this.transition('POSTCOPY_RAM_DISCARD');
        if (first) this.prepareDiscard();
        for (const [start, length] of event.ranges) {
          event.block.host!.discard(start, length);
          event.block.clearReceived(start, length);
          this.pages.discarded += length / TARGET_PAGE_SIZE;
        }
        return;
      }
      case Command.POSTCOPY_LISTEN:
        this.transition('POSTCOPY_LISTEN');
        return this.listen();
      case Command.PACKAGED:
        this.emit('device-state', event.data);
        return;
      case Command.POSTCOPY_RUN:
        this.transition('POSTCOPY_RUN');
        this.runAt = performance.now();
        this.emit('run');
        return this.maybeEnd();
      case Command.COMPLETE:
        if (this.state !== 'RUNNING') throw new ProtocolError(`COMPLETE is not allowed in state ${this.state}`);
        this.sourceComplete = true;
        return this.maybeEnd();
      case Command.POSTCOPY_RESUME:
      case Command.RECV_BITMAP:
        throw new ProtocolError(`${commandName(event.cmd)}: recovery is not supported by this destination`);
      case Command.HELLO:
        throw new ProtocolError('HELLO after the handshake');
    }
  }

  /** ADVISE: can this kernel do what the blocks need? Then get the userfaultfd ready. */
  private advise(pageSizeSummary: number): void {
    const local = this.blocks.pageSizeSummary;
    if (pageSizeSummary !== local) throw new ProtocolError(`POSTCOPY_ADVISE: page size summary 0x${pageSizeSummary.toString(16)} != local 0x${local.toString(16)}`);
    const needs = new Set<Feature>();
    for (const block of this.blocks) {
      if (block.host!.huge) needs.add('MISSING_HUGETLBFS');
      else if (block.host!.shared) needs.add('MISSING_SHMEM');
    }
    if (hasFeatures('THREAD_ID')) needs.add('THREAD_ID');
    this.uffd = Userfaultfd.open({ features: [...needs] });
    this.placer = new PagePlacer(this.uffd, (block, offset, length) => {
      const requested = this.faults?.placed(block, offset, length) ?? 0;
      this.pages.requested += requested * (block.pageSize / TARGET_PAGE_SIZE);
      if (this.bulkHeld && this.faults!.waiting === 0) this.releaseBulk();
    });
  }

  /** First discard ends precopy: no transparent huge pages from here (a discard must drop 4 KiB). */
  private prepareDiscard(): void {
    for (const block of this.blocks) {
      const mapping = block.host!;
      if (!mapping.huge && !mapping.shared) mapping.madvise(0, mapping.length, 'nohugepage');
    }
  }

  private listen(): void {
    const uffd = this.uffd!;
    for (const block of this.blocks) uffd.register(block.host!.address, block.host!.length, 'missing');
    this.views.clear();
    this.faults = new FaultService(uffd, [...this.blocks], (block, offset, length) => this.requestPage(block, offset, length),
      (error) => this.fail(error), this.options.guestThreads ?? 0);
    this.faults.start();
    this.listenAt = performance.now();
  }

  private requestPage(block: GuestBlock, offset: number, length: number): void {
    if (!this.main || this.main.closed) return; // the failure path handles it
    this.lastRequestAt = performance.now();
    this.main.send(this.requests.requestPages(block.idstr, offset, length));
  }

  private receivePage(channel: Channel, block: GuestBlock, offset: number, data: Uint8Array | null): void {
    if (!data) this.pages.zero++;
    if (!this.machine.atomicPlacement) return this.writePrecopy(block, offset, data);
    if (block.pageSize === TARGET_PAGE_SIZE) {
      if (block.isReceived(offset)) {
        this.pages.duplicate++;
        return;
      }
      this.pages.streamed++;
      return this.addToRun(block, offset, data);
    } else {
      let temp = this.tempPages.get(channel);
      if (!temp) this.tempPages.set(channel, (temp = new TempPage(channel.role, block.pageSize)));
      if (!temp.add(block, offset, data)) return;
      const hostOffset = temp.hostOffset;
      const perHost = block.pageSize / TARGET_PAGE_SIZE;
      if (block.isHostPageReceived(hostOffset)) this.pages.duplicate += perHost;
      else {
        this.pages.streamed += perHost;
        this.placer!.place(block, hostOffset, temp.allZero ? null : temp.buffer);
      }
      temp.reset();
    }
    this.maybeEnd();
  }

  private holdBulk(channel: Channel): void {
    if (this.bulkHeld) return;
    channel.socket.pause();
    this.bulkHeld = { channel, timer: setTimeout(() => this.releaseBulk(), BULK_HOLD_MS) };
  }

  private releaseBulk(): void {
    const held = this.bulkHeld;
    if (!held) return;
    this.bulkHeld = undefined;
    clearTimeout(held.timer);
    held.channel.socket.resume();
  }

  /**
   * Contiguous 4 KiB pages of one read are placed with one ioctl: UFFDIO_COPY for data,
   * UFFDIO_ZEROPAGE for zero pages. A page a thread is waiting for is never held back: the run
   * is placed as soon as it holds one.
   */
  private addToRun(block: GuestBlock, offset: number, data: Uint8Array | null): void {
    const run = this.run;
    const zero = data === null;
    if (run.length && (run.block !== block || run.offset + run.length !== offset || run.zero !== zero || run.length === run.buffer.length)) {
      this.flushRun();
    }
    if (!run.length) {
      run.block = block;
      run.offset = offset;
      run.zero = zero;
    }
    if (data) run.buffer.set(data, run.length);
    run.length += TARGET_PAGE_SIZE;
    if (this.faults?.isWaiting(block, offset)) this.flushRun();
  }

  private flushRun(): void {
    const run = this.run;
    if (!run.length) return;
    const length = run.length;
    run.length = 0;
    this.placer!.placeRun(run.block!, run.offset, run.zero ? null : run.buffer, length);
    this.maybeEnd();
  }

  /** Before LISTEN nothing is registered: pages are plain writes. */
  private writePrecopy(block: GuestBlock, offset: number, data: Uint8Array | null): void {
    let view = this.views.get(block);
    if (!view) this.views.set(block, (view = block.host!.bytes()));
    if (data) view.set(data, offset);
    else if (!isZero(view, offset)) view.fill(0, offset, offset + TARGET_PAGE_SIZE); // untouched memory stays unallocated
    block.markReceived(offset, TARGET_PAGE_SIZE);
    this.pages.precopy++;
  }

  private allReceived(): boolean {
    for (const block of this.blocks) if (!block.receivedMap.isFull()) return false;
    return true;
  }

  private maybeEnd(): void {
    if (this.state !== 'RUNNING' || !this.sourceComplete || !this.allReceived()) return;
    this.transition('COMPLETE');
    this.endAt = performance.now();
    this.faults?.stop();
    // every page is here: no thread can block any more, so closing is safe
    for (const block of this.blocks) this.uffd?.unregister(block.host!.address, block.host!.length);
    this.uffd?.close();
    this.main?.send(encodeShut(0));
    this.emit('end', this.report());
  }

  fail(error: Error): void {
    if (this.state === 'FAILED' || this.state === 'END') return;
    this.machine.fail(error);
    this.faults?.stop();
    if (this.main && !this.main.closed) {
      try {
        this.main.send(encodeShut(1));
      } catch {
        // the connection is what failed
      }
    }
    this.emit('failed', error);
    const uffd = this.uffd;
    if (!uffd) return;
    // Closing the userfaultfd would let blocked guest threads read zero pages: only once the
    // guest is stopped. Without a way to stop it, the descriptor stays open.
    this.options.stopGuest?.().then(() => uffd.close(), () => undefined);
  }

  report(): PostcopyReport {
    const now = this.endAt || performance.now();
    const latency = this.faults?.latency;
    const blocktime = this.faults?.blocktime;
    const bytesTotal = [...this.blocks].reduce((sum, b) => sum + b.usedLength, 0);
    const postcopyMs = this.runAt ? now - this.runAt : 0;
    const postcopyBytes = (this.pages.streamed + this.pages.requested) * TARGET_PAGE_SIZE;
    return {
      state: this.state,
      pages: {
        precopy: this.pages.precopy,
        streamed: this.pages.streamed - this.pages.requested,
        requested: this.pages.requested,
        zero: this.pages.zero,
        discarded: this.pages.discarded,
        duplicate: this.pages.duplicate,
      },
      bytes_total: bytesTotal,
      bytes_received: (this.main?.bytesReceived ?? 0) + (this.preemptChannel?.bytesReceived ?? 0),
      blocktime_ms: round(blocktime?.totalMs ?? 0),
      blocktime_per_thread_ms: Object.fromEntries([...(blocktime?.perThreadMs ?? [])].map(([t, ms]) => [String(t), round(ms)])),
      latency_us: {
        avg: round(latency?.average ?? 0),
        p50: latency?.quantile(0.5) ?? 0,
        p99: latency?.quantile(0.99) ?? 0,
        histogram: latency?.buckets ?? [],
        count: latency?.count ?? 0,
      },
      downtime_ms: round(this.runAt && this.listenAt ? this.runAt - this.listenAt : 0),
      total_ms: round(now - this.started),
      postcopy_ms: round(postcopyMs),
      throughput_gb_per_s: postcopyMs > 0 ? round(postcopyBytes / (postcopyMs / 1000) / 1e9, 3) : 0,
    };
  }
}

function isZero(view: Uint8Array, offset: number): boolean {
  const words = new Int32Array(view.buffer, view.byteOffset + offset, TARGET_PAGE_SIZE / 4);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

function round(value: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
