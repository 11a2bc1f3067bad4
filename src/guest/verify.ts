import { FLAG_BUSY, FLAGS_MAGIC, H_FLAGS, H_INDEX, H_CHECKSUM, H_VERSION, P_SEQUENTIAL, PAGE_SIZE, PAGE_WORDS, checkPage, hex32, patternCode } from './layout.js';
import { initialSlot, LedgerInfo, ownerOf, pageOf, pickIndex, readLedger, ROLE_WRITER, SlotState } from './ledger.js';

export interface VerifyOptions {
  /** Regenerate every body and compare it word by word (slower; the checksum already binds body to header). */
  deep?: boolean;
  /**
   * Replay every writer's RNG from the seed to get the exact expected version of every page,
   * so that a stale or lost page is named, not only counted. Default: when the ledger holds
   * at most `replayLimit` writes (sequential writers are always checked exactly, in O(pages)).
   * Readers' RNG is replayed too (against their read counts) when writes plus reads fit in
   * `replayLimit`.
   */
  replay?: boolean;
  replayLimit?: number;
  /** The ledger must hold exactly this many writes (e.g. the source guest's count at pause). */
  expectWrites?: number;
  /** The ledger must hold at least this many writes (catches a whole-memory rollback). */
  minWrites?: number;
  /** How many bad entries to list in `badPages` (default 16). `bad` still counts them all. */
  maxReport?: number;
}

export interface BadPage {
  /** 0 for a ledger problem. */
  page: number;
  reason: string;
}

export interface VerifyReport {
  ok: boolean;
  /** Pages in the block, ledger included. */
  pages: number;
  /** Data pages checked. */
  checked: number;
  /** Data pages that are all zero (valid version 0). */
  zeroPages: number;
  firstBad?: BadPage;
  /** Number of problems found (bad pages plus ledger problems). */
  bad: number;
  badPages: BadPage[];
  /** Sum of the versions of all data pages. */
  versionSum: number;
  /** Sum of the write counts of all threads in the ledger. */
  ledgerWrites: number;
  /** baseVersion * dataPages + ledgerWrites: what versionSum must be. */
  expectedVersionSum: number;
  /** Whether every page's version was checked against an exact expectation. */
  exact: boolean;
  ledger: LedgerInfo | null;
  elapsedMs: number;
}

const DEFAULT_REPLAY_LIMIT = 1 << 25;

/**
 * Check every thread's pick state (cursor and RNG) against its operation count, and return
 * the expected version of every page: fill passes plus, per writer, the pages its picks
 * chose. Sequential threads are checked in closed form. Other threads' RNG is replayed from
 * the seed, writers first, while the replay budget lasts (a thread draws once per operation,
 * readers included); returns null when the writers do not fit in it.
 */
function checkPickStates(
  info: LedgerInfo,
  slots: SlotState[],
  replay: boolean,
  limit: number,
  ledgerIssues: BadPage[],
): Uint32Array | null {
  const pattern = patternCode(info.pattern);
  const sequential = pattern === P_SEQUENTIAL;
  const ops = (s: SlotState): number => (s.role === ROLE_WRITER ? s.writes : s.reads);
  let writerDraws = 0;
  let readerDraws = 0;
  if (!sequential) {
    for (const s of slots) {
      if (s.role === ROLE_WRITER) writerDraws += s.writes;
      else readerDraws += s.reads;
    }
  }
  let exp: Uint32Array | null = null;
  if (replay && writerDraws <= limit) {
    exp = new Uint32Array(info.dataPages + 1).fill(info.baseVersion);
    exp[0] = 0;
  }
  const replayReaders = replay && writerDraws + readerDraws <= limit;
  for (let t = 0; t < info.threads; t++) {
    const s = slots[t];
    const start = initialSlot(info, t);
    const n = ops(s);
    const writer = s.role === ROLE_WRITER;
    const what = writer ? 'writes' : 'reads';
    const issue = (reason: string): number => ledgerIssues.push({ page: 0, reason: `ledger: thread ${t} ${reason}` });
    if (sequential) {
      // One cursor step per operation, no draw.
      const cursor = (start.cursor + n) % s.partSize;
      if (s.cursor !== cursor) issue(`cursor ${s.cursor} != ${cursor} after ${n} sequential ${what}`);
      if (s.rng !== start.rng) issue(`rng ${hex32(s.rng)} != ${hex32(start.rng)} of the seed (sequential threads do not draw)`);
      if (writer && exp !== null) {
        // Every page got floor(n / size) passes, the first n % size one more.
        const passes = Math.floor(n / s.partSize);
        const extra = n % s.partSize;
        for (let k = 0; k < s.partSize; k++) exp[pageOf(s, k, info.writers)] += passes + (k < extra ? 1 : 0);
      }
      continue;
    }
    if (s.cursor !== start.cursor) issue(`cursor ${s.cursor} != ${start.cursor} (only sequential threads move it)`);
    if (writer ? exp === null : !replayReaders) continue;
    const st = { rng: start.rng, cursor: start.cursor };
    for (let i = 0; i < n; i++) {
      const k = pickIndex(pattern, st, s.partSize, s.hotBase, s.hotSize, info.hotPercent);
      if (writer) exp![pageOf(s, k, info.writers)]++;
    }
    if (st.rng !== s.rng) issue(`rng ${hex32(s.rng)} != ${hex32(st.rng)} replayed from the seed over ${n} ${what}`);
  }
  return exp;
}

