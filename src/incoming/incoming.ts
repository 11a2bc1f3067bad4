// The destination of a postcopy migration: decodes each channel's stream, drives the state
// machine, writes precopy pages, places postcopy pages atomically, turns faults into page
// requests on the return path, survives a broken connection (PAUSED until the source comes
// back), and reports.
//
// Liveness rules enforced here: END only when every received bit is set (COMPLETE with pages
// missing fails, naming them); a request unanswered for `requestRetryMs` is sent again;
// silence on a channel or no progress for a bound breaks the connection; a pause lasts at
// most `recoverSeconds`; after a failure the guest is stopped before the userfaultfd closes,
// and a guest that cannot be stopped ends the process (see docs/architecture.md).
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { Mapping, SelfMemory, Userfaultfd, exitNow } from '../kernel/index.js';
import { RamBlock, RamList, ZERO_PAGE, isZeroPage } from '../memory/index.js';
import {
  Capability,
  Command,
  ResumeState,
  ReturnPathEncoder,
  Role,
  commandName,
  encodePong,
  encodeRecvBitmap,
  encodeResumeAck,
  encodeShut,
  type HelloFields,
  type MemSizeBlock,
  type StreamEvent,
} from '../wire/index.js';
import { StallWatch, type AcceptedChannel, type Channel } from '../transport/index.js';
import { BulkReceiver } from './bulk-receiver.js';
import { endGuestSurely } from './sure-stop.js';
import { FaultService } from './fault-service.js';
import { PagePlacer, openForMissing, type GuestBlock } from './placement.js';
import { IncomingStateMachine, type IncomingState, type IncomingTransition } from './state.js';
import { blocktimePerThread, latencyReport, type PostcopyReport } from './stats.js';
import { TempPage } from './temp-page.js';
import { hex, isConnectionError, PostcopyError, ProtocolError, round, TARGET_PAGE_SIZE } from '../base/index.js';

/** Longest the bulk stream is held back for waiting threads before it is read again. */
const BULK_HOLD_MS = 1;

/** Most 4 KiB pages placed by one UFFDIO_COPY. */
const RUN_PAGES = 16;

/** How often requests, progress and the pause are checked. */
const LIVENESS_TICK_MS = 100;

export interface IncomingOptions {
  /** The destination's memory. Empty: blocks are allocated as the source's MEM_SIZE describes. */
  blocks?: RamList<Mapping>;
  /** How to allocate a block named by MEM_SIZE when `blocks` starts empty. */
  allocate?: (block: MemSizeBlock) => Mapping;
  /** Guest threads that will run here (for blocktime: when all are blocked). */
  guestThreads?: number;
  /**
   * Stops every guest thread. After a failure it is awaited (at most `guestStopTimeoutMs`)
   * before the userfaultfd is closed; a thread blocked on a page that can no longer arrive
   * stays blocked until then.
   */
  stopGuest?: () => Promise<void>;
  /** How long a broken connection in postcopy may take to come back (default 30 s; 0: fail at once). */
  recoverSeconds?: number;
  /** A channel on which nothing arrives for this long is broken (default 5 s; the source pings every second). */
  stallSeconds?: number;
  /** A requested page that has not arrived after this long is requested again (default 300 ms). */
  requestRetryMs?: number;
  /** Threads waiting and nothing placed for this long: the connection is treated as broken (default 10 s). */
  noProgressSeconds?: number;
  /** How long `stopGuest` may take after a failure (default 3000 ms). */
  guestStopTimeoutMs?: number;
  /**
   * Called when guest threads may sit in faults on pages that can no longer arrive and the
   * guest could not be stopped: it must end them, and must not return. Default: the process
   * ends at once (exitNow), which ends every thread without waking any onto a zero page.
   */
  onGuestStuck?: (message: string) => never;
}

