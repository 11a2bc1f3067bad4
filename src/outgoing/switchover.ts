// The switchover. Discards known before the pause are sent and acknowledged while the guest
// still runs; then the downtime: pause, final sync, the discards of what was dirtied since,
// LISTEN, device state, RUN, all in one write. Nothing in the pause waits for the destination.
import { performance } from 'node:perf_hooks';
import { TARGET_PAGE_SIZE } from '../base/index.js';
import type { DirtyLog } from './dirty-log.js';
import type { PageMap } from './page-map.js';
import type { Downtime, OutgoingReport, SourceCounts } from './report.js';
import type { SourceChannels } from './source-channels.js';
import type { BulkSenders } from './bulk-senders.js';

/**
 * Before the pause, discards are sent and acknowledged in rounds until a round finds at most
 * this many pages (what the guest dirtied during the previous round trip), or this many rounds.
 */
const PRE_PAUSE_DISCARD_ENOUGH = 64;
const PRE_PAUSE_DISCARD_ROUNDS = 4;

export interface SwitchoverOptions {
  pauseGuest: () => Promise<void>;
  deviceState?: () => Uint8Array;
  /** How long a PONG may take before the pause starts without it. */
  stallSeconds: number;
}

export class Switchover {
  readonly discards: OutgoingReport['discards'] = { before_pause_pages: 0, before_pause_ranges: 0, before_pause_ms: 0, in_pause_pages: 0, in_pause_ranges: 0 };

  constructor(
    private readonly map: PageMap,
    private readonly channels: SourceChannels,
    private readonly counts: SourceCounts,
    private readonly options: SwitchoverOptions,
    private readonly throwIfBroken: () => void,
  ) {}

  /**
   * The dirty log stays armed until the migration ends: closing its userfaultfd un-protects
   * every page (tens of milliseconds) and the paused guest writes nothing.
   */
  async run(log: DirtyLog, bulk: BulkSenders | undefined): Promise<Downtime> {
    const { main } = this.channels;
    if (bulk) {
      // every bulk page before any discard: the destination's main stream waits at the flush,
      // and the pause waits until it is past it (that wait is no downtime)
      bulk.sync();
      main.channel.send(main.encoder.multifdFlush());
      await this.channels.roundTrip(this.options.stallSeconds * 1000);
    }
    await this.discardBeforePause(log);
    this.throwIfBroken();
    const start = performance.now();
    await this.options.pauseGuest();
    const paused = performance.now();
    const syncPages = log.sync({ final: true }) / TARGET_PAGE_SIZE;
    const synced = performance.now();
    this.throwIfBroken();
    // one buffer, one write: the destination reads the whole switchover at once
    const parts: Uint8Array[] = [];
    const collect = (b: Uint8Array) => void parts.push(b);
    const { pages, ranges } = this.sendDiscards(collect);
    this.discards.in_pause_pages = pages;
    this.discards.in_pause_ranges = ranges;
    const discarded = performance.now();
    parts.push(this.channels.main.encoder.listen());
    this.sendRun(collect);
    const encoded = performance.now();
    this.channels.main.channel.send(Buffer.concat(parts));
    const end = performance.now();
    return { start, syncPages, total: end - start, pause: paused - start, sync: synced - paused, discard: discarded - synced, commands: encoded - discarded, write: end - encoded };
  }

  /** The device state (if any) and RUN. */
  sendRun(send = (b: Uint8Array): unknown => this.channels.main.channel.send(b)): void {
    const { encoder } = this.channels.main;
    if (this.options.deviceState) send(encoder.packaged(this.options.deviceState()));
    send(encoder.run());
  }

  /**
   * The discard set as of a sync with the guest still running: sent, then the destination is
   * asked for a PONG, which it sends once it has applied them (commands are handled in order).
   * Meanwhile the guest dirties more, so again, while that still finds more than a few pages
   * (at most PRE_PAUSE_DISCARD_ROUNDS times). Waiting here costs no downtime; not waiting would
   * only move the destination's work into the pause. A missing PONG (timeout) just means the
   * pause starts without it. One last round follows, not waited for: the destination applies
   * it while this side parks the guest and syncs, and the pause's own discards shrink to what
   * the guest wrote since (with bulk channels, in 14 alternating demo runs: median 1,214 -> 520
   * ranges, pause to RUN applied 8.4 -> 6.7 ms). Straight to postcopy nothing was sent, so nothing can be stale,
   * but the syncs still take what the guest wrote so far out of the pause, until one finds
   * few pages: the final sync then reports only the last moments' writes (with bulk channels,
   * the guest had written 25k pages by the pause, and reporting them took 10-20 ms of the
   * downtime; the first sync itself takes that long, so one more follows).
   */
  private async discardBeforePause(log: DirtyLog): Promise<void> {
    const start = performance.now();
    for (let round = 0; round < PRE_PAUSE_DISCARD_ROUNDS; round++) {
      const written = log.sync() / TARGET_PAGE_SIZE;
      if (!this.map.anySent) {
        if (written <= PRE_PAUSE_DISCARD_ENOUGH) break;
        continue;
      }
      const { pages, ranges } = this.sendDiscards();
      this.discards.before_pause_pages += pages;
      this.discards.before_pause_ranges += ranges;
      if (pages === 0) break;
      if (!(await this.channels.roundTrip(this.options.stallSeconds * 1000))) break;
      if (pages <= PRE_PAUSE_DISCARD_ENOUGH) break;
    }
    if (this.map.anySent) {
      log.sync();
      const { pages, ranges } = this.sendDiscards();
      this.discards.before_pause_pages += pages;
      this.discards.before_pause_ranges += ranges;
    }
    this.discards.before_pause_ms = performance.now() - start;
  }

  /** Pages dirtied after they were sent, discarded on the destination as coalesced byte ranges. */
  private sendDiscards(send = (b: Uint8Array): unknown => this.channels.main.channel.send(b)): { pages: number; ranges: number } {
    const { encoder } = this.channels.main;
    if (encoder.ramOpen) send(encoder.endRam());
    let pages = 0;
    let count = 0;
    this.map.blocks.forEach((block, i) => {
      const ranges = this.map.takeDiscards(i);
      if (!ranges.length) return;
      for (const [, length] of ranges) pages += length;
      count += ranges.length;
      send(encoder.discard(block, ranges.map(([start, length]) => [start * TARGET_PAGE_SIZE, length * TARGET_PAGE_SIZE] as [number, number])));
    });
    this.counts.discarded += pages;
    return { pages, ranges: count };
  }
}