/**
 * Problems found, by kind. Structural ledger problems are listed first, then bad pages in page
 * order, then invariant failures (usually a consequence of a bad page, so they come last).
 */
interface Issues {
  struct: BadPage[];
  page: BadPage[];
  ledger: BadPage[];
}

/** What the ledger says: who owns which page and what the versions must add up to. */
interface LedgerState {
  kind: ReturnType<typeof readLedger>['kind'];
  info: LedgerInfo | null;
  slots: SlotState[];
  base: number;
  /** Exact expected version of every page (index 0 unused), or null when not replayed. */
  exp: Uint32Array | null;
}

function emptyReport(pages: number): VerifyReport {
  return {
    ok: false,
    pages,
    checked: 0,
    zeroPages: 0,
    bad: 0,
    badPages: [],
    versionSum: 0,
    ledgerWrites: 0,
    expectedVersionSum: 0,
    exact: false,
    ledger: null,
    elapsedMs: 0,
  };
}

function finishReport(report: VerifyReport, issues: Issues, maxReport: number, t0: number): VerifyReport {
  const all = [...issues.struct, ...issues.page, ...issues.ledger];
  report.bad += issues.struct.length + issues.ledger.length;
  report.badPages = all.slice(0, maxReport);
  if (all.length > 0) report.firstBad = all[0];
  report.ok = report.bad === 0;
  report.elapsedMs = performance.now() - t0;
  return report;
}

/** Reads and checks the ledger; fills the report's ledger, ledgerWrites, exact and expectedVersionSum. */
function checkLedger(i32: Int32Array, dataPages: number, opts: VerifyOptions, report: VerifyReport, issues: Issues): LedgerState {
  const led = readLedger(i32);
  let info: LedgerInfo | null = null;
  let slots: SlotState[] = [];
  if (led.kind === 'bad') issues.struct.push({ page: 0, reason: led.reason });
  if (led.kind === 'ok') {
    info = led.info;
    slots = led.slots;
    report.ledger = info;
  }
  let base = 0;
  let exp: Uint32Array | null = null;
  if (info) {
    base = info.baseVersion;
    for (const s of slots) report.ledgerWrites += s.writes;
    exp = checkPickStates(info, slots, opts.replay ?? true, opts.replayLimit ?? DEFAULT_REPLAY_LIMIT, issues.ledger);
  } else if (led.kind === 'blank') {
    exp = new Uint32Array(dataPages + 1); // blank ledger: every page must still be version 0
  }
  report.exact = exp !== null;
  report.expectedVersionSum = base * dataPages + report.ledgerWrites;
  return { kind: led.kind, info, slots, base, exp };
}

/**
 * Checks every data page against its header, owner and (when known) exact version; adds to the
 * report's versionSum, zeroPages and bad. Returns the sum of versions per writer.
 */