export interface IncomingMigration {
  on(event: 'state', listener: (state: IncomingState, from: IncomingState) => void): this;
  on(event: 'run', listener: () => void): this;
  on(event: 'device-state', listener: (data: Uint8Array) => void): this;
  on(event: 'paused', listener: (error: Error) => void): this;
  on(event: 'resumed', listener: () => void): this;
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
  /** Precopy writes through /proc/self/mem (null: not available, store directly). */
  private selfMemory: SelfMemory | null | undefined;
  private readonly zeroCheck = new Uint8Array(TARGET_PAGE_SIZE);
  private readonly run = { block: undefined as GuestBlock | undefined, offset: 0, length: 0, zero: false, buffer: new Uint8Array(RUN_PAGES * TARGET_PAGE_SIZE) };
  private session: string | undefined;
  private main: Channel | undefined;
  private preemptChannel: Channel | undefined;
  /** The source said a preempt channel joins (HELLO capability): its EOF is awaited too. */
  private expectPreempt = false;
  /** Channels of the current connection whose EOF has arrived. */
  private readonly ended = new Set<Channel>();
  private sourceComplete = false;
  /** Bulk channels the source said join (HELLO capability), and those that have, by number. */
  private expectBulk = 0;
  private readonly bulk: (BulkReceiver | undefined)[] = [];
  /** Bulk channels that joined before ADVISE (blocks checked, no THP): started at it. */
  private pendingBulk: Channel[] = [];
  private bulkReady = false;
  /** MULTIFD_FLUSH on the main channel: its stream waits until every bulk channel has synced. */
  private awaitingBulkSync = false;
  /** Main-channel events decoded while waiting at the flush, applied in order after it. */
  private readonly deferred: StreamEvent<GuestBlock>[] = [];
  private pumpMain: (() => void) | undefined;
  private bulkHeld: { channel: Channel; timer: NodeJS.Timeout } | undefined;
  private lastRequestAt = -Infinity;
  private lastPlacedAt = performance.now();
  private readonly requests = new ReturnPathEncoder();
  private readonly stallWatch: StallWatch;
  private livenessTimer: NodeJS.Timeout | undefined;
  private recoveryDeadline: NodeJS.Timeout | undefined;
  private pausedAt = 0;
  /** Bytes received on the channels of earlier connections (before a recovery). */
  private bytesOfEarlierChannels = 0;
  private readonly started = performance.now();
  private listenAt = 0;
  private runAt = 0;
  private readonly switchoverTimes = { discardMs: 0, discardRanges: 0, discardSyscalls: 0, listenMs: 0 };
  private endAt = 0;
  private readonly settings: Required<Omit<IncomingOptions, 'blocks' | 'allocate' | 'guestThreads' | 'stopGuest'>>;
  /** Pages placed in postcopy (by the stream or on request), precopy pages written, and more. */
  readonly pages = { precopy: 0, postcopyPlaced: 0, requested: 0, zero: 0, discarded: 0, duplicate: 0, missingAtListen: 0 };
  readonly recovery = { count: 0, pausedMs: 0 };

  constructor(private readonly options: IncomingOptions = {}) {
    super();
    this.blocks = options.blocks ?? new RamList<Mapping>();
    this.settings = {
      recoverSeconds: options.recoverSeconds ?? 30,
      stallSeconds: options.stallSeconds ?? 5,
      requestRetryMs: options.requestRetryMs ?? 300,
      noProgressSeconds: options.noProgressSeconds ?? 10,
      guestStopTimeoutMs: options.guestStopTimeoutMs ?? 3000,
      onGuestStuck: options.onGuestStuck ?? ((message) => exitNow(1, `postcopy: ${message}`)),
    };
    this.stallWatch = new StallWatch(this.settings.stallSeconds * 1000, (channel, error) => this.channelLost(channel, error));
    this.machine.onChange((from, to) => from !== to && this.emit('state', to, from));
  }

  /** Fault events read from the userfaultfd so far (each guest fault once, served or not). */
  get faultsRead(): number {
    return this.faults?.faults ?? 0;
  }

  get state(): IncomingState {
    return this.machine.state;
  }

  /** How many guest threads run here: blocktime counts the time during which all are blocked. */
  set guestThreads(threads: number) {
    this.options.guestThreads = threads;
    this.faults?.blocktime.setThreads(threads);
  }

