// The source of a postcopy migration, as QEMU's ram.c lays it out: precopy rounds over a dirty
// log (precopy.ts), the switchover (switchover.ts), then the postcopy phase, where the
// background scan streams what is left and a page request jumps the queue (page-sender.ts), over
// a map of what is dirty, sent and untouched (page-map.ts); recovery.ts heals a broken
// connection, report.ts reports.
//
// "Done" is a fact of the dirty bitmap: COMPLETE goes only once no page is left to send. A
// connection that breaks in postcopy is recovered: reconnect, learn from the destination's
// received bitmaps what it has, mark every other page dirty again, go on.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { PostcopyError, TARGET_PAGE_SIZE, isConnectionError } from '../base/index.js';
import { ShutStatus, type ReturnPathEvent } from '../wire/index.js';
import type { ConnectedChannel } from '../transport/index.js';
import type { GuestBlock } from '../pager/index.js';
import { BulkSenders } from './bulk-senders.js';
import { createDirtyLog, type DirtyLog } from './dirty-log.js';
import type { OutgoingOptions, OutgoingProgress } from './options.js';
import { PageMap } from './page-map.js';
import { PageSender, type StreamKind } from './page-sender.js';
import { PrecopyRounds, convergenceJudge, pagesAtRateMs } from './precopy.js';
import { Recovery } from './recovery.js';
import { newSourceCounts, outgoingReport, type Downtime, type OutgoingReport } from './report.js';
import { SourceChannels } from './source-channels.js';
import { Switchover } from './switchover.js';

const HEARTBEAT_MS = 1000;
/**
 * After the switchover the background stream waits for the PONG to a PING sent behind RUN, at
 * most this long: the destination's discards, LISTEN and RUN then have both CPUs of a small host
 * to themselves. Requests are answered meanwhile.
 */
const RUN_APPLIED_WAIT_MS = 100;

export class OutgoingMigration {
  readonly counts = newSourceCounts();
  private readonly map: PageMap;
  private readonly channels: SourceChannels;
  private readonly sender: PageSender;
  private readonly switchover: Switchover;
  private readonly recovery: Recovery | undefined;
  private readonly rounds = new PrecopyRounds();
  private phase: OutgoingProgress['phase'] = 'precopy';
  /** How long arming the dirty log (and finding untouched pages) took: the guest was held that long if holdGuest was given. */
  private logStartMs = 0;
  /** When the postcopy stream began (again, after a recovery) and its page count then: postcopyMaxMiBs counts from here. */
  private postcopyStart = { at: 0, sent: 0 };
  private readonly started = performance.now();
  /** Bytes and zero pages sent on the bulk channels of earlier connections. */
  private readonly bulkEarlier = { bytes: 0, zero: 0 };
  private shut: { status: number } | undefined;
  private onShut: (() => void) | undefined;
  /** A failure no recovery can heal (a malformed return path, the destination failed). */
  private fatal: Error | undefined;

  /** How long a channel may take nothing, or a step wait for the destination, before it counts as broken. */
  private readonly stallMs: number;

  constructor(private readonly options: OutgoingOptions) {
    this.stallMs = (options.stallSeconds ?? 5) * 1000;
    this.map = new PageMap(options.blocks);
    this.channels = new SourceChannels({
      main: options.main,
      preempt: options.preempt,
      stallMs: this.stallMs,
      heartbeatMs: HEARTBEAT_MS,
      onReturnPath: (event) => this.onReturnPath(event),
      onProtocolError: (error) => this.failFatally(error),
      phase: () => (this.phase === 'precopy' ? `precopy round ${this.rounds.round}` : this.phase),
    });
    this.sender = new PageSender(this.map, this.channels, this.counts, {
      throwIfBroken: () => this.throwIfBroken(),
      progress: () => this.progress(),
      rateLimit: (kind) => this.rateLimit(kind),
    }, options.batchMs ?? 0.2);
    this.switchover = new Switchover(this.map, this.channels, this.counts,
      { pauseGuest: options.pauseGuest, deviceState: options.deviceState, stallSeconds: options.stallSeconds ?? 5 }, () => this.throwIfBroken());
    const recoverSeconds = options.recoverSeconds ?? 30;
    if (options.reconnect && recoverSeconds > 0) {
      this.recovery = new Recovery(this.map, this.channels, this.counts, {
        reconnect: options.reconnect, recoverSeconds, preempt: options.preempt !== undefined, bulkChannels: options.bulk?.length ?? 0,
        fatal: () => this.fatal, sendRun: () => this.switchover.sendRun(), startBulk: (channels) => this.startBulk(channels),
      });
    }
    if (options.bulk?.length) this.startBulk(options.bulk);
  }

