// The source of a postcopy migration: precopy rounds over a dirty log, switchover (pause the
// guest, final sync, discard what changed since it was sent, LISTEN, device state, RUN), then
// the postcopy phase, where a background scan streams what is left and a page request jumps
// the queue (on the preempt channel when there is one) and the scan resumes right after it.
//
// "Done" is a fact of the dirty bitmap: COMPLETE goes only once no page is left to send. A
// connection that breaks in postcopy is recovered: reconnect, learn from the destination's
// received bitmaps what it has, mark every other page dirty again, go on.
import { performance } from 'node:perf_hooks';
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';
import { PagemapReader, type Mapping } from '../kernel/index.js';
import { Bitmap, isZeroPage, type RamBlock, type RamList } from '../memory/index.js';
import { ResumeState, type ReturnPathEvent } from '../wire/index.js';
import type { ChannelRole, ConnectedChannel } from '../transport/index.js';
import { createDirtyLog, type DirtyLog, type HoldWriters } from './dirty-log.js';
import { SourceChannels } from './source-channels.js';
import { BulkSenders } from './bulk-senders.js';
import { isConnectionError, PostcopyError, round, TARGET_PAGE_SIZE } from '../base/index.js';

export type SourceBlock = RamBlock<Mapping>;

export interface OutgoingOptions {
  blocks: RamList<Mapping>;
  main: ConnectedChannel<SourceBlock>;
  /** Carries only requested pages, so a request never waits behind the background stream. */
  preempt?: ConnectedChannel<SourceBlock>;
  /**
   * Bulk channels (their number announced in the main channel's HELLO): precopy and the
   * postcopy background stream go on them, in packets, each fed by its own worker thread.
   */
  bulk?: ConnectedChannel<SourceBlock>[];
  /**
   * Opens a channel of this migration again (same session, same token) after a connection
   * broke in postcopy (`index`: a bulk channel's number). Without it a broken connection fails the migration.
   */
  reconnect?: (role: ChannelRole, timeoutSeconds: number, index?: number) => Promise<ConnectedChannel<SourceBlock>>;
  /** How long recovery may try to reconnect (default 30 s; 0: a break fails the migration). */
  recoverSeconds?: number;
  /** The return path silent this long means a broken connection (default 5 s). */
  stallSeconds?: number;
  /** Seconds of precopy before switching to postcopy; 0 = straight to postcopy. */
  precopySeconds: number;
  /** Stop precopy early once fewer pages than this are dirty after a round. */
  convergedPages?: number;
  maxRounds?: number;
  /**
   * Stop precopy early once rounds stop helping (default true): the guest dirties as fast as
   * the rounds send, or the dirty set does not shrink (see convergenceJudge). Postcopy then
   * moves what is left, once.
   */
  stopWhenNotConverging?: boolean;
  /** Parks the guest at a barrier (nothing half-written) for the switchover. */
  pauseGuest: () => Promise<void>;
  /** Device state sent in PACKAGED before RUN. */
  deviceState?: () => Uint8Array;
  dirtyLog?: DirtyLog['kind'];
  /** Holds the guest still while `critical` runs (synchronously); the soft-dirty dirty log needs it. */
  holdGuest?: HoldWriters;
  onProgress?: (progress: OutgoingProgress) => void;
  /** Precopy sends at most this many MiB/s (QEMU's max-bandwidth; default: no limit). */
  precopyMaxMiBs?: number;
  /**
   * The postcopy background stream sends at most this many MiB/s (QEMU's max-postcopy-bandwidth;
   * default: no limit). Requested pages are never held back, nor counted.
   */
  postcopyMaxMiBs?: number;
  /**
   * A batch of the stream ends after this many milliseconds (default 0.2), so that a request
   * read meanwhile waits for at most one batch. Even at 0 a batch sends one host page.
   */
  batchMs?: number;
}

export interface OutgoingProgress {
  phase: 'precopy' | 'switchover' | 'postcopy' | 'paused' | 'complete';
  round: number;
  pagesSent: number;
  pagesLeft: number;
  bytesSent: number;
  elapsedMs: number;
  recoveries: number;
  /** Why the connection is paused (phase 'paused'). */
  reason?: string;
  /**
   * Precopy only: the send rate of the round under way, and the last finished round (with the
   * guest's dirty rate over it).
   */
  precopy?: { sendMiBs: number; lastRound?: PrecopyRound };
}

/** One precopy round, from the sync before it to the sync that ends it. */
export interface PrecopyRound {
  round: number;
  /** Target pages sent in the round. */
  sent_pages: number;
  /** Target pages the guest wrote during the round (found dirty again at its sync). */
  dirtied_pages: number;
  /** Pages still to send after the round's sync. */
  left_pages: number;
  ms: number;
  send_mib_s: number;
  dirty_mib_s: number;
}

/**
 * Why precopy ended: few enough pages left ('converged'), rounds that no longer shrink the dirty
 * set ('not-converging'), `precopySeconds` over ('time'), `maxRounds` done ('rounds'), or no
 * precopy at all ('skipped').
 */
export type PrecopyEnd = 'converged' | 'not-converging' | 'time' | 'rounds' | 'skipped';

export interface DowntimeParts {
  pause: number;
  sync: number;
  discard: number;
  /** Encoding LISTEN, the device state and RUN. */
  commands: number;
  /** Handing the switchover's one buffer to the kernel (on loopback this includes waking the destination). */
  write: number;
}