  /**
   * Whether a channel that passed authentication may join: a refusal reason, or undefined.
   * One migration per destination; a main channel again only to recover (PAUSED), or to
   * replace one that is presumed dead in postcopy; a preempt channel after its main one.
   */
  admit(hello: HelloFields): string | undefined {
    if (this.session !== undefined && hello.sessionId !== this.session) return `destination is busy with migration '${this.session}'`;
    const state = this.state;
    if (state === 'FAILED') return `migration '${hello.sessionId}' has failed: ${this.machine.failure?.message}`;
    if (hello.role === Role.MAIN) {
      // a live main channel may be replaced only where the source can recover (it saw it die)
      const live = this.main !== undefined && !this.main.closed;
      if (live && !(state === 'LISTENING' || state === 'RUNNING' || state === 'END')) return `migration '${hello.sessionId}' already has a main channel (state ${state})`;
    } else {
      if (!this.main || this.main.closed) return 'the main channel must connect first';
      if (hello.role === Role.BULK) {
        if (hello.index >= this.expectBulk) return `bulk channel ${hello.index}: the main channel announced ${this.expectBulk} bulk channel(s)`;
        if (this.bulk[hello.index] || this.pendingBulk.some((c) => c.index === hello.index)) return `migration '${hello.sessionId}' already has bulk channel ${hello.index}`;
      } else if (this.preemptChannel && !this.preemptChannel.closed) return `migration '${hello.sessionId}' already has a preempt channel`;
    }
    this.session = hello.sessionId;
    return undefined;
  }

  /** Takes a channel that passed the handshake; the main one also carries the return path. */
  attach({ channel, decoder, hello }: AcceptedChannel<GuestBlock>): void {
    this.session ??= hello.sessionId;
    if (channel.role === 'main') {
      // a new main channel means the source saw the old one die: pause (or, after END, just drop it)
      if (this.main && !this.main.closed) {
        if (this.machine.atomicPlacement) this.channelLost(this.main, new PostcopyError('ERR_POSTCOPY_CHANNEL_CLOSED', 'the source opened a new main channel'));
        else this.dropChannels();
      }
      if (this.state === 'FAILED') return channel.destroy();
      this.main = channel;
      this.expectPreempt = (hello.capabilities & Capability.PREEMPT) !== 0;
      this.expectBulk = (hello.capabilities & Capability.BULK_MASK) >> Capability.BULK_SHIFT;
      this.requests.resetBlock(); // the new connection has not heard of any block yet
    } else if (channel.role === 'bulk') {
      if (decoder.pending > 0) {
        channel.destroy();
        return this.fail(new ProtocolError(`${channel.name} channel: ${decoder.pending} byte(s) sent before HELLO_ACK`));
      }
      return this.bulkReady ? this.startBulk(channel) : void this.pendingBulk.push(channel);
    } else {
      this.preemptChannel = channel;
    }
    this.stallWatch.watch(channel);
    const pump = () => {
      try {
        const main = channel === this.main;
        while (main && !this.awaitingBulkSync && this.deferred.length) this.handle(this.deferred.shift()!, channel);
        for (let event = decoder.next(); event; event = decoder.next()) {
          if (!main || !this.awaitingBulkSync) this.handle(event, channel);
          // waiting at MULTIFD_FLUSH: everything waits but PING, whose PONG keeps the source's
          // stall watch content while the bulk channels drain (a PONG here says "alive", not "done")
          else if (event.type === 'command' && event.cmd === Command.PING) this.handle(event, channel);
          else this.deferred.push(event);
        }
        this.flushRun();
      } catch (error) {
        // an answer that could not be written means a broken connection; anything else is fatal
        if (isConnectionError(error)) return this.channelLost(channel, error as Error);
        this.fail(error as Error);
        channel.destroy();
      }
    };
    channel.socket.on('data', (chunk: Buffer) => {
      if (!this.isCurrent(channel) || this.state === 'FAILED') return;
      channel.received(chunk.length);
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
      if (this.isCurrent(channel)) this.channelLost(channel, channel.error!);
    });
    if (channel.role === 'main') this.pumpMain = pump;
    channel.socket.resume();
    pump();
  }

  private isCurrent(channel: Channel): boolean {
    return channel === this.main || channel === this.preemptChannel;
  }

  /** A bulk channel's worker takes over its connection; after LISTEN it places atomically from the start. */
  private startBulk(channel: Channel): void {
    const listening = this.listenAt > 0 ? this.uffd : undefined;
    const receiver = new BulkReceiver(channel, [...this.blocks], listening, this.settings.stallSeconds * 1000, {
      applied: (block, ranges, counts) => this.bulkApplied(receiver, block, ranges, counts),
      synced: () => this.checkBulkSynced(),
      ended: () => this.checkComplete(),
      failed: (_, error, connection) => {
        if (this.bulk[channel.index] !== receiver) return;
        if (connection) this.connectionLost(error);
        else this.fail(error);
      },
    });
    this.bulk[channel.index] = receiver;
  }