  private startBulk(channels: ConnectedChannel<GuestBlock>[]): void {
    const bulk: BulkSenders = new BulkSenders(channels, this.map.blocks, { heartbeatMs: HEARTBEAT_MS, stallMs: this.stallMs }, (error) => {
      if (this.sender.bulk !== bulk) return;
      // a worker that crashed is a bug, not a broken connection: no recovery would heal it
      if ((error as PostcopyError).code === 'ERR_POSTCOPY_INTERNAL') this.failFatally(error);
      else this.channels.markBrokenBy(error);
    });
    this.sender.bulk = bulk;
    if (this.phase === 'postcopy' || this.phase === 'paused') bulk.enterPostcopy(); // channels of a recovery
  }

  /** After a break: the bulk workers of the broken connection stop. */
  private stopBulk(): void {
    const bulk = this.sender.bulk;
    if (!bulk) return;
    this.bulkEarlier.bytes += bulk.bytesSent;
    this.bulkEarlier.zero += bulk.zeroPages;
    bulk.stop();
    this.sender.bulk = undefined;
  }

  private get bytesSent(): number {
    return this.channels.bytesSent + this.bulkEarlier.bytes + (this.sender.bulk?.bytesSent ?? 0);
  }

  private onReturnPath(event: ReturnPathEvent<GuestBlock>): void {
    switch (event.type) {
      case 'req-pages':
        this.counts.requestsReceived++;
        // a request never waits for the stream: in postcopy it is answered as soon as it is read
        return this.sender.request(event.block, event.start, event.length, this.phase === 'postcopy');
      case 'shut':
        this.shut = { status: event.status };
        if (event.status === ShutStatus.GUEST_ENDED) {
          const left = this.map.totalDirty;
          this.failFatally(new PostcopyError('ERR_POSTCOPY_GUEST_ENDED', `the destination's guest ended during ${this.phase}, with ${left} page(s) not yet sent: nothing more is wanted`));
        } else if (event.status !== ShutStatus.DONE) {
          this.failFatally(new PostcopyError('ERR_POSTCOPY_PEER_FAILED', `the destination failed (status ${event.status}) during ${this.phase}`));
        }
        this.onShut?.();
        return;
      case 'recv-bitmap':
        return this.recovery?.bitmap(event.block, event.bitmap);
      case 'resume-ack':
        return this.recovery?.resumeAck(event.value);
      default:
        return; // pong: the stall watch has seen the bytes already
    }
  }

  /** Fails for good: the current connection is dropped and every wait ends. */
  private failFatally(error: Error): void {
    this.fatal ??= error;
    this.channels.markBroken(this.channels.main.channel, error);
  }

  private progress(reason?: string): void {
    this.options.onProgress?.({
      phase: this.phase,
      round: this.rounds.round,
      pagesSent: this.counts.precopy + this.counts.postcopy + this.counts.requested,
      pagesLeft: this.map.totalDirty,
      bytesSent: this.bytesSent,
      elapsedMs: performance.now() - this.started,
      recoveries: this.counts.recoveries,
      reason,
      precopy: this.phase === 'precopy' ? this.rounds.progress(this.counts.precopy) : undefined,
    });
  }