export interface OutgoingReport {
  dirty_log: DirtyLog['kind'];
  /** Arming the dirty log and finding the untouched pages, with the guest held if holdGuest was given. */
  dirty_log_start_ms: number;
  rounds: number;
  /** zero: sent as zero pages, on every channel; untouched: of those, never populated here, so never read. */
  pages_sent: { precopy: number; postcopy: number; requested: number; zero: number; untouched: number };
  /** skipped: already sent (in flight); resent: asked for again after a skip, sent again. */
  requests: { received: number; skipped: number; resent: number };
  discarded_pages: number;
  /** Connections recovered, pages sent again because they had not arrived, time PAUSED. */
  recoveries: number;
  pages_resent: number;
  paused_ms: number;
  downtime_ms: number;
  /**
   * Where the downtime went: parking the guest, the final dirty sync, the discards of pages
   * dirtied since the last sync before the pause, LISTEN, device state and RUN, the write.
   */
  downtime_parts_ms: DowntimeParts;
  /** When the pause began (epoch milliseconds), to set beside the destination's RUN on the same host. */
  pause_epoch_ms: number;
  /**
   * The discards: most are known before the pause (pages dirtied after they were sent, as of
   * the last sync) and are applied by the destination while the guest still runs here; only
   * what the guest dirtied after that goes in the pause. `before_pause_ms` is the time from
   * that sync to the destination's acknowledgement (not downtime).
   */
  discards: { before_pause_pages: number; before_pause_ranges: number; before_pause_ms: number; in_pause_pages: number; in_pause_ranges: number };
  precopy_ms: number;
  precopy_end: PrecopyEnd;
  /** The last PRECOPY_ROUNDS_KEPT rounds (all of them when there were no more). */
  precopy_rounds: PrecopyRound[];
  /** Over every round, including any no longer in `precopy_rounds`. */
  precopy_totals: { rounds: number; sent_pages: number; dirtied_pages: number; ms: number; send_mib_s: number; dirty_mib_s: number };
  postcopy_ms: number;
  total_ms: number;
  bytes_sent: number;
  /** Bulk channels (0: pages went on the main channel). */
  bulk_channels: number;
}

/**
 * Before the pause, discards are sent and acknowledged in rounds until a round finds at most
 * this many pages (what the guest dirtied during the previous round trip), or this many rounds.
 */
const PRE_PAUSE_DISCARD_ENOUGH = 64;
const PRE_PAUSE_DISCARD_ROUNDS = 4;
/** A batch of the stream ends at this many pages or `batchMs`, whichever comes first. */
const BATCH_PAGES = 256;
/** Target pages handed to the bulk channels between two looks at the return path. */
const BULK_BATCH_PAGES = 1024;
const HEARTBEAT_MS = 1000;
/** The report keeps this many precopy rounds (the last ones); the totals cover all. */
const PRECOPY_ROUNDS_KEPT = 64;
/**
 * Precopy is not converging once OUTPACED_ROUNDS rounds in a row dirtied at least what they
 * sent, or once NOT_HELPING_WINDOW rounds did not shrink the dirty set to WINDOW_SHRINK of
 * what it was (see convergenceJudge).
 */
const OUTPACED_ROUNDS = 2;
const NOT_HELPING_WINDOW = 3;
const WINDOW_SHRINK = 0.5;
const MIB_PER_PAGE = TARGET_PAGE_SIZE / 2 ** 20;
/** Reconnection attempts back off from the first delay to the last. */
const RECONNECT_DELAYS_MS = [50, 100, 200, 500, 1000, 2000];

interface Cursor {
  block: number;
  page: number;
}

export class OutgoingMigration {
  private readonly blocks: SourceBlock[];
  /** Target pages still to send, per block. */
  private readonly dirty = new Map<SourceBlock, Bitmap>();
  /** Target pages sent at least once: a page dirtied after it was sent must be discarded. */
  private readonly sent = new Map<SourceBlock, Bitmap>();
  private readonly views = new Map<SourceBlock, Uint8Array>();
  /**
   * Target pages of private memory that were unpopulated when the dirty log was armed (see
   * startDirtyLog) and that no sync has reported written since: they read as zeros, so they go
   * as zero pages unread.
   * Reading would fault each one in (10-40 µs a page on a paravirtualized host) and grow the
   * source's page tables for nothing. Every sync clears the bits of the pages it reports.
   */
  private readonly untouched = new Map<SourceBlock, Bitmap>();
  /** How long arming the dirty log (and finding untouched pages) took: the guest was held that long if holdGuest was given. */
  private logStartMs = 0;
  private requests: { block: SourceBlock; start: number; length: number }[] = [];
  /** Requested host pages skipped as already sent: asked for again, they go again. */
  private skippedRequests = new Set<number>();
  private cursor: Cursor = { block: 0, page: 0 };
  private phase: OutgoingProgress['phase'] = 'precopy';
  private round = 0;
  private precopyEnd: PrecopyEnd = 'skipped';
  private readonly precopyRounds: PrecopyRound[] = [];
  private readonly precopyTotals = { rounds: 0, sent_pages: 0, dirtied_pages: 0, ms: 0 };
  /** The round under way: when it began and the precopy page count then. */
  private roundStart = { at: 0, sent: 0 };
  /** When the postcopy stream began (again, after a recovery) and its page count then: postcopyMaxMiBs counts from here. */
  private postcopyStart = { at: 0, sent: 0 };
  private readonly started = performance.now();
  private readonly channels: SourceChannels;
  /** The bulk channels of the current connection, if the migration has any. */
  private bulk: BulkSenders | undefined;
  /** Bytes and zero pages sent on the bulk channels of earlier connections. */
  private readonly bulkEarlier = { bytes: 0, zero: 0 };
  private shut: { status: number } | undefined;
  private onShut: (() => void) | undefined;
  /** A failure no recovery can heal (a malformed return path, the destination failed). */
  private fatal: Error | undefined;
  private recovering: { bitmaps: Map<SourceBlock, Bitmap>; ack: number | undefined; wake: () => void } | undefined;
  /** The destination had every page already when a recovery asked (RESUME_ACK said END). */
  private destinationEnded = false;
  private readonly recoverSeconds: number;
  readonly counts = {
    precopy: 0, postcopy: 0, requested: 0, zero: 0, untouched: 0, requestsReceived: 0, requestsSkipped: 0, requestsResent: 0, discarded: 0,
    recoveries: 0, pagesResent: 0, pausedMs: 0,
  };
  private readonly discardCounts = { before_pause_pages: 0, before_pause_ranges: 0, before_pause_ms: 0, in_pause_pages: 0, in_pause_ranges: 0 };

