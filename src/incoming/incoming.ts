// The destination of a postcopy migration: the state machine and what moves it. Each part of
// the work has its own module: admission.ts (who may join), connection.ts (the current
// connection), channel-reader.ts (reading main and preempt, the MULTIFD_FLUSH wait),
// bulk-channels.ts (bulk workers), page-intake.ts (precopy writes, atomic placement), the
// pager (fault service, placement, the sure stop) and report.ts.
//
// Liveness rules enforced here: END only when every received bit is set (COMPLETE with pages
// missing fails, naming them); a request unanswered for `requestRetryMs` is sent again;
// silence on a channel or no progress for a bound breaks the connection; a pause lasts at
// most `recoverSeconds`; after a failure the guest is stopped before the userfaultfd closes,
// and a guest that cannot be stopped ends the process (see docs/architecture.md).
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { PostcopyError, ProtocolError, TARGET_PAGE_SIZE, hex, isConnectionError } from '../base/index.js';
import type { Mapping, Userfaultfd } from '../kernel/index.js';
import { RamList } from '../memory/index.js';
import {
  Command,
  ResumeState,
  ReturnPathEncoder,
  commandName,
  encodePong,
  encodeRecvBitmap,
  encodeResumeAck,
  encodeShut,
  ShutStatus,
  type HelloFields,
  type MemSizeBlock,
  type StreamEvent,
} from '../wire/index.js';
import { StallWatch, type AcceptedChannel, type Channel } from '../transport/index.js';
import { FaultService, PagePlacer, endGuestSurely, openForMissing, type GuestBlock } from '../pager/index.js';
import { admissionRefusal } from './admission.js';
import { discardRanges, noTransparentHugePages } from './discard.js';
import { checkLayout } from './layout.js';
import { BulkChannels } from './bulk-channels.js';
import { ChannelReader } from './channel-reader.js';
import { Connection } from './connection.js';
import { incomingSettings, type IncomingOptions, type IncomingSettings } from './options.js';
import { PageIntake } from './page-intake.js';
import { incomingReport, type IncomingReport, type IncomingTimes, type PageCounts } from './report.js';
import { IncomingStateMachine, type IncomingState, type IncomingTransition } from './state.js';

/** Longest the main stream is held back for a waiting thread's page on the preempt channel. */
const STREAM_HOLD_MS = 1;
/**
 * Stream bytes read in one turn of the event loop in postcopy: a new fault is read (and its
 * request sent) after at most this much stream, 64 pages placed (libuv alone would read 2 MiB).
 */
const STREAM_TURN_BYTES = 256 << 10;
/** How often requests, progress and the pause are checked. */
const LIVENESS_TICK_MS = 100;

export interface IncomingMigration {
  on(event: 'state', listener: (state: IncomingState, from: IncomingState) => void): this;
  on(event: 'run', listener: () => void): this;
  on(event: 'device-state', listener: (data: Uint8Array) => void): this;
  on(event: 'paused', listener: (error: Error) => void): this;
  on(event: 'resumed', listener: () => void): this;
  on(event: 'end', listener: (report: IncomingReport) => void): this;
  on(event: 'failed', listener: (error: Error) => void): this;
}

export class IncomingMigration extends EventEmitter {
  readonly blocks: RamList<Mapping>;
  readonly machine = new IncomingStateMachine();
  private uffd: Userfaultfd | undefined;
  private faults: FaultService<GuestBlock> | undefined;
  private session: string | undefined;
  private readonly connection: Connection;
  private mainReader: ChannelReader | undefined;
  private readonly bulk: BulkChannels;
  private readonly intake: PageIntake;
  private readonly requests = new ReturnPathEncoder();
  private readonly stallWatch: StallWatch;
  private lastRequestAt = -Infinity;
  private lastPlacedAt = performance.now();
  private livenessTimer: NodeJS.Timeout | undefined;
  private recoveryDeadline: NodeJS.Timeout | undefined;
  private pausedAt = 0;
  private readonly times: IncomingTimes = { started: performance.now(), listenAt: 0, runAt: 0, endAt: 0, switchover: { discardMs: 0, discardRanges: 0, discardSyscalls: 0, listenMs: 0 } };
  private readonly settings: IncomingSettings;
  /** Target pages: precopy writes, postcopy placements (each page once), requests, and more. */
  readonly pages: PageCounts = { precopy: 0, postcopyPlaced: 0, requested: 0, zero: 0, discarded: 0, duplicate: 0, missingAtListen: 0 };
  readonly recovery = { count: 0, pausedMs: 0 };