  async run(): Promise<OutgoingReport> {
    const log = createDirtyLog(this.map.blocks.map((block, i) => ({
      mapping: block.host!,
      onDirty: (offset, length) => this.map.markDirty(i, offset, length),
    })), this.options.dirtyLog, this.options.holdGuest);
    try {
      const { main } = this.channels;
      main.channel.send(main.encoder.openReturnPath());
      main.channel.send(main.encoder.memSize(this.map.blocks.map((b) => ({ idstr: b.idstr, usedLength: b.usedLength, pageSize: b.pageSize }))));
      main.channel.send(main.encoder.endRam());
      main.channel.send(main.encoder.advise(this.options.blocks.pageSizeSummary));
      this.startDirtyLog(log);
      const precopyMs = await this.precopy(log);
      this.phase = 'switchover';
      const downtime = await this.switchover.run(log, this.sender.bulk);
      this.progress();
      const postcopyStart = performance.now();
      await this.postcopy();
      this.channels.close();
      return this.report(log.kind, precopyMs, downtime, performance.now() - postcopyStart);
    } catch (error) {
      const failure = this.fatal ?? (isConnectionError(error) ? this.nameBreak(error as Error) : error);
      this.channels.drop();
      this.stopBulk(); // the destination sees the connection end: it fails (or waits to recover)
      throw failure;
    } finally {
      log.stop();
      this.channels.stop();
    }
  }

  /**
   * Arms the dirty log and finds the untouched pages, with no write unseen in between. Where
   * arming leaves them unpopulated (soft-dirty), the pagemap is read after it. Where it marks
   * them (write-protect with WP_UNPOPULATED; the pagemap reports a marker as swapped), it is read
   * before, with the guest held until the log is armed (tens of ms per GiB), plus parking the
   * guest's threads. A first read without the hold tells whether any page is untouched at all:
   * a guest that has touched everything is never held. Without holdGuest, or where arming
   * populates every page anyway, there is nothing to find.
   */
  private startDirtyLog(log: DirtyLog): void {
    const start = performance.now();
    const hold = this.options.holdGuest;
    if (log.untouchedOnceArmed === 'unpopulated') {
      log.start();
      this.map.findUntouched();
    } else if (log.untouchedOnceArmed === 'marked' && hold && this.map.findUntouched()) {
      hold(() => {
        this.map.findUntouched();
        log.start();
      });
    } else log.start();
    this.logStartMs = performance.now() - start;
  }

  /**
   * Every page once, then what the guest dirtied, until converged, not converging (rounds that
   * no longer help: see convergenceJudge), or out of time.
   */
  private async precopy(log: DirtyLog): Promise<number> {
    const start = performance.now();
    if (this.options.precopySeconds <= 0) return 0;
    const deadline = start + this.options.precopySeconds * 1000;
    const converged = this.options.convergedPages ?? 256;
    const maxRounds = this.options.maxRounds ?? 1000;
    const judge = convergenceJudge();
    const rounds = this.rounds;
    rounds.end = 'time';
    rounds.begin(this.counts.precopy);
    while (performance.now() < deadline) {
      if (rounds.round >= maxRounds) {
        rounds.end = 'rounds';
        break;
      }
      rounds.round++;
      await this.sender.stream(() => performance.now() < deadline, 'precopy');
      const round = rounds.record(this.counts.precopy, log.sync() / TARGET_PAGE_SIZE, this.map.totalDirty);
      this.progress();
      if (round.left_pages <= converged) {
        rounds.end = 'converged';
        break;
      }
      if (judge(round) && this.options.stopWhenNotConverging !== false) {
        rounds.end = 'not-converging';
        break;
      }
    }
    return performance.now() - start;
  }

  /**
   * With `precopyMaxMiBs` or `postcopyMaxMiBs`: waits until the stream's pages since the round
   * (precopy) or postcopy began are within the rate. Requests are served meanwhile, as they are read.
   */
  private async rateLimit(kind: StreamKind): Promise<void> {
    const max = kind === 'precopy' ? this.options.precopyMaxMiBs : this.options.postcopyMaxMiBs;
    if (!max) return;
    const since = kind === 'precopy' ? this.rounds.start : this.postcopyStart;
    const aheadMs = pagesAtRateMs(this.counts[kind] - since.sent, max) - (performance.now() - since.at);
    if (aheadMs > 1) await Promise.race([sleep(aheadMs), this.channels.whenBroken()]);
  }