  constructor(private readonly options: OutgoingOptions) {
    this.blocks = [...options.blocks];
    for (const block of this.blocks) {
      const dirty = new Bitmap(block.targetPages);
      dirty.fill();
      this.dirty.set(block, dirty);
      this.sent.set(block, new Bitmap(block.targetPages));
      this.views.set(block, block.host!.bytes());
    }
    this.recoverSeconds = options.reconnect ? options.recoverSeconds ?? 30 : 0;
    this.channels = new SourceChannels({
      main: options.main,
      preempt: options.preempt,
      stallMs: (options.stallSeconds ?? 5) * 1000,
      heartbeatMs: HEARTBEAT_MS,
      onReturnPath: (event) => this.onReturnPath(event),
      onProtocolError: (error) => this.failFatally(error),
      phase: () => (this.phase === 'precopy' ? `precopy round ${this.round}` : this.phase),
    });
    if (options.bulk?.length) this.bulk = this.startBulk(options.bulk);
  }

  private startBulk(channels: ConnectedChannel<SourceBlock>[]): BulkSenders {
    const bulk: BulkSenders = new BulkSenders(channels, this.blocks, HEARTBEAT_MS, (error) => {
      if (this.bulk !== bulk) return;
      // a worker that crashed is a bug, not a broken connection: no recovery would heal it
      if ((error as PostcopyError).code === 'ERR_POSTCOPY_INTERNAL') this.failFatally(error);
      else this.channels.markBrokenBy(error);
    });
    return bulk;
  }

  /** After a break: the bulk workers of the broken connection stop. */
  private stopBulk(): void {
    if (!this.bulk) return;
    this.bulkEarlier.bytes += this.bulk.bytesSent;
    this.bulkEarlier.zero += this.bulk.zeroPages;
    this.bulk.stop();
    this.bulk = undefined;
  }

  private get bytesSent(): number {
    return this.channels.bytesSent + this.bulkEarlier.bytes + (this.bulk?.bytesSent ?? 0);
  }

  private onReturnPath(event: ReturnPathEvent<SourceBlock>): void {
    switch (event.type) {
      case 'req-pages':
        this.counts.requestsReceived++;
        this.requests.push({ block: event.block, start: event.start, length: event.length });
        // a request never waits for the stream: it is answered as soon as it is read
        if (this.phase === 'postcopy') this.serveRequests();
        return;
      case 'shut':
        this.shut = { status: event.status };
        if (event.status !== 0) this.failFatally(new PostcopyError('ERR_POSTCOPY_PEER_FAILED', `the destination failed (status ${event.status}) during ${this.phase}`));
        this.onShut?.();
        return;
      case 'recv-bitmap':
        this.recovering?.bitmaps.set(event.block, event.bitmap);
        this.recovering?.wake();
        return;
      case 'resume-ack':
        if (this.recovering) this.recovering.ack = event.value;
        this.recovering?.wake();
        return;
      default:
        return; // pong: the stall watch has seen the bytes already
    }
  }

  /** Fails for good: the current connection is dropped and every wait ends. */
  private failFatally(error: Error): void {
    this.fatal ??= error;
    this.channels.markBroken(this.channels.main.channel, error);
  }

  private get totalDirty(): number {
    let n = 0;
    for (const bitmap of this.dirty.values()) n += bitmap.count();
    return n;
  }

  private progress(reason?: string): void {
    this.options.onProgress?.({
      phase: this.phase,
      round: this.round,
      pagesSent: this.counts.precopy + this.counts.postcopy + this.counts.requested,
      pagesLeft: this.totalDirty,
      bytesSent: this.bytesSent,
      elapsedMs: performance.now() - this.started,
      recoveries: this.counts.recoveries,
      reason,
      precopy: this.phase === 'precopy' ? this.precopyProgress() : undefined,
    });
  }

  private precopyProgress(): NonNullable<OutgoingProgress['precopy']> {
    const lastRound = this.precopyRounds[this.precopyRounds.length - 1];
    const ms = performance.now() - this.roundStart.at;
    const sent = this.counts.precopy - this.roundStart.sent;
    // between rounds (just after a sync) the round under way has no rate yet: the last one's
    const sendMiBs = sent > 0 && ms > 0 ? rate(sent, ms) : lastRound?.send_mib_s ?? 0;
    return { sendMiBs, lastRound };
  }