  constructor(private readonly options: IncomingOptions = {}) {
    super();
    this.blocks = options.blocks ?? new RamList<Mapping>();
    this.settings = incomingSettings(options);
    this.stallWatch = new StallWatch(this.settings.stallSeconds * 1000, (channel, error) => this.channelLost(channel, error));
    this.connection = new Connection(this.stallWatch);
    this.intake = new PageIntake(this.blocks, this.pages, (block, offset) => this.faults?.isWaiting(block, offset) ?? false);
    this.bulk = new BulkChannels(this.blocks, this.settings.stallSeconds * 1000, {
      applied: (block, ranges, counts) => this.bulkApplied(block, ranges, counts),
      synced: () => this.bulkSynced(),
      ended: () => this.checkComplete(),
      failed: (error, connection) => (connection ? this.connectionLost(error) : this.fail(error)),
    });
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

  /** Whether a channel that passed authentication may join: a refusal reason, or undefined. */
  admit(hello: HelloFields): string | undefined {
    const c = this.connection;
    const refusal = admissionRefusal(hello, {
      session: this.session, state: this.state, failure: this.machine.failure, mainAlive: c.mainAlive, preemptAlive: c.preemptAlive,
      expectBulk: c.expectBulk, hasBulk: (index) => this.bulk.has(index),
    });
    if (!refusal) this.session = hello.sessionId;
    return refusal;
  }

  /** Takes a channel that passed the handshake; the main one also carries the return path. */
  attach({ channel, decoder, hello }: AcceptedChannel<GuestBlock>): void {
    this.session ??= hello.sessionId;
    if (channel.role === 'bulk') {
      if (decoder.pending > 0) {
        channel.destroy();
        return this.fail(new ProtocolError(`${channel.name} channel: ${decoder.pending} byte(s) sent before HELLO_ACK`));
      }
      return this.bulk.add(channel, this.times.listenAt > 0 ? this.uffd : undefined);
    }
    if (channel.role === 'main') {
      // a new main channel means the source saw the old one die: pause (or, after END, just drop it)
      if (this.connection.mainAlive) {
        if (this.machine.atomicPlacement) this.channelLost(this.connection.main!, new PostcopyError('ERR_POSTCOPY_CHANNEL_CLOSED', 'the source opened a new main channel'));
        else this.dropConnection();
      }
      if (this.state === 'FAILED') return channel.destroy();
      this.connection.useMain(channel, hello);
      this.requests.resetBlock(); // the new connection has not heard of any block yet
    } else {
      this.connection.preempt = channel;
    }
    this.stallWatch.watch(channel);
    const reader = new ChannelReader(channel, decoder, {
      event: (event, from) => this.handle(event, from),
      read: (from) => this.afterRead(from),
      error: (error, from) => this.readFailed(error, from),
      closed: (from) => this.channelLost(from, from.error!),
    }, () => this.connection.isCurrent(channel) && this.state !== 'FAILED');
    if (channel.role === 'main') this.mainReader = reader;
  }

  /**
   * After each read: the pending run is placed. In postcopy the main stream never keeps this
   * thread from a fault or from the preempt channel for long: it yields its turn of the event
   * loop after STREAM_TURN_BYTES, or at once while a thread waits. For a request just sent it
   * steps aside for a moment (holdFor), which through TCP backpressure also slows the source's
   * stream while the answer comes.
   */
  private afterRead(channel: Channel): void {
    this.intake.flush();
    this.checkComplete();
    const reader = this.mainReader;
    if (channel !== this.connection.main || !reader || !this.faults) return;
    const waiting = this.faults.waiting > 0;
    if (waiting && this.connection.preempt && performance.now() - this.lastRequestAt < STREAM_HOLD_MS) reader.holdFor(STREAM_HOLD_MS);
    else if (waiting || reader.bytesThisTurn >= STREAM_TURN_BYTES) reader.yieldTurn();
  }

  /** An answer that could not be written means a broken connection; anything else is fatal. */
  private readFailed(error: Error, channel: Channel): void {
    if (isConnectionError(error)) return this.channelLost(channel, error);
    this.fail(error);
    channel.destroy();
  }

  /** What a bulk worker wrote (precopy) or placed: the received bits, and the waits they end. */
  private bulkApplied(block: GuestBlock, ranges: Float64Array, counts: { pages: number; zero: number }): void {
    if (this.state === 'FAILED') return;
    this.pages.zero += counts.zero;
    if (!this.machine.atomicPlacement) {
      this.pages.precopy += counts.pages;
      for (let i = 0; i < ranges.length; i += 2) block.markReceived(ranges[i], ranges[i + 1]);
      return;
    }
    for (let i = 0; i < ranges.length; i += 2) this.placed(block, ranges[i], ranges[i + 1], block.markReceived(ranges[i], ranges[i + 1]));
    this.checkComplete();
  }

  /** A bulk channel synced: the main stream goes on past MULTIFD_FLUSH once all have. */
  private bulkSynced(): void {
    if (this.mainReader?.atFlush && this.bulk.takeSync(this.connection.expectBulk)) this.mainReader.release();
  }

  /**
   * Pages placed in postcopy, by any channel: counted by their received bits, so each page
   * missing at LISTEN counts exactly once (`fresh`), whoever placed it first; a page placed
   * again (a bulk worker's unreported placement before a break, sent again) is a duplicate.
   */
  private placed(block: GuestBlock, offset: number, length: number, fresh: number): void {
    this.lastPlacedAt = performance.now();
    this.pages.postcopyPlaced += fresh;
    this.pages.duplicate += length / TARGET_PAGE_SIZE - fresh;
    this.pages.requested += (this.faults?.placed(block, offset, length) ?? 0) * (block.pageSize / TARGET_PAGE_SIZE);
    if (this.faults?.waiting === 0) this.mainReader?.endHold();
  }

  private handle(event: StreamEvent<GuestBlock>, channel: Channel): void {
    switch (event.type) {
      case 'ram-page':
        return this.intake.receive(channel, event.block, event.offset, event.data, this.machine.atomicPlacement);
      case 'ram-zero':
        return this.intake.receive(channel, event.block, event.offset, null, this.machine.atomicPlacement);
      case 'mem-size':
        return checkLayout(this.blocks, event.blocks, this.options.allocate);
      case 'command':
        this.intake.flush(); // commands are ordering points: pages before them are placed first
        return this.command(event, channel);
      case 'multifd-flush':
        // what follows (discards, LISTEN) must not overtake a page still on a bulk channel
        if (channel.role === 'main' && this.connection.expectBulk > 0 && !this.bulk.takeSync(this.connection.expectBulk)) this.mainReader?.waitAtFlush();
        return;
      case 'eof':
        this.intake.flush();
        // after COMPLETE, pages may still be in flight on the preempt channel
        if (channel.role === 'main' && !this.connection.sourceComplete && this.state !== 'END') throw new ProtocolError(`EOF in state ${this.state} before COMPLETE`);
        this.connection.endOf(channel);
        return this.checkComplete();
      default:
        return; // header, ram-eos: framing only
    }
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
      case Command.POSTCOPY_LISTEN:
        return this.listen();
      case Command.PACKAGED:
        this.emit('device-state', event.data);
        return;
      case Command.POSTCOPY_RUN:
        this.transition('POSTCOPY_RUN');
        this.times.runAt = performance.now();
        this.emit('run');
        return this.checkComplete();
      case Command.COMPLETE:
        if (this.state !== 'RUNNING') throw new ProtocolError(`COMPLETE is not allowed in state ${this.state}`);
        this.connection.sourceComplete = true;
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
    noTransparentHugePages(this.blocks);
    this.uffd = openForMissing(this.blocks);
    this.bulk.start(); // bulk workers write precopy pages from now on, never into a THP region
    this.intake.advise(new PagePlacer<GuestBlock>(this.uffd, (block, offset, length, fresh) => this.placed(block, offset, length, fresh)));
  }

  /** Drops the ranges' pages and clears their received bits. */
  private discard(block: GuestBlock, ranges: readonly (readonly [number, number])[]): void {
    const start = performance.now();
    const switchover = this.times.switchover;
    switchover.discardSyscalls += discardRanges(block, ranges);
    this.pages.discarded += ranges.reduce((pages, [, length]) => pages + length / TARGET_PAGE_SIZE, 0);
    switchover.discardRanges += ranges.length;
    switchover.discardMs += performance.now() - start;
  }

  /** LISTEN: every block registered for MISSING faults, fault service on; placement is atomic from here. */
  private listen(): void {
    const start = performance.now();
    this.transition('POSTCOPY_LISTEN');
    const uffd = this.uffd!;
    for (const block of this.blocks) uffd.register(block.host!.address, block.host!.length, 'missing');
    this.intake.listen();
    this.faults = new FaultService<GuestBlock>(uffd, [...this.blocks], (block, offset, length) => this.requestPage(block, offset, length),
      (error) => this.fail(error), this.options.guestThreads ?? 0);
    this.faults.start();
    for (const block of this.blocks) this.pages.missingAtListen += block.receivedMap.size - block.receivedMap.count();
    this.bulk.listen(uffd);
    this.times.listenAt = performance.now();
    this.lastPlacedAt = this.times.listenAt;
    this.livenessTimer = setInterval(() => this.checkLiveness(), LIVENESS_TICK_MS);
    this.times.switchover.listenMs += performance.now() - start;
  }

  private requestPage(block: GuestBlock, offset: number, length: number): boolean {
    if (this.state === 'FAILED') {
      this.guestStuck(`a guest thread faulted on block '${block.idstr}' offset ${hex(offset)} after the migration failed (${this.machine.failure?.message})`);
    }
    const main = this.connection.main;
    if (!main || main.closed || this.state === 'PAUSED') return false; // sent again on resume
    this.lastRequestAt = performance.now();
    main.send(this.requests.requestPages(block.idstr, offset, length));
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
    const main = this.connection.main;
    if (oldest && now - oldest.since > boundMs && now - this.lastPlacedAt > boundMs && main) {
      this.channelLost(main, new PostcopyError('ERR_POSTCOPY_NO_PROGRESS',
        `no progress: block '${oldest.block.idstr}' offset ${hex(oldest.hostOffset)} requested ${((now - oldest.since) / 1000).toFixed(1)} s ago, nothing placed for ${((now - this.lastPlacedAt) / 1000).toFixed(1)} s`));
    }
  }

  /**
   * END is a fact of the bitmaps: COMPLETE arrived and every received bit is set. Once the
   * source has said COMPLETE and every channel has ended, a page still missing can only be
   * lost: that fails the migration, naming it, instead of waiting for ever.
   */
  private checkComplete(): void {
    if (this.state !== 'RUNNING' || !this.connection.sourceComplete) return;
    const missing = [...this.blocks].find((b) => !b.receivedMap.isFull());
    if (!missing) return this.end();
    if (!this.connection.allEnded(this.bulk.endedCount)) return;
    const map = missing.receivedMap;
    this.fail(new PostcopyError('ERR_POSTCOPY_MISSING_PAGES',
      `the source completed with pages missing: block '${missing.idstr}' lacks ${map.size - map.count()} page(s), the first at offset ${hex(map.findNextZero(0) * TARGET_PAGE_SIZE)}`));
  }

  private end(): void {
    this.transition('COMPLETE');
    this.times.endAt = performance.now();
    this.stopTimers();
    this.faults?.stop();
    this.bulk.stop();
    // every page is here: no thread can block any more, so closing is safe
    for (const block of this.blocks) this.uffd?.unregister(block.host!.address, block.host!.length);
    this.uffd?.close();
    const main = this.connection.main;
    if (main && !main.closed) main.send(encodeShut(ShutStatus.DONE)); // else the source learns it on resume
    this.emit('end', this.report());
  }

  /**
   * A channel broke (closed, reset, stalled, or the source stopped serving). In postcopy this
   * pauses: every page placed stays, every blocked guest thread stays blocked, and the source
   * has `recoverSeconds` to come back with the same session. Elsewhere it fails.
   */
  private channelLost(channel: Channel, error: Error): void {
    if (this.connection.isCurrent(channel)) this.connectionLost(error);
  }

  private connectionLost(error: Error): void {
    if (this.state === 'END' || this.state === 'FAILED') return;
    if (this.state === 'PAUSED') return this.dropConnection(); // the recovering connection broke too: the bound still runs
    if (!this.machine.allows('CONNECTION_LOST') || this.settings.recoverSeconds <= 0) {
      const missing = this.machine.atomicPlacement ? ' (postcopy: pages still missing)' : '';
      return this.fail(new PostcopyError((error as PostcopyError).code ?? 'ERR_POSTCOPY_CHANNEL_CLOSED', `${error.message} in state ${this.state}${missing}`, { cause: error }));
    }
    this.intake.flush(); // whole pages already decoded are good: keep them
    this.transition('CONNECTION_LOST');
    this.pausedAt = performance.now();
    this.dropConnection();
    this.recoveryDeadline = setTimeout(() => {
      this.fail(new PostcopyError('ERR_POSTCOPY_RECOVERY_TIMEOUT',
        `connection lost (${error.message}) and the source did not come back within ${this.settings.recoverSeconds} s`, { cause: error }));
    }, this.settings.recoverSeconds * 1000);
    this.emit('paused', error);
  }

  /** Forgets the current connection: its channels, bulk workers, half-assembled huge pages, EOF and COMPLETE. */
  private dropConnection(): void {
    this.mainReader?.endHold();
    this.mainReader = undefined;
    this.connection.drop();
    this.bulk.stop();
    this.intake.dropAssemblies(); // unplaced: the source sends them again
  }

  /** POSTCOPY_RESUME on a new main channel: back to the paused state, every request again. */
  private resume(channel: Channel): void {
    if (this.state === 'END') {
      channel.send(encodeResumeAck(ResumeState.END));
      channel.send(encodeShut(ShutStatus.DONE));
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

  private stopTimers(): void {
    this.stallWatch.stop();
    clearInterval(this.livenessTimer);
    clearTimeout(this.recoveryDeadline);
    this.livenessTimer = undefined;
    this.recoveryDeadline = undefined;
    this.mainReader?.endHold();
  }

  /** The guest is gone (its VM stopped) before every page arrived: failed here, and SHUT tells
   *  the source that nothing more is wanted (it ends at once, and not as a fault of its own). */
  guestEnded(reason: string): void {
    this.fail(new PostcopyError('ERR_POSTCOPY_GUEST_ENDED', `the guest ended before its pages all arrived: ${reason}`), ShutStatus.GUEST_ENDED);
  }

  fail(error: Error, shutStatus: number = ShutStatus.FAILED): void {
    if (this.state === 'FAILED' || this.state === 'END') return;
    if (this.state === 'PAUSED') this.recovery.pausedMs += performance.now() - this.pausedAt;
    this.machine.fail(error);
    this.stopTimers();
    const { main, preempt } = this.connection;
    if (main && !main.closed) {
      try {
        main.send(encodeShut(shutStatus));
        main.close();
      } catch {
        // the connection is what failed
      }
    }
    preempt?.destroy();
    this.bulk.stop(); // before the userfaultfd closes: no worker places anything after that
    this.intake.close();
    this.emit('failed', error);
    if (!this.uffd) return;
    endGuestSurely({
      uffd: this.uffd, blocks: this.blocks, registered: this.times.listenAt > 0, waiting: this.faults?.waiting ?? 0,
      stopFaults: () => this.faults?.stop(), stopGuest: this.options.stopGuest, stopTimeoutMs: this.settings.guestStopTimeoutMs,
      stuck: (message) => this.guestStuck(message),
    }, `the migration failed (${error.message})`);
  }

  private guestStuck(message: string): never {
    return this.settings.onGuestStuck(message);
  }

  report(): IncomingReport {
    const now = performance.now();
    return incomingReport({
      state: this.state,
      pages: this.pages,
      times: this.times,
      requests: { sent: this.faults?.requests ?? 0, resent: this.faults?.resent ?? 0 },
      recovery: { count: this.recovery.count, pausedMs: this.recovery.pausedMs + (this.state === 'PAUSED' ? now - this.pausedAt : 0) },
      bytesTotal: [...this.blocks].reduce((sum, b) => sum + b.usedLength, 0),
      bytesReceived: this.connection.bytesReceived + this.bulk.bytesReceived,
      bulkChannels: this.connection.expectBulk,
      blocktime: this.faults?.blocktime,
      latency: this.faults?.latency,
    }, now);
  }
}