function checkDataPages(
  i32: Int32Array,
  dataPages: number,
  state: LedgerState,
  deep: boolean,
  maxReport: number,
  report: VerifyReport,
  pageIssues: BadPage[],
): Float64Array {
  const { info, exp } = state;
  const writers = info ? info.writers : 0;
  const perWriter = new Float64Array(Math.max(1, writers));
  for (let p = 1; p <= dataPages; p++) {
    const owner = info ? ownerOf(p, writers) : -1;
    let reason = checkPage(i32, p, owner, deep);
    const b = p * PAGE_WORDS;
    // Count the version whenever the header is identifiably this page's, even if the body
    // is bad, so one bad page does not also show up as a sum mismatch.
    let v = 0;
    if (i32[b + H_INDEX] === p && (i32[b + H_FLAGS] & ~0xffff) === FLAGS_MAGIC) v = i32[b + H_VERSION] >>> 0;
    else if ((i32[b + H_INDEX] | i32[b + H_VERSION] | i32[b + H_CHECKSUM] | i32[b + H_FLAGS]) === 0 && reason === null) {
      report.zeroPages++;
    }
    report.versionSum += v;
    if (writers > 0) perWriter[owner] += v;
    if (reason === null && exp !== null && v !== exp[p]) {
      const what =
        v === 0 ? 'all zero (lost page)' : v < exp[p] ? `version ${v} (stale page)` : `version ${v} (newer than the ledger)`;
      reason = `page ${p}: ${what}, ledger implies version ${exp[p]}`;
    }
    if (reason !== null) {
      report.bad++;
      if (pageIssues.length < maxReport) pageIssues.push({ page: p, reason });
    }
  }
  report.checked = dataPages;
  return perWriter;
}

/**
 * The invariant that catches a stale (old but self-consistent) page or a stale ledger even
 * when the replay is off: per writer first, so the message names the thread; then the total
 * and the expected write counts.
 */
function checkVersionSums(
  state: LedgerState,
  perWriter: Float64Array,
  dataPages: number,
  opts: VerifyOptions,
  report: VerifyReport,
  ledgerIssues: BadPage[],
): void {
  const { info, slots, base } = state;
  if (info) {
    for (let t = 0; t < info.writers; t++) {
      const want = base * slots[t].partSize + slots[t].writes;
      if (perWriter[t] !== want) {
        ledgerIssues.push({
          page: 0,
          reason: `ledger: thread ${t} pages' versions sum ${perWriter[t]} != ${want} (base ${base} x ${slots[t].partSize} pages + ${slots[t].writes} writes)`,
        });
      }
    }
  }
  if (report.versionSum !== report.expectedVersionSum) {
    ledgerIssues.push({
      page: 0,
      reason:
        state.kind === 'blank'
          ? `ledger: blank but data page versions sum ${report.versionSum}`
          : `ledger: versions sum ${report.versionSum} != writes ${report.ledgerWrites}` +
            (base ? ` + base ${base} x ${dataPages} pages` : ''),
    });
  }
  if (opts.expectWrites !== undefined && report.ledgerWrites !== opts.expectWrites) {
    ledgerIssues.push({ page: 0, reason: `ledger: ${report.ledgerWrites} writes, expected exactly ${opts.expectWrites}` });
  }
  if (opts.minWrites !== undefined && report.ledgerWrites < opts.minWrites) {
    ledgerIssues.push({ page: 0, reason: `ledger: ${report.ledgerWrites} writes, expected at least ${opts.minWrites} (stale memory?)` });
  }
}

/**
 * Check a whole guest block: the ledger (every word is checksummed or must be zero; every
 * thread's cursor and RNG against its operation count), every data page (index, magic,
 * reserved flag bits, checksum, owner, busy), the invariant sum(versions) == base * pages +
 * sum(ledger writes), per writer and in total, and, when the replay runs, every page's exact
 * version. Synchronous and touches every page: on real guest memory run it in a worker
 * (verifyInWorker), never on the main thread while a migration may be serving faults.
 */