  async run(): Promise<OutgoingReport> {
    const log = createDirtyLog(this.blocks.map((block) => ({
      mapping: block.host!,
      onDirty: (offset, length) => {
        this.dirty.get(block)!.setRange(offset / TARGET_PAGE_SIZE, length / TARGET_PAGE_SIZE);
        this.untouched.get(block)?.clearRange(offset / TARGET_PAGE_SIZE, length / TARGET_PAGE_SIZE);
      },
    })), this.options.dirtyLog, this.options.holdGuest);
    try {
      const { main } = this.channels;
      main.channel.send(main.encoder.openReturnPath());
      main.channel.send(main.encoder.memSize(this.blocks.map((b) => ({ idstr: b.idstr, usedLength: b.usedLength, pageSize: b.pageSize }))));
      main.channel.send(main.encoder.endRam());
      main.channel.send(main.encoder.advise(this.options.blocks.pageSizeSummary));
      this.startDirtyLog(log);
      const precopyMs = await this.precopy(log);
      const downtime = await this.switchover(log);
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
   * before, with the guest held until the log is armed: ~40 ms per GiB here, plus parking the
   * guest's threads. A first read without the hold tells whether any page is untouched at all:
   * a guest that has touched everything is never held. Without holdGuest, or where arming
   * populates every page anyway, there is nothing to find.
   */
  private startDirtyLog(log: DirtyLog): void {
    const start = performance.now();
    const hold = this.options.holdGuest;
    if (log.untouchedOnceArmed === 'unpopulated') {
      log.start();
      this.findUntouched();
    } else if (log.untouchedOnceArmed === 'marked' && hold && this.findUntouched()) {
      hold(() => {
        this.findUntouched();
        log.start();
      });
    } else log.start();
    this.logStartMs = performance.now() - start;
  }

  /**
   * Which pages of private memory are unpopulated (no write after this goes unreported: the log
   * is armed, or the guest is held until it is); true if any. Every sync clears the bits of what
   * it reports.
   * A shared page can be in the page cache without being mapped here: shared blocks are read.
   */
  private findUntouched(): boolean {
    this.untouched.clear();
    let reader: PagemapReader;
    try {
      reader = new PagemapReader();
    } catch {
      return false; // no procfs: every page is read
    }
    try {
      for (const block of this.blocks) {
        const { base, shared } = block.host!;
        if (shared) continue;
        const untouched = new Bitmap(block.targetPages);
        reader.scanUnpopulated(base, base + block.targetPages * TARGET_PAGE_SIZE, (start, end) => {
          untouched.setRange((start - base) / TARGET_PAGE_SIZE, (end - start) / TARGET_PAGE_SIZE);
        });
        if (!untouched.isEmpty()) this.untouched.set(block, untouched);
      }
    } finally {
      reader.close();
    }
    return this.untouched.size > 0;
  }

  /**
   * Every page once, then what the guest dirtied, until converged, not converging (rounds that
   * no longer help: see convergenceJudge), or out of time. Each round is measured from the
   * sync before it to its own sync: pages sent, pages the guest dirtied, their rates.
   */
  private async precopy(log: DirtyLog): Promise<number> {
    const start = performance.now();
    if (this.options.precopySeconds <= 0) return 0;
    const deadline = start + this.options.precopySeconds * 1000;
    const converged = this.options.convergedPages ?? 256;
    const maxRounds = this.options.maxRounds ?? 1000;
    const judge = convergenceJudge();
    this.precopyEnd = 'time';
    this.roundStart = { at: start, sent: this.counts.precopy };
    while (performance.now() < deadline) {
      if (this.round >= maxRounds) {
        this.precopyEnd = 'rounds';
        break;
      }
      this.round++;
      await this.stream(() => performance.now() < deadline, 'precopy');
      const dirtied = log.sync() / TARGET_PAGE_SIZE;
      const round = this.recordRound(dirtied);
      this.progress();
      if (round.left_pages <= converged) {
        this.precopyEnd = 'converged';
        break;
      }
      if (judge(round) && this.options.stopWhenNotConverging !== false) {
        this.precopyEnd = 'not-converging';
        break;
      }
    }
    return performance.now() - start;
  }

  /**
   * With `precopyMaxMiBs` or `postcopyMaxMiBs`: waits until the stream's pages since the round
   * (precopy) or postcopy began are within the rate. Requests are served meanwhile, as they are read.
   */
  private async rateLimit(kind: 'precopy' | 'postcopy'): Promise<void> {
    const max = kind === 'precopy' ? this.options.precopyMaxMiBs : this.options.postcopyMaxMiBs;
    if (!max) return;
    const since = kind === 'precopy' ? this.roundStart : this.postcopyStart;
    const aheadMs = ((this.counts[kind] - since.sent) * MIB_PER_PAGE * 1000) / max - (performance.now() - since.at);
    if (aheadMs > 1) await Promise.race([sleep(aheadMs), this.channels.whenBroken()]);
  }

  /** Closes the round under way at its sync: its numbers go to the report (the last few) and the totals. */
  private recordRound(dirtied: number): PrecopyRound {
    const now = performance.now();
    const ms = now - this.roundStart.at;
    const sent = this.counts.precopy - this.roundStart.sent;
    const record: PrecopyRound = {
      round: this.round,
      sent_pages: sent,
      dirtied_pages: dirtied,
      left_pages: this.totalDirty,
      ms: round(ms),
      send_mib_s: rate(sent, ms),
      dirty_mib_s: rate(dirtied, ms),
    };
    this.precopyRounds.push(record);
    if (this.precopyRounds.length > PRECOPY_ROUNDS_KEPT) this.precopyRounds.shift();
    this.precopyTotals.rounds++;
    this.precopyTotals.sent_pages += sent;
    this.precopyTotals.dirtied_pages += dirtied;
    this.precopyTotals.ms += ms;
    this.roundStart = { at: now, sent: this.counts.precopy };
    return record;
  }

  /**
   * Discards known before the pause, then the downtime: pause, final sync, the discards of
   * what was dirtied since, LISTEN, device state, RUN, all in one write. Nothing in the pause
   * waits for the destination. The dirty log stays armed until the migration ends: closing its
   * userfaultfd un-protects every page (tens of milliseconds) and the paused guest writes
   * nothing.
   */
  private async switchover(log: DirtyLog): Promise<DowntimeParts & { total: number; start: number }> {
    this.phase = 'switchover';
    if (this.bulk) {
      // every bulk page before any discard: the destination's main stream waits at the flush
      this.bulk.sync();
      const { main } = this.channels;
      main.channel.send(main.encoder.multifdFlush());
    }
    await this.discardBeforePause(log);
    this.throwIfBroken();
    const start = performance.now();
    await this.options.pauseGuest();
    const paused = performance.now();
    log.sync({ final: true });
    const synced = performance.now();
    this.throwIfBroken();
    const { main } = this.channels;
    // one buffer, one write: the destination reads the whole switchover at once
    const parts: Uint8Array[] = [];
    const collect = (b: Uint8Array) => void parts.push(b);
    const { pages, ranges } = this.sendDiscards(collect);
    this.discardCounts.in_pause_pages = pages;
    this.discardCounts.in_pause_ranges = ranges;
    const discarded = performance.now();
    parts.push(main.encoder.listen());
    this.sendRun(collect);
    const encoded = performance.now();
    main.channel.send(Buffer.concat(parts));
    const end = performance.now();
    this.progress();
    return { start, total: end - start, pause: paused - start, sync: synced - paused, discard: discarded - synced, commands: encoded - discarded, write: end - encoded };
  }

  /**
   * The discard set as of a sync with the guest still running: sent, then the destination is
   * asked for a PONG, which it sends once it has applied them (commands are handled in order).
   * Meanwhile the guest dirties more, so again, while that still finds more than a few pages
   * (at most PRE_PAUSE_DISCARD_ROUNDS times). Waiting here costs no downtime; not waiting would
   * only move the destination's work into the pause. A missing PONG (timeout) just means the
   * pause starts without it.
   */
  private async discardBeforePause(log: DirtyLog): Promise<void> {
    const start = performance.now();
    const timeoutMs = (this.options.stallSeconds ?? 5) * 1000;
    // nothing sent yet (straight to postcopy): nothing can be stale there
    const anySent = [...this.sent.values()].some((sent) => !sent.isEmpty());
    for (let round = 0; anySent && round < PRE_PAUSE_DISCARD_ROUNDS; round++) {
      log.sync();
      const { pages, ranges } = this.sendDiscards();
      this.discardCounts.before_pause_pages += pages;
      this.discardCounts.before_pause_ranges += ranges;
      if (pages === 0) break;
      if (!(await this.channels.roundTrip(timeoutMs))) break;
      if (pages <= PRE_PAUSE_DISCARD_ENOUGH) break;
    }
    this.discardCounts.before_pause_ms = performance.now() - start;
  }

  private sendRun(send = (b: Uint8Array): unknown => this.channels.main.channel.send(b)): void {
    const { main } = this.channels;
    if (this.options.deviceState) send(main.encoder.packaged(this.options.deviceState()));
    send(main.encoder.run());
  }

  /** Background scan with requests first, until the dirty bitmap is empty and COMPLETE is acknowledged. */
  private async postcopy(): Promise<void> {
    this.phase = 'postcopy';
    this.progress(); // postcopy has begun: the guest runs on the destination
    this.cursor = { block: 0, page: 0 };
    const startRateWindow = () => (this.postcopyStart = { at: performance.now(), sent: this.counts.postcopy });
    startRateWindow();
    for (;;) {
      if (this.channels.broken) {
        await this.recover(); // throws when it cannot
        startRateWindow(); // no burst to catch up on the pause
      }
      if (this.destinationEnded) return;
      try {
        this.serveRequests();
        if (this.nextDirty() === undefined) {
          if (await this.complete()) return;
          continue; // the connection broke before SHUT: recover, then finish again
        }
        await this.stream(() => true, 'postcopy');
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
    const left = this.totalDirty;
    if (left !== 0) throw new PostcopyError('ERR_POSTCOPY_INTERNAL', `internal: COMPLETE with ${left} page(s) still dirty`);
    const { main, preempt } = this.channels;
    void this.bulk?.end(); // END after what the workers still hold; the destination waits for it
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

  /**
   * The connection broke in postcopy. Reconnect (backing off, for at most `recoverSeconds`),
   * ask for each block's received bitmap, mark every page that did not arrive dirty again,
   * RESUME, then reopen the preempt channel. Pages in flight when it broke are among those
   * that did not arrive; nothing that arrived is sent again.
   */
  private async recover(): Promise<void> {
    const reason = this.channels.broken!;
    const reconnect = this.options.reconnect;
    if (this.fatal) throw this.fatal;
    if (!reconnect || this.recoverSeconds <= 0) throw reason;
    const pausedAt = performance.now();
    const deadline = pausedAt + this.recoverSeconds * 1000;
    this.stopBulk();
    this.phase = 'paused';
    this.progress(reason.message);
    this.requests = [];
    this.skippedRequests.clear();
    let lastError: Error = reason;
    for (let attempt = 0; ; attempt++) {
      const remainingMs = deadline - performance.now();
      if (remainingMs <= 0) {
        throw new PostcopyError('ERR_POSTCOPY_RECOVERY_TIMEOUT',
          `${reason.message}; no recovery within ${this.recoverSeconds} s (last attempt: ${lastError.message})`, { cause: lastError });
      }
      try {
        await this.resumeConnection(reconnect, Math.max(1, remainingMs / 1000));
        break;
      } catch (error) {
        if (this.fatal) throw this.fatal;
        if ((error as PostcopyError).code === 'ERR_POSTCOPY_REFUSED') throw error; // the destination said no for good
        const cause = ((error as Error).cause as NodeJS.ErrnoException | undefined)?.code;
        if (cause === 'ECONNREFUSED' || cause === 'ENOENT') {
          // the host answers but nobody listens: the destination process, and its guest, are gone
          throw new PostcopyError('ERR_POSTCOPY_PEER_FAILED', `${reason.message}; the destination is gone (${(error as Error).message})`, { cause: error });
        }
        lastError = error as Error;
        this.channels.drop();
        await sleep(Math.min(RECONNECT_DELAYS_MS[Math.min(attempt, RECONNECT_DELAYS_MS.length - 1)], Math.max(0, deadline - performance.now())));
      }
    }
    this.counts.recoveries++;
    this.counts.pausedMs += performance.now() - pausedAt;
    this.phase = this.destinationEnded ? 'complete' : 'postcopy';
    this.progress();
  }

  /** One attempt: new channels, the bitmaps, RESUME and its answer. */
  private async resumeConnection(reconnect: NonNullable<OutgoingOptions['reconnect']>, timeoutSeconds: number): Promise<void> {
    const main = await reconnect('main', timeoutSeconds);
    this.channels.use(main);
    const recovering = { bitmaps: new Map<SourceBlock, Bitmap>(), ack: undefined as number | undefined, wake: () => undefined as void };
    this.recovering = recovering;
    try {
      for (const block of this.blocks) main.channel.send(main.encoder.recvBitmap(block));
      await this.until(() => recovering.bitmaps.size === this.blocks.length, timeoutSeconds, 'the received bitmaps');
      for (const [block, received] of recovering.bitmaps) this.markUnreceivedDirty(block, received);
      main.channel.send(main.encoder.resume());
      await this.until(() => recovering.ack !== undefined, timeoutSeconds, 'RESUME_ACK');
    } finally {
      this.recovering = undefined;
    }
    if (recovering.ack === ResumeState.END) {
      this.destinationEnded = true;
      return;
    }
    if (recovering.ack === ResumeState.LISTENING) this.sendRun(); // RUN had not arrived
    if (this.options.preempt) this.channels.usePreempt(await reconnect('preempt', timeoutSeconds));
    const bulkCount = this.options.bulk?.length ?? 0;
    if (bulkCount) {
      const channels: ConnectedChannel<SourceBlock>[] = [];
      for (let index = 0; index < bulkCount; index++) channels.push(await reconnect('bulk', timeoutSeconds, index));
      this.bulk = this.startBulk(channels);
    }
  }

  /** Waits until `done()` (checked on every return-path message), the break of the connection, or the timeout. */
  private async until(done: () => boolean, timeoutSeconds: number, what: string): Promise<void> {
    const timeoutMs = timeoutSeconds * 1000;
    const start = performance.now();
    while (!done()) {
      if (this.channels.broken) throw this.channels.broken;
      const left = timeoutMs - (performance.now() - start);
      if (left <= 0) throw new PostcopyError('ERR_POSTCOPY_CHANNEL_STALLED', `no ${what} within ${timeoutSeconds.toFixed(1)} s`);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.channels.whenBroken(),
        new Promise<void>((resolve) => {
          this.recovering!.wake = resolve;
          timer = setTimeout(resolve, left);
        }),
      ]);
      clearTimeout(timer);
    }
  }

  /** After a recovery: exactly the pages the destination lacks are dirty. */
  private markUnreceivedDirty(block: SourceBlock, received: Bitmap): void {
    const dirty = this.dirty.get(block)!;
    const sent = this.sent.get(block)!;
    const pages = dirty.size;
    for (let page = received.findNextZero(0); page < pages; ) {
      const end = Math.min(received.findNextSet(page), pages);
      for (let p = page; p < end; p++) if (sent.get(p) && !dirty.get(p)) this.counts.pagesResent++;
      page = end < pages ? received.findNextZero(end) : pages;
    }
    // dirty = not received (no page arrives that was not sent, so a received page is clean)
    dirty.fill();
    for (let page = received.findNextSet(0); page < pages; ) {
      const end = Math.min(received.findNextZero(page), pages);
      dirty.clearRange(page, end - page);
      page = end < pages ? received.findNextSet(end) : pages;
    }
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

  /**
   * Pages dirtied after they were sent are stale on the destination: discard them there as
   * coalesced byte ranges (runs of sent-and-dirty pages), widened to whole host pages (a huge
   * page is placed whole, so it is re-sent whole). A discarded page is no longer "sent" and is
   * dirty: it goes again, and a later discard does not name it twice.
   */
  private sendDiscards(send = (b: Uint8Array): unknown => this.channels.main.channel.send(b)): { pages: number; ranges: number } {
    const { main } = this.channels;
    if (main.encoder.ramOpen) send(main.encoder.endRam());
    let pages = 0;
    let count = 0;
    for (const block of this.blocks) {
      const dirty = this.dirty.get(block)!;
      const sent = this.sent.get(block)!;
      const ranges = discardRanges(sent, dirty, block.pageSize / TARGET_PAGE_SIZE);
      if (!ranges.length) continue;
      for (const [start, length] of ranges) {
        sent.clearRange(start, length);
        dirty.setRange(start, length);
        pages += length;
      }
      count += ranges.length;
      send(main.encoder.discard(block, ranges.map(([start, length]) => [start * TARGET_PAGE_SIZE, length * TARGET_PAGE_SIZE] as [number, number])));
    }
    this.counts.discarded += pages;
    return { pages, ranges: count };
  }

  /**
   * Sends one host page (all its target pages, on one channel) if any of it is still dirty,
   * or whatever its state when `force` (a page asked for again).
   */
  private sendHostPage(target: ConnectedChannel<SourceBlock>, block: SourceBlock, hostPage: number, kind: 'precopy' | 'postcopy' | 'requested', force = false): boolean {
    const perHost = block.pageSize / TARGET_PAGE_SIZE;
    const first = hostPage * perHost;
    const dirty = this.dirty.get(block)!;
    if (!force && dirty.isRangeClear(first, perHost)) return false;
    // in postcopy a host page goes whole: the destination places it atomically
    const from = kind === 'precopy' ? dirty.findNextSet(first) : first;
    const view = this.views.get(block)!;
    const untouched = this.untouched.get(block);
    const { channel, encoder } = target;
    for (let page = from; page < first + perHost; page++) {
      if (kind === 'precopy' && !dirty.get(page)) continue;
      const offset = page * TARGET_PAGE_SIZE;
      const data = view.subarray(offset, offset + TARGET_PAGE_SIZE);
      const unread = untouched?.get(page) ?? false;
      if (unread || isZeroPage(data)) {
        channel.send(encoder.ramZero(block, offset));
        this.counts.zero++;
        if (unread) this.counts.untouched++;
      } else {
        const [head, body] = encoder.ramPageParts(block, offset, data);
        channel.send(head);
        channel.send(body);
      }
      this.counts[kind]++;
    }
    dirty.clearRange(first, perHost);
    this.sent.get(block)!.setRange(first, perHost);
    return true;
  }

  /** Requested pages jump the queue; the scan then continues right after the last of them. */
  private serveRequests(): void {
    if (!this.requests.length || this.channels.broken) return;
    const target = this.channels.forRequests;
    const socket = target.channel.socket;
    socket.cork(); // one write per request
    try {
      while (this.requests.length) {
        const { block, start, length } = this.requests.shift()!;
        const blockIndex = this.blocks.indexOf(block);
        const firstHost = Math.floor(start / block.pageSize);
        const lastHost = Math.floor((start + length - 1) / block.pageSize);
        for (let host = firstHost; host <= lastHost; host++) {
          const key = blockIndex * 2 ** 32 + host;
          if (this.sendHostPage(target, block, host, 'requested')) continue;
          // already sent, so in flight: skip it once; asked again, it did not arrive: send it again
          if (this.skippedRequests.delete(key)) {
            this.sendHostPage(target, block, host, 'requested', true);
            this.counts.requestsResent++;
          } else {
            this.skippedRequests.add(key);
            this.counts.requestsSkipped++;
          }
        }
        this.cursor = { block: blockIndex, page: (lastHost + 1) * (block.pageSize / TARGET_PAGE_SIZE) };
      }
    } finally {
      socket.uncork();
    }
  }

  /**
   * Streams dirty pages from the cursor until the bitmap is empty, `more()` says stop, or the
   * connection breaks. A batch always sends at least one host page when any is dirty: whether
   * the stream is done is decided by the bitmap, never by a batch that happened to be empty.
   */
  private async stream(more: () => boolean, kind: 'precopy' | 'postcopy'): Promise<void> {
    let lastProgress = performance.now();
    for (;;) {
      this.throwIfBroken();
      if (kind === 'postcopy') this.serveRequests();
      const main = this.channels.main;
      const bulk = this.bulk;
      if (!(bulk ? this.sendBatchBulk(bulk, kind) : this.sendBatch(main, kind))) {
        // the bitmap decides when the stream is done, never an empty batch
        if (this.nextDirty()) throw new PostcopyError('ERR_POSTCOPY_INTERNAL', 'internal: a stream batch sent nothing while pages are dirty');
        return;
      }
      if (performance.now() - lastProgress > 250) {
        this.progress();
        lastProgress = performance.now();
      }
      if (!more()) return;
      await this.rateLimit(kind);
      // always let the return path in between batches (a write the kernel took at once still
      // leaves needDrain set until the next tick), then wait if the socket is really full
      await yieldToLoop();
      this.throwIfBroken();
      if (bulk) await Promise.race([bulk.whenRoom(), this.channels.whenBroken()]);
      else if (main.channel.socket.writableNeedDrain) await Promise.race([main.channel.drained(), this.channels.whenBroken()]);
    }
  }

  /** One batch: up to BATCH_PAGES target pages or `batchMs`, at least one host page. False when nothing is dirty. */
  private sendBatch(target: ConnectedChannel<SourceBlock>, kind: 'precopy' | 'postcopy'): boolean {
    const socket = target.channel.socket;
    socket.cork();
    let sent = 0;
    try {
      // a request read meanwhile waits for at most one batch: keep them short in time
      const until = performance.now() + (this.options.batchMs ?? 0.2);
      while (sent < BATCH_PAGES) {
        if (sent > 0 && (sent & 15) === 0 && performance.now() >= until) break;
        const next = this.nextDirty();
        if (!next) break;
        const block = this.blocks[next.block];
        const perHost = block.pageSize / TARGET_PAGE_SIZE;
        const host = Math.floor(next.page / perHost);
        this.sendHostPage(target, block, host, kind);
        this.cursor = { block: next.block, page: (host + 1) * perHost };
        sent += perHost;
      }
    } finally {
      socket.uncork();
    }
    return sent > 0;
  }

  /**
   * One batch for the bulk channels: runs of dirty pages, each within one stripe (so on one
   * channel), whole host pages of huge-page blocks, up to BULK_BATCH_PAGES. The workers copy;
   * this only walks the bitmap. False when nothing is dirty.
   */
  private sendBatchBulk(bulk: BulkSenders, kind: 'precopy' | 'postcopy'): boolean {
    const queued: ({ block: number; pages: number[]; untouched: number[] } | undefined)[] = [];
    const flush = (channel: number) => {
      const q = queued[channel];
      if (q) bulk.queue(channel, q.block, q.pages, q.untouched);
      queued[channel] = undefined;
    };
    let sent = 0;
    while (sent < BULK_BATCH_PAGES) {
      const next = this.nextDirty();
      if (!next) break;
      const block = this.blocks[next.block];
      const dirty = this.dirty.get(block)!;
      const perHost = block.pageSize / TARGET_PAGE_SIZE;
      let from = next.page;
      let to: number;
      if (perHost > 1) {
        from -= from % perHost;
        to = from + perHost;
      } else {
        const stripe = bulk.stripePages(next.block);
        to = Math.min(dirty.findNextZero(from), (Math.floor(from / stripe) + 1) * stripe);
      }
      const channel = bulk.channelOf(next.block, from);
      if (queued[channel] && queued[channel]!.block !== next.block) flush(channel);
      const q = (queued[channel] ??= { block: next.block, pages: [], untouched: [] });
      const untouched = this.untouched.get(block);
      for (let page = from; page < to; page++) {
        const unread = untouched?.get(page) ? 1 : 0;
        q.pages.push(page);
        q.untouched.push(unread);
        this.counts.untouched += unread;
      }
      dirty.clearRange(from, to - from);
      this.sent.get(block)!.setRange(from, to - from);
      this.counts[kind] += to - from;
      this.cursor = { block: next.block, page: to };
      sent += to - from;
    }
    for (let channel = 0; channel < bulk.count; channel++) flush(channel);
    return sent > 0;
  }

  /** The next dirty target page at or after the cursor, wrapping around once. */
  private nextDirty(): Cursor | undefined {
    const n = this.blocks.length;
    for (let i = 0; i <= n; i++) {
      const index = (this.cursor.block + i) % n;
      const dirty = this.dirty.get(this.blocks[index])!;
      const from = i === 0 ? this.cursor.page : 0;
      const page = from < dirty.size ? dirty.findNextSet(from) : dirty.size;
      if (page < dirty.size) return { block: index, page };
    }
    return undefined;
  }

  private report(dirtyLog: DirtyLog['kind'], precopyMs: number, downtime: DowntimeParts & { total: number; start: number }, postcopyMs: number): OutgoingReport {
    return {
      dirty_log: dirtyLog,
      dirty_log_start_ms: round(this.logStartMs),
      rounds: this.round,
      pages_sent: { precopy: this.counts.precopy, postcopy: this.counts.postcopy, requested: this.counts.requested,
        zero: this.counts.zero + this.bulkEarlier.zero + (this.bulk?.zeroPages ?? 0), untouched: this.counts.untouched },
      requests: { received: this.counts.requestsReceived, skipped: this.counts.requestsSkipped, resent: this.counts.requestsResent },
      discarded_pages: this.counts.discarded,
      recoveries: this.counts.recoveries,
      pages_resent: this.counts.pagesResent,
      paused_ms: Math.round(this.counts.pausedMs),
      downtime_ms: round(downtime.total),
      downtime_parts_ms: { pause: round(downtime.pause), sync: round(downtime.sync), discard: round(downtime.discard), commands: round(downtime.commands), write: round(downtime.write) },
      pause_epoch_ms: round(performance.timeOrigin + downtime.start, 3),
      discards: { ...this.discardCounts, before_pause_ms: round(this.discardCounts.before_pause_ms) },
      precopy_ms: Math.round(precopyMs),
      precopy_end: this.precopyEnd,
      precopy_rounds: [...this.precopyRounds],
      precopy_totals: {
        ...this.precopyTotals,
        ms: Math.round(this.precopyTotals.ms),
        send_mib_s: rate(this.precopyTotals.sent_pages, this.precopyTotals.ms),
        dirty_mib_s: rate(this.precopyTotals.dirtied_pages, this.precopyTotals.ms),
      },
      postcopy_ms: Math.round(postcopyMs),
      total_ms: Math.round(performance.now() - this.started),
      bytes_sent: this.bytesSent,
      bulk_channels: this.options.bulk?.length ?? 0,
    };
  }
}

/** Target pages over milliseconds, in MiB/s (two decimals). */
function rate(pages: number, ms: number): number {
  return ms > 0 ? round((pages * MIB_PER_PAGE) / (ms / 1000)) : 0;
}

/**
 * Whether precopy should give up, judged after each round (in the spirit of QEMU's comparison,
 * at each bitmap sync, of what the guest dirtied with what was transferred): true once
 * OUTPACED_ROUNDS rounds in a row saw the guest dirty at least as many pages as they sent (the
 * dirty rate at least the send rate), or once the dirty set left after a round is still more
 * than WINDOW_SHRINK times the one left NOT_HELPING_WINDOW rounds before (rounds that do not
 * help: a noisy round neither stops nor saves precopy). The first round (every page) is not
 * judged, only remembered.
 */
export function convergenceJudge(): (round: Pick<PrecopyRound, 'round' | 'sent_pages' | 'dirtied_pages' | 'left_pages'>) => boolean {
  const left: number[] = [];
  let outpaced = 0;
  return (round) => {
    left.push(round.left_pages);
    if (left.length > NOT_HELPING_WINDOW + 1) left.shift();
    if (round.round === 1) return false;
    outpaced = round.dirtied_pages >= round.sent_pages ? outpaced + 1 : 0;
    if (outpaced >= OUTPACED_ROUNDS) return true;
    return left.length > NOT_HELPING_WINDOW && round.left_pages > left[0] * WINDOW_SHRINK;
  };
}

/**
 * The target pages to discard, as [first page, page count] runs: pages both sent and dirty,
 * each widened to its whole host page (`perHost` target pages), adjacent runs merged.
 */
export function discardRanges(sent: Bitmap, dirty: Bitmap, perHost: number): [number, number][] {
  const ranges: [number, number][] = [];
  for (const [first, length] of sent.andRanges(dirty)) {
    const start = first - (first % perHost);
    const end = Math.min(Math.ceil((first + length) / perHost) * perHost, dirty.size);
    const last = ranges[ranges.length - 1];
    if (last && last[0] + last[1] >= start) last[1] = Math.max(last[1], end - last[0]);
    else ranges.push([start, end - start]);
  }
  return ranges;
}
