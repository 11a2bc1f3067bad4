// What a guest thread does, independent of worker plumbing: one operation at a time on an
// Int32Array over guest memory, with its resumable state kept in its ledger slot.

import { FLAG_BUSY, H_FLAGS, H_VERSION, MAX_THREADS, PAGE_WORDS, Pattern, checkPage, pageProblem, patternCode, writePage } from './layout.js';
import { initialSlot, isBlankLedger, LedgerInfo, ownerOf, pageOf, pickIndex, PickState, readLedger, readSlot, ROLE_WRITER, saveSlotProgress, slotProblem, SlotState, writeLedger } from './ledger.js';

/** Parameters of a new guest (what goes into a blank ledger). */
export interface GuestParams {
  pattern: Pattern;
  threads: number;
  /** Reader threads among `threads` (all of them for 'read'). */
  readers: number;
  seed: number;
  hotDivisor: number;
  hotPercent: number;
  /** Fill passes at initialisation: every data page is written this many times first. */
  fill: number;
}

export function paramsToInfo(p: GuestParams, dataPages: number): LedgerInfo {
  const readers = p.pattern === 'read' ? p.threads : p.readers;
  return {
    pattern: p.pattern,
    threads: p.threads,
    writers: p.threads - readers,
    readers,
    dataPages,
    seed: p.seed >>> 0,
    hotDivisor: p.hotDivisor,
    hotPercent: p.hotPercent,
    baseVersion: p.fill,
  };
}

/** Throws a RangeError/TypeError describing the first bad parameter. */
export function checkParams(p: GuestParams, dataPages: number): void {
  patternCode(p.pattern);
  if (!Number.isInteger(p.threads) || p.threads < 1 || p.threads > MAX_THREADS) {
    throw new RangeError(`guest threads must be 1..${MAX_THREADS}, got ${p.threads}`);
  }
  if (p.pattern !== 'read' && (!Number.isInteger(p.readers) || p.readers < 0 || p.readers >= p.threads)) {
    throw new RangeError(`guest readers must be 0..${p.threads - 1} for a write pattern, got ${p.readers}`);
  }
  const writers = p.pattern === 'read' ? 0 : p.threads - p.readers;
  if (writers > dataPages) throw new RangeError(`${writers} writer threads but only ${dataPages} data pages`);
  if (!Number.isInteger(p.seed) || p.seed < 0 || p.seed > 0xffffffff) throw new RangeError(`guest seed must be a u32, got ${p.seed}`);
  if (!Number.isInteger(p.hotDivisor) || p.hotDivisor < 1) throw new RangeError(`hotDivisor must be >= 1, got ${p.hotDivisor}`);
  if (!Number.isInteger(p.hotPercent) || p.hotPercent < 0 || p.hotPercent > 100) {
    throw new RangeError(`hotPercent must be 0..100, got ${p.hotPercent}`);
  }
  if (!Number.isInteger(p.fill) || p.fill < 0 || p.fill > 1000) throw new RangeError(`fill must be 0..1000, got ${p.fill}`);
}

/**
 * Initialise a blank ledger from `params` (after the fill passes), or validate an existing
 * one against them; with params null, require an existing valid ledger (resume).
 */
export function setupLedger(i32: Int32Array, params: GuestParams | null): LedgerInfo {
  const dataPages = i32.length / PAGE_WORDS - 1;
  if (isBlankLedger(i32)) {
    if (!params) throw new Error('guest ledger is blank: nothing to resume (use Guest.start)');
    checkParams(params, dataPages);
    const info = paramsToInfo(params, dataPages);
    // Fill passes write data pages before the ledger exists, so an interrupted fill leaves a
    // blank ledger over non-zero pages, which the verifier rejects.
    for (let v = 1; v <= info.baseVersion; v++) {
      for (let p = 1; p <= dataPages; p++) writePage(i32, p, v, ownerOf(p, info.writers));
    }
    writeLedger(i32, info);
    return info;
  }
  const led = readLedger(i32);
  if (led.kind !== 'ok') throw new Error(led.kind === 'bad' ? led.reason : 'ledger blank');
  const info = led.info;
  if (params) {
    const want = paramsToInfo(params, dataPages);
    const diffs: string[] = [];
    // Not baseVersion: filling is an initialisation step, not a workload parameter.
    for (const k of ['pattern', 'threads', 'writers', 'seed', 'hotDivisor', 'hotPercent'] as const) {
      if (want[k] !== info[k]) diffs.push(`${k} ${info[k]} (asked ${want[k]})`);
    }
    if (diffs.length) {
      throw new Error(`guest ledger already initialised with other parameters: ${diffs.join(', ')}; use Guest.resumeFrom or blank memory`);
    }
  }
  return info;
}

export const OP_WRITE = 0;
export const OP_READ = 1;
export const OP_BAD = 2;
export const OP_SKIPPED = 3;
/** A writer found the page it was about to write already corrupt: the thread must stop. */
export const OP_CORRUPT = 4;