  /** Background scan with requests first, until the dirty bitmap is empty and COMPLETE is acknowledged. */
  private async postcopy(): Promise<void> {
    this.phase = 'postcopy';
    this.sender.bulk?.enterPostcopy();
    this.progress(); // postcopy has begun: the guest runs on the destination
    this.map.cursor = { block: 0, page: 0 };
    const startRateWindow = () => (this.postcopyStart = { at: performance.now(), sent: this.counts.postcopy });
    await this.channels.roundTrip(RUN_APPLIED_WAIT_MS);
    startRateWindow();
    for (;;) {
      if (this.channels.broken) {
        await this.recover(); // throws when it cannot
        startRateWindow(); // no burst to catch up on the pause
      }
      if (this.recovery?.destinationEnded) return;
      try {
        this.sender.serveRequests();
        if (this.map.nextDirty() === undefined) {
          if (await this.complete()) return;
          continue; // the connection broke before SHUT: recover, then finish again
        }
        await this.sender.stream(() => true, 'postcopy');
      } catch (error) {
        if (this.fatal) throw this.fatal;
        if (!this.channels.broken && !isConnectionError(error)) throw error;
        // e.g. a send on a channel that had just closed: note the break; recover above
        this.channels.markBroken(this.channels.main.channel, error as Error);
      }
    }
  }

  /**
   * Nothing is dirty: the end of both streams, COMPLETE, and the destination's SHUT. True once
   * the destination has acknowledged; false if the connection broke first.
   */
  private async complete(): Promise<boolean> {
    const left = this.map.totalDirty;
    if (left !== 0) throw new PostcopyError('ERR_POSTCOPY_INTERNAL', `internal: COMPLETE with ${left} page(s) still dirty`);
    const { main, preempt } = this.channels;
    void this.sender.bulk?.end(); // END after what the workers still hold; the destination waits for it
    if (preempt) {
      if (preempt.encoder.ramOpen) preempt.channel.send(preempt.encoder.endRam());
      preempt.channel.send(preempt.encoder.eof());
    }
    if (main.encoder.ramOpen) main.channel.send(main.encoder.endRam());
    main.channel.send(main.encoder.complete());
    main.channel.send(main.encoder.eof());
    this.channels.ended = true;
    this.phase = 'complete';
    this.progress();
    if (!this.shut) await Promise.race([this.channels.whenBroken(), new Promise<void>((r) => (this.onShut = r))]);
    this.onShut = undefined;
    if (this.fatal) throw this.fatal;
    if (this.shut) return true;
    this.phase = 'postcopy';
    return false;
  }

  /** The connection broke in postcopy: recovered, or the reason it cannot be is thrown. */
  private async recover(): Promise<void> {
    const reason = this.channels.broken!;
    if (this.fatal) throw this.fatal;
    if (!this.recovery) throw reason;
    this.stopBulk();
    this.phase = 'paused';
    this.progress(reason.message);
    this.sender.forgetRequests();
    await this.recovery.recover(reason);
    this.phase = this.recovery.destinationEnded ? 'complete' : 'postcopy';
    this.progress();
  }

  /** The break as the channels recorded it, naming the channel and phase. */
  private nameBreak(error: Error): Error {
    this.channels.markBroken(this.channels.main.channel, error); // no-op if already noted
    return this.channels.broken ?? error;
  }

  private throwIfBroken(): void {
    if (this.fatal) throw this.fatal;
    if (this.channels.broken) throw this.channels.broken;
  }

  private report(dirtyLog: DirtyLog['kind'], precopyMs: number, downtime: Downtime, postcopyMs: number): OutgoingReport {
    return outgoingReport({
      dirtyLog,
      dirtyLogStartMs: this.logStartMs,
      counts: this.counts,
      bulkZero: this.bulkEarlier.zero + (this.sender.bulk?.zeroPages ?? 0),
      discards: this.switchover.discards,
      downtime,
      precopyMs,
      precopy: this.rounds.report(),
      postcopyMs,
      totalMs: performance.now() - this.started,
      bytesSent: this.bytesSent,
      bulkChannels: this.options.bulk?.length ?? 0,
    });
  }
}