export function verify(buffer: ArrayBuffer | SharedArrayBuffer, opts: VerifyOptions = {}): VerifyReport {
  const t0 = performance.now();
  const maxReport = opts.maxReport ?? 16;
  const len = buffer.byteLength;
  const pages = Math.floor(len / PAGE_SIZE);
  const report = emptyReport(pages);
  const issues: Issues = { struct: [], page: [], ledger: [] };
  if (len % PAGE_SIZE !== 0 || pages < 2) {
    issues.struct.push({ page: 0, reason: `block: length ${len} is not a multiple of ${PAGE_SIZE} of at least 2 pages` });
    return finishReport(report, issues, maxReport, t0);
  }
  const i32 = new Int32Array(buffer);
  const dataPages = pages - 1;
  // Ledger first: it says who owns which page and what the versions must add up to.
  const state = checkLedger(i32, dataPages, opts, report, issues);
  const perWriter = checkDataPages(i32, dataPages, state, opts.deep ?? false, maxReport, report, issues.page);
  checkVersionSums(state, perWriter, dataPages, opts, report, issues.ledger);
  return finishReport(report, issues, maxReport, t0);
}

// ---- helpers for tests and diagnostics -------------------------------------------------

export interface GuestPageHeader {
  index: number;
  version: number;
  checksum: number;
  flags: number;
  writer: number;
  busy: boolean;
}

export function guestPageHeader(buffer: ArrayBuffer | SharedArrayBuffer, page: number): GuestPageHeader {
  const i32 = new Int32Array(buffer, page * PAGE_SIZE, 4);
  const flags = i32[H_FLAGS];
  return {
    index: i32[H_INDEX] >>> 0,
    version: i32[H_VERSION] >>> 0,
    checksum: i32[H_CHECKSUM] >>> 0,
    flags: flags >>> 0,
    writer: flags & 0xff,
    busy: (flags & FLAG_BUSY) !== 0,
  };
}

/** A copy of one page's bytes. */
export function readGuestPage(buffer: ArrayBuffer | SharedArrayBuffer, page: number): Uint8Array {
  return new Uint8Array(buffer, page * PAGE_SIZE, PAGE_SIZE).slice();
}

/** Overwrite one page with given bytes (e.g. an old copy, to simulate a stale page). */
export function writeGuestPage(buffer: ArrayBuffer | SharedArrayBuffer, page: number, bytes: Uint8Array): void {
  if (bytes.length !== PAGE_SIZE) throw new RangeError(`page bytes must be ${PAGE_SIZE} long, got ${bytes.length}`);
  new Uint8Array(buffer, page * PAGE_SIZE, PAGE_SIZE).set(bytes);
}

export type Corruption =
  | 'body' // flip one bit of one body byte
  | 'index' // header names another page
  | 'checksum' // header checksum off by one
  | 'version' // version + 1 without a new body
  | 'busy' // leave the busy flag set (interrupted write)
  | 'zero'; // whole page zeroed (a lost page reads as zeros)

/** Damage a page on purpose, for tests of the verifier and of readers. Only on quiesced memory. */
export function corruptPage(
  buffer: ArrayBuffer | SharedArrayBuffer,
  page: number,
  how: Corruption = 'body',
  byteOffset = 100,
): void {
  const pages = buffer.byteLength / PAGE_SIZE;
  if (!Number.isInteger(page) || page < 0 || page >= pages) throw new RangeError(`page ${page} outside 0..${pages - 1}`);
  const i32 = new Int32Array(buffer, page * PAGE_SIZE, PAGE_WORDS);
  switch (how) {
    case 'body': {
      if (byteOffset < 16 || byteOffset >= PAGE_SIZE) throw new RangeError(`body byte offset ${byteOffset} outside 16..4095`);
      new Uint8Array(buffer, page * PAGE_SIZE, PAGE_SIZE)[byteOffset] ^= 0x10;
      break;
    }
    case 'index':
      i32[H_INDEX] = page + 1 < pages ? page + 1 : 1;
      break;
    case 'checksum':
      i32[H_CHECKSUM] = (i32[H_CHECKSUM] + 1) | 0;
      break;
    case 'version':
      i32[H_VERSION] = (i32[H_VERSION] + 1) | 0;
      break;
    case 'busy':
      i32[H_FLAGS] |= FLAG_BUSY;
      break;
    case 'zero':
      i32.fill(0);
      break;
    default:
      throw new TypeError(`unknown corruption ${JSON.stringify(how)}`);
  }
}