/**
 * A read that keeps racing a writer spins a little, then sleeps (the writer may have been
 * preempted mid-write on a busy machine), and after about a second is skipped: counted, never
 * reported as bad.
 */
const READ_SPINS = 64;
const READ_RETRIES = READ_SPINS + 1000;
const nap = new Int32Array(new SharedArrayBuffer(4));

/** One guest thread. Not thread-safe: one instance per worker. */
export class ThreadRunner {
  readonly writer: boolean;
  readonly slot: SlotState;
  /** Reason of the last OP_BAD or OP_CORRUPT (without the page's name for OP_CORRUPT). */
  badReason = '';
  badPage = 0;
  private readonly pick: PickState;
  private readonly pattern: number;
  private unsaved = false;

  /**
   * `readOnly`: run as a reader over all pages whatever the ledger says, and never write to
   * guest memory (not even the ledger), e.g. to check a migrated copy without dirtying it.
   */
  constructor(
    private readonly i32: Int32Array,
    private readonly info: LedgerInfo,
    readonly thread: number,
    private readonly readOnly = false,
  ) {
    // Only this thread's slot: the other threads may be rewriting theirs already.
    const problem = slotProblem(i32, info, thread);
    if (problem !== null) throw new Error(problem);
    this.slot = readOnly ? initialSlot(info, thread, true) : readSlot(i32, thread);
    this.writer = this.slot.role === ROLE_WRITER;
    this.pick = { rng: this.slot.rng, cursor: this.slot.cursor };
    // Read-only threads walk all data pages with the ledger's pattern (reader slot shape).
    this.pattern = patternCode(info.pattern);
  }

  get writes(): number {
    return this.slot.writes;
  }

  get reads(): number {
    return this.slot.reads;
  }

  step(): number {
    const s = this.slot;
    const k = pickIndex(this.pattern, this.pick, s.partSize, s.hotBase, s.hotSize, this.info.hotPercent);
    const page = pageOf(s, k, this.info.writers);
    return this.writer ? this.write(page) : this.read(page);
  }

  private write(page: number): number {
    const i32 = this.i32;
    // Check before modify: writing a fresh version over a damaged page would hide the damage
    // from the verifier. Shallow (header and checksum): one pass over the body.
    const problem = pageProblem(i32, page, this.thread, false);
    if (problem !== null) {
      this.badReason = problem;
      this.badPage = page;
      return OP_CORRUPT;
    }
    // The next version comes from the page itself: memory is the only state.
    const v = (Atomics.load(i32, page * PAGE_WORDS + H_VERSION) >>> 0) + 1;
    writePage(i32, page, v, this.thread);
    const s = this.slot;
    s.writes++;
    s.rng = this.pick.rng;
    s.cursor = this.pick.cursor;
    saveSlotProgress(i32, this.thread, s);
    return OP_WRITE;
  }

  /** Seqlock read: a page that changes or is busy while we read it is retried, not reported. */
  private read(page: number): number {
    const i32 = this.i32;
    const base = page * PAGE_WORDS;
    const owner = ownerOf(page, this.info.writers);
    this.slot.reads++;
    this.unsaved = true;
    for (let tries = 0; tries < READ_RETRIES; tries++) {
      const f1 = Atomics.load(i32, base + H_FLAGS);
      const v1 = Atomics.load(i32, base + H_VERSION);
      if (f1 & FLAG_BUSY) {
        if (tries >= READ_SPINS) Atomics.wait(nap, 0, 0, 1);
        continue;
      }
      const reason = checkPage(i32, page, owner, false);
      const f2 = Atomics.load(i32, base + H_FLAGS);
      const v2 = Atomics.load(i32, base + H_VERSION);
      if (f1 !== f2 || v1 !== v2) {
        if (tries >= READ_SPINS) Atomics.wait(nap, 0, 0, 1);
        continue;
      }
      if (reason === null) return OP_READ;
      this.badReason = reason;
      this.badPage = page;
      return OP_BAD;
    }
    return OP_SKIPPED;
  }

  /** Persist a reader's position (writers persist on every write). Called when parking. */
  save(): void {
    // Only when something changed: a parked read-only guest must not keep dirtying page 0.
    if (this.writer || this.readOnly || !this.unsaved) return;
    this.unsaved = false;
    const s = this.slot;
    s.rng = this.pick.rng;
    s.cursor = this.pick.cursor;
    saveSlotProgress(this.i32, this.thread, s);
  }

  /**
   * What is wrong with this thread's ledger slot, which must hold what the thread last saved;
   * null if nothing. Checked before working on after a pause, so that damage done to the slot
   * while parked is reported instead of overwritten by the next save.
   */
  slotDamage(): string | null {
    if (this.readOnly) return null;
    const problem = slotProblem(this.i32, this.info, this.thread);
    if (problem !== null) return problem;
    const inMemory = readSlot(this.i32, this.thread);
    for (const k of ['writes', 'reads', 'rng', 'cursor'] as const) {
      if (inMemory[k] !== this.slot[k]) return `ledger: thread ${this.thread} ${k} ${inMemory[k]} != ${this.slot[k]} last saved`;
    }
    return null;
  }
}
