// Precopy rounds: each measured from the sync before it to its own sync (pages sent, pages the
// guest dirtied, their rates), the last few kept for the report and all of them in the totals;
// and the judge that ends precopy once rounds stop helping.
import { performance } from 'node:perf_hooks';
import { MiB, TARGET_PAGE_SIZE, round } from '../base/index.js';
import type { OutgoingReport, PrecopyEnd, PrecopyRound } from './report.js';

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
const MIB_PER_PAGE = TARGET_PAGE_SIZE / MiB;

/** Target pages over milliseconds, in MiB/s (two decimals). */
export function rate(pages: number, ms: number): number {
  return ms > 0 ? round((pages * MIB_PER_PAGE) / (ms / 1000)) : 0;
}

/** How long `pages` target pages take at `maxMiBs`, in milliseconds. */
export function pagesAtRateMs(pages: number, maxMiBs: number): number {
  return (pages * MIB_PER_PAGE * 1000) / maxMiBs;
}

export class PrecopyRounds {
  round = 0;
  end: PrecopyEnd = 'skipped';
  /** The round under way: when it began and the precopy page count then. */
  start = { at: 0, sent: 0 };
  private readonly kept: PrecopyRound[] = [];
  private readonly totals = { rounds: 0, sent_pages: 0, dirtied_pages: 0, ms: 0 };

  /** A round begins, with `sent` precopy pages sent so far. */
  begin(sent: number): void {
    this.start = { at: performance.now(), sent };
  }

  /** Closes the round under way at its sync: its numbers go to the report (the last few) and the totals. */
  record(sent: number, dirtied: number, left: number): PrecopyRound {
    const now = performance.now();
    const ms = now - this.start.at;
    const inRound = sent - this.start.sent;
    const record: PrecopyRound = {
      round: this.round, sent_pages: inRound, dirtied_pages: dirtied, left_pages: left, ms: round(ms), send_mib_s: rate(inRound, ms), dirty_mib_s: rate(dirtied, ms),
    };
    this.kept.push(record);
    if (this.kept.length > PRECOPY_ROUNDS_KEPT) this.kept.shift();
    this.totals.rounds++;
    this.totals.sent_pages += inRound;
    this.totals.dirtied_pages += dirtied;
    this.totals.ms += ms;
    this.start = { at: now, sent };
    return record;
  }

  /** The send rate of the round under way (between rounds: the last one's), and the last finished round. */
  progress(sent: number): { sendMiBs: number; lastRound?: PrecopyRound } {
    const lastRound = this.kept[this.kept.length - 1];
    const ms = performance.now() - this.start.at;
    const inRound = sent - this.start.sent;
    return { sendMiBs: inRound > 0 && ms > 0 ? rate(inRound, ms) : lastRound?.send_mib_s ?? 0, lastRound };
  }

  report(): Pick<OutgoingReport, 'rounds' | 'precopy_end' | 'precopy_rounds' | 'precopy_totals'> {
    const t = this.totals;
    return {
      rounds: this.round,
      precopy_end: this.end,
      precopy_rounds: [...this.kept],
      precopy_totals: { ...t, ms: Math.round(t.ms), send_mib_s: rate(t.sent_pages, t.ms), dirty_mib_s: rate(t.dirtied_pages, t.ms) },
    };
  }
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