  /** What a bulk worker wrote (precopy) or placed: the received bits, and the waits they end. */
  private bulkApplied(receiver: BulkReceiver, block: GuestBlock, ranges: Float64Array, counts: { pages: number; zero: number }): void {
    if (!this.bulk.includes(receiver) || this.state === 'FAILED') return;
    this.pages.zero += counts.zero;
    if (!this.machine.atomicPlacement) {
      this.pages.precopy += counts.pages;
      for (let i = 0; i < ranges.length; i += 2) block.markReceived(ranges[i], ranges[i + 1]);
      return;
    }
    for (let i = 0; i < ranges.length; i += 2) this.postcopyPlaced(block, ranges[i], ranges[i + 1], block.markReceived(ranges[i], ranges[i + 1]));
    this.checkComplete();
  }

  /** At MULTIFD_FLUSH: whether every announced bulk channel has synced (and if so, the next flush starts afresh). */
  private bulkSynced(): boolean {
    for (let i = 0; i < this.expectBulk; i++) if (!this.bulk[i]?.synced) return false;
    for (const receiver of this.bulk) if (receiver) receiver.synced = false;
    return true;
  }

  /** A bulk channel synced: the main stream goes on past MULTIFD_FLUSH once all have. */
  private checkBulkSynced(): void {
    if (!this.awaitingBulkSync || !this.bulkSynced()) return;
    this.awaitingBulkSync = false;
    this.pumpMain?.();
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
      case 'multifd-flush':
        // what follows (discards, LISTEN) must not overtake a page still on a bulk channel
        if (channel.role !== 'main' || this.expectBulk === 0) return;
        this.awaitingBulkSync = !this.bulkSynced();
        return;
      case 'eof':
        this.flushRun();
        // after COMPLETE, pages may still be in flight on the preempt channel
        if (channel.role === 'main' && !this.sourceComplete && this.state !== 'END') {
          throw new ProtocolError(`EOF in state ${this.state} before COMPLETE`);
        }
        this.ended.add(channel);
        this.stallWatch.unwatch(channel); // nothing more comes on it: silence is expected now
        return this.checkComplete();
      default:
        return; // header, ram-eos: framing only
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
      if (local.usedLength !== b.usedLength) throw new ProtocolError(`MEM_SIZE: block '${b.idstr}' used length ${hex(b.usedLength)} != local ${hex(local.usedLength)}`);
      if (local.pageSize !== b.pageSize) throw new ProtocolError(`MEM_SIZE: block '${b.idstr}' page size ${b.pageSize} != local ${local.pageSize}`);
    }
    if (list.length !== this.blocks.size) throw new ProtocolError(`MEM_SIZE: ${list.length} blocks, the destination has ${this.blocks.size}`);
  }

  private transition(transition: IncomingTransition): void {
    this.machine.apply(transition);
  }

  private command(event: Extract<StreamEvent<GuestBlock>, { type: 'command' }>, channel: Channel): void {
    if (event.cmd === Command.PING) {
      // a heartbeat on any channel; the main one answers on the return path
      if (channel.role === 'main') channel.send(encodePong(event.value));
      return;
    }
    if (channel.role !== 'main') throw new ProtocolError(`command ${commandName(event.cmd)} on the ${channel.role} channel`);
    switch (event.cmd) {
      case Command.OPEN_RETURN_PATH:
        return;
      case Command.POSTCOPY_ADVISE:
        this.transition('POSTCOPY_ADVISE');
        return this.advise(event.pageSizeSummary);
      case Command.POSTCOPY_RAM_DISCARD:
        this.transition('POSTCOPY_RAM_DISCARD');
        return this.discard(event.block, event.ranges);
      case Command.POSTCOPY_LISTEN: {
        const start = performance.now();
        this.transition('POSTCOPY_LISTEN');
        this.listen();
        this.switchoverTimes.listenMs += performance.now() - start;
        return;
      }
      case Command.PACKAGED:
        this.emit('device-state', event.data);
        return;
      case Command.POSTCOPY_RUN:
        this.transition('POSTCOPY_RUN');
        this.runAt = performance.now();
        this.emit('run');
        return this.checkComplete();
      case Command.COMPLETE:
        if (this.state !== 'RUNNING') throw new ProtocolError(`COMPLETE is not allowed in state ${this.state}`);
        this.sourceComplete = true;
        return this.checkComplete();
      case Command.RECV_BITMAP:
        if (this.state !== 'PAUSED' && this.state !== 'END') throw new ProtocolError(`RECV_BITMAP is not allowed in state ${this.state} (only while PAUSED)`);
        channel.send(encodeRecvBitmap(event.idstr, event.block.receivedMap));
        return;
      case Command.POSTCOPY_RESUME:
        return this.resume(channel);
      case Command.HELLO:
        throw new ProtocolError('HELLO after the handshake');
    }
  }

  /** ADVISE: can this kernel do what the blocks need? Then get the userfaultfd ready. */
  private advise(pageSizeSummary: number): void {
    const local = this.blocks.pageSizeSummary;
    if (pageSizeSummary !== local) throw new ProtocolError(`POSTCOPY_ADVISE: page size summary ${hex(pageSizeSummary)} != local ${hex(local)}`);
    this.noTransparentHugePages();
    this.uffd = openForMissing(this.blocks);
    // bulk workers write precopy pages from now on, never into a THP region
    this.bulkReady = true;
    for (const channel of this.pendingBulk.splice(0)) this.startBulk(channel);
    this.placer = new PagePlacer(this.uffd, (block, offset, length, fresh) => {
      this.postcopyPlaced(block, offset, length, fresh);
      if (this.bulkHeld && this.faults!.waiting === 0) this.releaseBulk();
    });
  }

  /**
   * Pages placed in postcopy, by any channel: counted by their received bits, so each page
   * missing at LISTEN counts exactly once (`fresh`), whoever placed it first; a page placed
   * again (a bulk worker's unreported placement before a break, sent again) is a duplicate.
   */
  private postcopyPlaced(block: GuestBlock, offset: number, length: number, fresh: number): void {
    this.lastPlacedAt = performance.now();
    this.pages.postcopyPlaced += fresh;
    this.pages.duplicate += length / TARGET_PAGE_SIZE - fresh;
    this.pages.requested += (this.faults?.placed(block, offset, length) ?? 0) * (block.pageSize / TARGET_PAGE_SIZE);
  }

  /**
   * No transparent huge pages, from before the first precopy page: a page written in precopy
   * would otherwise bring in a whole 2 MiB of zeros around it (THP "always", e.g. Debian's
   * kernels), present at LISTEN, so the pages there never fault and stay zero (or stale after a
   * discard). And a discard must drop 4 KiB.
   */
  private noTransparentHugePages(): void {
    for (const block of this.blocks) {
      const mapping = block.host!;
      if (!mapping.huge && !mapping.shared) mapping.madvise(0, mapping.length, 'nohugepage');
    }
  }

  /**
   * Drops the ranges' pages (one process_madvise per 1024 ranges where the kernel allows, so
   * one TLB flush per batch, not per range) and clears their received bits.
   */
  private discard(block: GuestBlock, ranges: readonly (readonly [number, number])[]): void {
    const start = performance.now();
    this.switchoverTimes.discardSyscalls += block.host!.discardRanges(ranges);
    for (const [offset, length] of ranges) {
      block.clearReceived(offset, length);
      this.pages.discarded += length / TARGET_PAGE_SIZE;
    }
    this.switchoverTimes.discardRanges += ranges.length;
    this.switchoverTimes.discardMs += performance.now() - start;
  }

  private listen(): void {
    const uffd = this.uffd!;
    for (const block of this.blocks) uffd.register(block.host!.address, block.host!.length, 'missing');
    this.views.clear();
    this.selfMemory?.close();
    this.selfMemory = null;
    this.faults = new FaultService(uffd, [...this.blocks], (block, offset, length) => this.requestPage(block, offset, length),
      (error) => this.fail(error), this.options.guestThreads ?? 0);
    this.faults.start();
    for (const block of this.blocks) this.pages.missingAtListen += block.receivedMap.size - block.receivedMap.count();
    for (const receiver of this.bulk) receiver?.listen(uffd);
    this.listenAt = performance.now();
    this.lastPlacedAt = this.listenAt;
    this.livenessTimer = setInterval(() => this.checkLiveness(), LIVENESS_TICK_MS);
  }

  private requestPage(block: GuestBlock, offset: number, length: number): boolean {
    if (this.state === 'FAILED') {
      this.guestStuck(`a guest thread faulted on block '${block.idstr}' offset ${hex(offset)} after the migration failed (${this.machine.failure?.message})`);
    }
    if (!this.main || this.main.closed || this.state === 'PAUSED') return false; // sent again on resume
    this.lastRequestAt = performance.now();
    this.main.send(this.requests.requestPages(block.idstr, offset, length));
    return true;
  }

  /**
   * Every tick: requests unanswered for `requestRetryMs` go again; threads waiting with nothing
   * placed for `noProgressSeconds` mean the source is not serving us: the connection is
   * treated as broken (recovery asks for every missing page again).
   */
  private checkLiveness(): void {
    const faults = this.faults;
    if (!faults || this.state === 'PAUSED' || this.state === 'END' || this.state === 'FAILED') return;
    faults.resendOverdue(this.settings.requestRetryMs);
    const now = performance.now();
    const boundMs = this.settings.noProgressSeconds * 1000;
    const oldest = faults.oldestWait;
    if (oldest && now - oldest.since > boundMs && now - this.lastPlacedAt > boundMs && this.main) {
      const error = new PostcopyError('ERR_POSTCOPY_NO_PROGRESS',
        `no progress: block '${oldest.block.idstr}' offset ${hex(oldest.hostOffset)} requested ${((now - oldest.since) / 1000).toFixed(1)} s ago, nothing placed for ${((now - this.lastPlacedAt) / 1000).toFixed(1)} s`);
      this.channelLost(this.main, error);
    }
  }

  private receivePage(channel: Channel, block: GuestBlock, offset: number, data: Uint8Array | null): void {
    if (!data) this.pages.zero++;
    if (!this.machine.atomicPlacement) return this.writePrecopy(block, offset, data);
    if (block.pageSize === TARGET_PAGE_SIZE) {
      if (block.isReceived(offset)) {
        this.pages.duplicate++;
        return;
      }
      return this.addToRun(block, offset, data);
    }
    let temp = this.tempPages.get(channel);
    if (!temp) this.tempPages.set(channel, (temp = new TempPage(channel.role, block.pageSize)));
    if (!temp.add(block, offset, data)) return;
    const hostOffset = temp.hostOffset;
    const perHost = block.pageSize / TARGET_PAGE_SIZE;
    if (block.isHostPageReceived(hostOffset)) this.pages.duplicate += perHost;
    else this.placer!.place(block, hostOffset, temp.allZero ? null : temp.buffer);
    temp.reset();
    this.checkComplete();
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
    this.checkComplete();
  }

  /** Before LISTEN nothing is registered: pages are plain writes. */
  private writePrecopy(block: GuestBlock, offset: number, data: Uint8Array | null): void {
    const self = (this.selfMemory ??= SelfMemory.open() ?? null);
    if (self) {
      // through the kernel: no page fault per fresh page (see SelfMemory)
      const address = block.host!.base + offset;
      if (data) self.write(address, data, 0, TARGET_PAGE_SIZE);
      else {
        self.read(address, this.zeroCheck, 0, TARGET_PAGE_SIZE);
        if (!isZeroPage(this.zeroCheck)) self.write(address, ZERO_PAGE, 0, TARGET_PAGE_SIZE); // untouched memory stays unallocated
      }
    } else {
      let view = this.views.get(block);
      if (!view) this.views.set(block, (view = block.host!.bytes()));
      if (data) view.set(data, offset);
      else if (!isZeroPage(view, offset)) view.fill(0, offset, offset + TARGET_PAGE_SIZE);
    }
    block.markReceived(offset, TARGET_PAGE_SIZE);
    this.pages.precopy++;
  }

  /** The first block with pages missing: its name, how many, the first missing offset. */
  private missingPages(): { block: GuestBlock; count: number; first: number } | undefined {
    for (const block of this.blocks) {
      const map = block.receivedMap;
      if (map.isFull()) continue;
      return { block, count: map.size - map.count(), first: map.findNextZero(0) * TARGET_PAGE_SIZE };
    }
    return undefined;
  }

  /**
   * END is a fact of the bitmaps: COMPLETE arrived and every received bit is set. Once the
   * source has said COMPLETE and every channel has ended, a page still missing can only be
   * lost: that fails the migration, naming it, instead of waiting for ever.
   */
  private checkComplete(): void {
    if (this.state !== 'RUNNING' || !this.sourceComplete) return;
    const missing = this.missingPages();
    if (!missing) return this.end();
    const main = this.main;
    const preemptEnded = !this.expectPreempt || (this.preemptChannel !== undefined && this.ended.has(this.preemptChannel));
    const bulkEnded = this.bulk.filter((r) => r?.ended).length === this.expectBulk;
    if (main && this.ended.has(main) && preemptEnded && bulkEnded) {
      const { block, count, first } = missing;
      this.fail(new PostcopyError('ERR_POSTCOPY_MISSING_PAGES',
        `the source completed with pages missing: block '${block.idstr}' lacks ${count} page(s), the first at offset ${hex(first)}`));
    }
  }

  private end(): void {
    this.transition('COMPLETE');
    this.endAt = performance.now();
    this.stopTimers();
    this.faults?.stop();
    this.stopBulk();
    // every page is here: no thread can block any more, so closing is safe
    for (const block of this.blocks) this.uffd?.unregister(block.host!.address, block.host!.length);
    this.uffd?.close();
    if (this.main && !this.main.closed) this.main.send(encodeShut(0)); // else the source learns it on resume
    this.emit('end', this.report());
  }

  /**
   * A channel broke (closed, reset, stalled, or the source stopped serving). In postcopy this
   * pauses: every page placed stays, every blocked guest thread stays blocked, and the source
   * has `recoverSeconds` to come back with the same session. Elsewhere it fails.
   */
  private channelLost(channel: Channel, error: Error): void {
    if (this.isCurrent(channel)) this.connectionLost(error);
  }

  private connectionLost(error: Error): void {
    if (this.state === 'END' || this.state === 'FAILED') return;
    if (this.state === 'PAUSED') {
      // the recovering connection broke too: the bound of the pause still runs
      this.dropChannels();
      return;
    }
    if (!this.machine.allows('CONNECTION_LOST') || this.settings.recoverSeconds <= 0) {
      const missing = this.machine.atomicPlacement ? ' (postcopy: pages still missing)' : '';
      return this.fail(new PostcopyError((error as PostcopyError).code ?? 'ERR_POSTCOPY_CHANNEL_CLOSED', `${error.message} in state ${this.state}${missing}`, { cause: error }));
    }
    this.flushRun(); // whole pages already decoded are good: keep them
    this.transition('CONNECTION_LOST');
    this.pausedAt = performance.now();
    this.dropChannels();
    this.recoveryDeadline = setTimeout(() => {
      this.fail(new PostcopyError('ERR_POSTCOPY_RECOVERY_TIMEOUT',
        `connection lost (${error.message}) and the source did not come back within ${this.settings.recoverSeconds} s`, { cause: error }));
    }, this.settings.recoverSeconds * 1000);
    this.emit('paused', error);
  }

  /** Forgets the current connection: its channels, half-gathered huge pages, EOF and COMPLETE. */
  private dropChannels(): void {
    this.releaseBulk();
    for (const channel of [this.main, this.preemptChannel]) {
      if (!channel) continue;
      this.bytesOfEarlierChannels += channel.bytesReceived;
      this.stallWatch.unwatch(channel);
      channel.destroy();
    }
    this.main = undefined;
    this.preemptChannel = undefined;
    this.stopBulk();
    for (const temp of this.tempPages.values()) temp.reset(); // unplaced: the source sends them again
    this.tempPages.clear();
    this.ended.clear();
    this.sourceComplete = false;
  }

  /** Stops every bulk channel's worker; pages they applied and did not report are sent again (EEXIST then). */
  private stopBulk(): void {
    this.bytesOfEarlierChannels += this.bulkBytesReceived();
    for (const receiver of this.bulk) receiver?.stop();
    this.bulk.length = 0;
    for (const channel of this.pendingBulk.splice(0)) channel.destroy();
    this.awaitingBulkSync = false;
    this.deferred.length = 0;
  }

  /** POSTCOPY_RESUME on a new main channel: back to the paused state, every request again. */
  private resume(channel: Channel): void {
    if (this.state === 'END') {
      channel.send(encodeResumeAck(ResumeState.END));
      channel.send(encodeShut(0));
      return;
    }
    if (this.state !== 'PAUSED') throw new ProtocolError(`POSTCOPY_RESUME is not allowed in state ${this.state} (only while PAUSED)`);
    clearTimeout(this.recoveryDeadline);
    this.recoveryDeadline = undefined;
    const resumed = this.machine.apply('POSTCOPY_RESUME');
    this.recovery.count++;
    this.recovery.pausedMs += performance.now() - this.pausedAt;
    this.lastPlacedAt = performance.now(); // the no-progress bound restarts with the connection
    channel.send(encodeResumeAck(resumed === 'LISTENING' ? ResumeState.LISTENING : ResumeState.RUNNING));
    this.faults?.resendAll();
    this.emit('resumed');
  }

  private bulkBytesReceived(): number {
    return this.bulk.reduce((sum, r) => sum + (r?.bytesReceived ?? 0), 0);
  }

  private stopTimers(): void {
    this.stallWatch.stop();
    clearInterval(this.livenessTimer);
    clearTimeout(this.recoveryDeadline);
    this.livenessTimer = undefined;
    this.recoveryDeadline = undefined;
    this.releaseBulk();
  }

  fail(error: Error): void {
    if (this.state === 'FAILED' || this.state === 'END') return;
    if (this.state === 'PAUSED') this.recovery.pausedMs += performance.now() - this.pausedAt;
    this.machine.fail(error);
    this.stopTimers();
    const main = this.main;
    if (main && !main.closed) {
      try {
        main.send(encodeShut(1));
        main.close();
      } catch {
        // the connection is what failed
      }
    }
    this.preemptChannel?.destroy();
    this.stopBulk(); // before the userfaultfd closes: no worker places anything after that
    this.selfMemory?.close();
    this.selfMemory = null;
    this.emit('failed', error);
    if (!this.uffd) return;
    endGuestSurely({
      uffd: this.uffd,
      blocks: this.blocks,
      registered: this.listenAt > 0,
      waiting: this.faults?.waiting ?? 0,
      stopFaults: () => this.faults?.stop(),
      stopGuest: this.options.stopGuest,
      stopTimeoutMs: this.settings.guestStopTimeoutMs,
      stuck: (message) => this.guestStuck(message),
    }, `the migration failed (${error.message})`);
  }

  private guestStuck(message: string): never {
    return this.settings.onGuestStuck(message);
  }

  report(): PostcopyReport {
    const now = this.endAt || performance.now();
    const blocktime = this.faults?.blocktime;
    const bytesTotal = [...this.blocks].reduce((sum, b) => sum + b.usedLength, 0);
    const postcopyMs = this.runAt ? now - this.runAt : 0;
    const postcopyBytes = this.pages.postcopyPlaced * TARGET_PAGE_SIZE;
    return {
      state: this.state,
      pages: {
        precopy: this.pages.precopy,
        streamed: this.pages.postcopyPlaced - this.pages.requested,
        requested: this.pages.requested,
        zero: this.pages.zero,
        discarded: this.pages.discarded,
        duplicate: this.pages.duplicate,
        missing_at_listen: this.pages.missingAtListen,
      },
      requests: { sent: this.faults?.requests ?? 0, resent: this.faults?.resent ?? 0 },
      recoveries: this.recovery.count,
      paused_ms: round(this.recovery.pausedMs + (this.state === 'PAUSED' ? performance.now() - this.pausedAt : 0)),
      bytes_total: bytesTotal,
      bytes_received: this.bytesOfEarlierChannels + (this.main?.bytesReceived ?? 0) + (this.preemptChannel?.bytesReceived ?? 0) + this.bulkBytesReceived(),
      bulk_channels: this.expectBulk,
      blocktime_ms: round(blocktime?.totalMs ?? 0),
      blocktime_per_thread_ms: blocktimePerThread(blocktime),
      latency_us: latencyReport(this.faults?.latency),
      downtime_ms: round(this.runAt && this.listenAt ? this.runAt - this.listenAt : 0),
      switchover: {
        discard_ms: round(this.switchoverTimes.discardMs),
        discard_ranges: this.switchoverTimes.discardRanges,
        discard_syscalls: this.switchoverTimes.discardSyscalls,
        listen_ms: round(this.switchoverTimes.listenMs),
        run_epoch_ms: this.runAt ? round(performance.timeOrigin + this.runAt, 3) : 0,
      },
      total_ms: round(now - this.started),
      postcopy_ms: round(postcopyMs),
      throughput_gb_per_s: postcopyMs > 0 ? round(postcopyBytes / (postcopyMs / 1000) / 1e9, 3) : 0,
    };
  }
}
