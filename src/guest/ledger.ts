// The reference guest's ledger (page 0) and how threads pick their pages: the fixed
// parameters of the guest, one checksummed slot per thread (everything it needs to resume
// exactly where it stopped), and the pick functions that both the workers and the verifier run.
// Ledger page (page 0). Every word is either covered by a checksum or must be zero:
//   w0..w10          header below (w10 = checksum of w0..w9), w11..w15 zero
//   w16 + t * 15     slot of thread t < threads (below); the slots of absent threads and
//                    w976..w1023 are zero
import { PAGE_WORDS, MAX_THREADS, FILL_WRITER, P_SEQUENTIAL, P_HOTSET, patternCode, patternName, hex32, fmix32, xs32, type Pattern } from './layout.js';
export const LEDGER_MAGIC = 0x4c474350; // 'PCGL' little-endian
export const LEDGER_LAYOUT = 2;
export const L_MAGIC = 0;
export const L_LAYOUT = 1;
export const L_PATTERN = 2;
export const L_THREADS = 3;
export const L_WRITERS = 4;
export const L_DATA_PAGES = 5;
export const L_SEED = 6;
export const L_HOT_DIV = 7;
export const L_HOT_PCT = 8;
export const L_BASE = 9; // fill passes: every data page started at this version
export const L_CHECK = 10; // hash of words 0..9 (the fixed parameters)
export const LEDGER_HEADER_WORDS = 16;
// Per-thread slot: 16 + 64 * 15 = 976 words, fits the 1024-word page. Written by its own
// thread only (writers on every write, readers when parking), checksum last.
export const SLOT_WORDS = 15;
export const S_WRITES_LO = 0;
export const S_WRITES_HI = 1;
export const S_RNG = 2;
export const S_CURSOR = 3;
export const S_HOT_BASE = 4;
export const S_HOT_SIZE = 5;
export const S_ROLE = 6; // ROLE_WRITER | ROLE_READER
export const S_PART = 7; // writer index (= thread index) or reader index
export const S_PART_SIZE = 8; // pages this thread picks among
export const S_READS_LO = 9;
export const S_READS_HI = 10;
// w11..w13 zero
/** Checksum of w0..w10 and the thread index (a slot at another thread's place fails). */
export const S_CHECK = 14;
export const ROLE_WRITER = 0;
export const ROLE_READER = 1;

/** Fixed parameters of a guest, as stored in the ledger header. */
export interface LedgerInfo {
  pattern: Pattern;
  threads: number;
  /** Threads 0..writers-1 write, the rest only read. */
  writers: number;
  readers: number;
  dataPages: number;
  seed: number;
  /** Hot set = 1/hotDivisor of a thread's pages... */
  hotDivisor: number;
  /** ...and receives this percentage of its operations. */
  hotPercent: number;
  /** Version every data page had before the threads' own writes (fill passes at start). */
  baseVersion: number;
}

/** Everything one thread needs to resume exactly where it stopped. */
export interface SlotState {
  writes: number;
  rng: number;
  cursor: number;
  hotBase: number;
  hotSize: number;
  role: number;
  part: number;
  partSize: number;
  reads: number;
}

/** Writer thread that owns data page p (pages are dealt round-robin), or FILL_WRITER. */
export function ownerOf(page: number, writers: number): number {
  return writers > 0 ? (page - 1) % writers : FILL_WRITER;
}

/** Number of data pages writer w owns: pages 1 + w + k * writers. */
export function partitionSize(dataPages: number, writers: number, w: number): number {
  return w < dataPages ? Math.floor((dataPages - 1 - w) / writers) + 1 : 0;
}

/** Page number of a thread's k-th choice. */
export function pageOf(slot: { role: number; part: number }, k: number, writers: number): number {
  return slot.role === ROLE_WRITER ? 1 + slot.part + k * writers : 1 + k;
}

/** Mutable pick state of a thread: the parts of its slot that change on every operation. */
export interface PickState {
  rng: number;
  cursor: number;
}

/**
 * The thread's next choice among its `size` pages (0..size-1). Shared by the workers and the
 * verifier's replay, so the replay consumes the RNG exactly as the thread did.
 */
export function pickIndex(
  pattern: number,
  st: PickState,
  size: number,
  hotBase: number,
  hotSize: number,
  hotPercent: number,
): number {
  if (pattern === P_SEQUENTIAL) {
    const k = st.cursor;
    st.cursor = k + 1 >= size ? 0 : k + 1;
    return k;
  }
  if (pattern === P_HOTSET) {
    let r = xs32(st.rng);
    const hot = (r >>> 0) % 100 < hotPercent;
    r = xs32(r);
    st.rng = r;
    if (hot || hotSize >= size) return hotBase + ((r >>> 0) % hotSize);
    return (hotBase + hotSize + ((r >>> 0) % (size - hotSize))) % size;
  }
  // random and read: uniform
  const r = xs32(st.rng);
  st.rng = r;
  return (r >>> 0) % size;
}

function initialRng(seed: number, thread: number): number {
  const r = fmix32(seed ^ Math.imul(thread + 1, 0x9e3779b1));
  return r === 0 ? 1 : r;
}

/**
 * Slot of thread t at the start of a guest. Threads 0..writers-1 are writers, each with its
 * own partition; the others are readers over all data pages. `readerView` builds a reader
 * slot for any thread (read-only resume).
 */
export function initialSlot(info: LedgerInfo, t: number, readerView = false): SlotState {
  const writer = !readerView && t < info.writers;
  const part = writer ? t : readerView ? t : t - info.writers;
  const size = writer ? partitionSize(info.dataPages, info.writers, t) : info.dataPages;
  const rng = initialRng(info.seed, t);
  const hotSize = Math.max(1, Math.floor(size / info.hotDivisor));
  // Derived from the seed without consuming the RNG, so the replay starts from `rng`.
  const hotBase = (fmix32(rng ^ 0x68e31da4) >>> 0) % (size - hotSize + 1);
  const nReaders = readerView ? info.threads : info.readers;
  // Writers start their walk at 0 (the verifier relies on it); readers spread out.
  const cursor = writer ? 0 : Math.floor((part * size) / Math.max(1, nReaders)) % size;
  return {
    writes: 0,
    rng,
    cursor,
    hotBase,
    hotSize,
    role: writer ? ROLE_WRITER : ROLE_READER,
    part,
    partSize: size,
    reads: 0,
  };
}

function ledgerCheck(i32: Int32Array): number {
  let h = 0x2545f491;
  for (let i = 0; i < L_CHECK; i++) h = fmix32(h ^ i32[i]);
  return h;
}

/** Checksum of thread t's slot holding `s` (the words as stored; see S_CHECK). */
export function slotChecksum(t: number, s: SlotState): number {
  let h = fmix32(0x3b9aca07 ^ t);
  h = fmix32(h ^ low32(s.writes));
  h = fmix32(h ^ high32(s.writes));
  h = fmix32(h ^ s.rng);
  h = fmix32(h ^ s.cursor);
  h = fmix32(h ^ s.hotBase);
  h = fmix32(h ^ s.hotSize);
  h = fmix32(h ^ s.role);
  h = fmix32(h ^ s.part);
  h = fmix32(h ^ s.partSize);
  h = fmix32(h ^ low32(s.reads));
  return fmix32(h ^ high32(s.reads));
}

function low32(n: number): number {
  return n % 0x100000000;
}

function high32(n: number): number {
  return Math.floor(n / 0x100000000);
}

export function slotBase(t: number): number {
  return LEDGER_HEADER_WORDS + t * SLOT_WORDS;
}

export function isBlankLedger(i32: Int32Array): boolean {
  return firstNonZero(i32, 0, PAGE_WORDS) < 0;
}

/** Index of the first non-zero word in from..to-1, or -1. */
function firstNonZero(i32: Int32Array, from: number, to: number): number {
  for (let w = from; w < to; w++) if (i32[w] !== 0) return w;
  return -1;
}

export type LedgerRead =
  | { kind: 'blank' }
  | { kind: 'bad'; reason: string }
  | { kind: 'ok'; info: LedgerInfo; slots: SlotState[] };

/**
 * Decode and check the whole ledger page: header, every slot, every word that must be zero
 * (the verifier checks the slots against the data pages). Only while the threads are parked:
 * a running thread rewrites its slot.
 */
export function readLedger(i32: Int32Array): LedgerRead {
  const head = readLedgerHeader(i32);
  if (head.kind !== 'ok') return head;
  const info = head.info;
  const slots: SlotState[] = [];
  for (let t = 0; t < info.threads; t++) {
    const problem = slotProblem(i32, info, t);
    if (problem !== null) return { kind: 'bad', reason: problem };
    slots.push(readSlot(i32, t));
  }
  const w = firstNonZero(i32, slotBase(info.threads), PAGE_WORDS);
  if (w >= 0) return { kind: 'bad', reason: `ledger: word ${w} (after the ${info.threads} slots) is ${hex32(i32[w])}, must be zero` };
  return { kind: 'ok', info, slots };
}

/** Decode and check the ledger header only (safe while threads rewrite their slots). */
export function readLedgerHeader(i32: Int32Array): { kind: 'blank' } | { kind: 'bad'; reason: string } | { kind: 'ok'; info: LedgerInfo } {
  if (isBlankLedger(i32)) return { kind: 'blank' };
  const magic = i32[L_MAGIC];
  if (magic !== LEDGER_MAGIC) return { kind: 'bad', reason: `ledger: bad magic ${hex32(magic)}` };
  if (i32[L_LAYOUT] !== LEDGER_LAYOUT) return { kind: 'bad', reason: `ledger: unknown layout ${i32[L_LAYOUT]}` };
  const check = ledgerCheck(i32);
  if (i32[L_CHECK] !== check) {
    return { kind: 'bad', reason: `ledger: header checksum ${hex32(i32[L_CHECK])} != ${hex32(check)}` };
  }
  const w = firstNonZero(i32, L_CHECK + 1, LEDGER_HEADER_WORDS);
  if (w >= 0) return { kind: 'bad', reason: `ledger: header word ${w} is ${hex32(i32[w])}, must be zero` };
  const pattern = patternName(i32[L_PATTERN]);
  const threads = i32[L_THREADS];
  const writers = i32[L_WRITERS];
  const dataPages = i32[L_DATA_PAGES];
  const blockPages = i32.length / PAGE_WORDS;
  if (!pattern) return { kind: 'bad', reason: `ledger: unknown pattern ${i32[L_PATTERN]}` };
  if (threads < 1 || threads > MAX_THREADS) return { kind: 'bad', reason: `ledger: bad thread count ${threads}` };
  if (writers < 0 || writers > threads || (pattern === 'read') !== (writers === 0)) {
    return { kind: 'bad', reason: `ledger: bad writer count ${writers} for ${threads} ${pattern} threads` };
  }
  if (dataPages !== blockPages - 1) {
    return { kind: 'bad', reason: `ledger: ${dataPages} data pages but the block has ${blockPages - 1}` };
  }
  const info: LedgerInfo = {
    pattern,
    threads,
    writers,
    readers: threads - writers,
    dataPages,
    seed: i32[L_SEED] >>> 0,
    hotDivisor: i32[L_HOT_DIV],
    hotPercent: i32[L_HOT_PCT],
    baseVersion: i32[L_BASE] >>> 0,
  };
  if (info.hotDivisor < 1 || info.hotPercent < 0 || info.hotPercent > 100) {
    return { kind: 'bad', reason: `ledger: bad hot set 1/${info.hotDivisor} at ${info.hotPercent}%` };
  }
  return { kind: 'ok', info };
}

/** What is wrong with thread t's ledger slot, or null. */
export function slotProblem(i32: Int32Array, info: LedgerInfo, t: number): string | null {
  const s = readSlot(i32, t);
  const want = initialSlot(info, t);
  // The static part of each slot must be what the parameters imply.
  for (const k of ['role', 'part', 'partSize', 'hotBase', 'hotSize'] as const) {
    if (s[k] !== want[k]) return `ledger: thread ${t} ${k} ${s[k]} != ${want[k]} implied by the parameters`;
  }
  if (s.cursor < 0 || s.cursor >= s.partSize) return `ledger: thread ${t} cursor ${s.cursor} outside 0..${s.partSize - 1}`;
  if (s.role === ROLE_READER && s.writes !== 0) return `ledger: reader thread ${t} has ${s.writes} writes`;
  const b = slotBase(t);
  const w = firstNonZero(i32, b + S_READS_HI + 1, b + S_CHECK);
  if (w >= 0) return `ledger: thread ${t} slot word ${w - b} is ${hex32(i32[w])}, must be zero`;
  const check = slotChecksum(t, s);
  if (i32[b + S_CHECK] !== check) {
    return `ledger: thread ${t} slot checksum ${hex32(i32[b + S_CHECK])} != ${hex32(check)} of its words`;
  }
  return null;
}

export function readSlot(i32: Int32Array, t: number): SlotState {
  const b = slotBase(t);
  return {
    writes: (i32[b + S_WRITES_HI] >>> 0) * 0x100000000 + (i32[b + S_WRITES_LO] >>> 0),
    rng: i32[b + S_RNG],
    cursor: i32[b + S_CURSOR],
    hotBase: i32[b + S_HOT_BASE],
    hotSize: i32[b + S_HOT_SIZE],
    role: i32[b + S_ROLE],
    part: i32[b + S_PART],
    partSize: i32[b + S_PART_SIZE],
    reads: (i32[b + S_READS_HI] >>> 0) * 0x100000000 + (i32[b + S_READS_LO] >>> 0),
  };
}

/** Write a whole slot (static part included). */
export function writeSlot(i32: Int32Array, t: number, s: SlotState): void {
  const b = slotBase(t);
  Atomics.store(i32, b + S_HOT_BASE, s.hotBase);
  Atomics.store(i32, b + S_HOT_SIZE, s.hotSize);
  Atomics.store(i32, b + S_ROLE, s.role);
  Atomics.store(i32, b + S_PART, s.part);
  Atomics.store(i32, b + S_PART_SIZE, s.partSize);
  saveSlotProgress(i32, t, s);
}

/**
 * Write what changes in a slot as its thread works: counts first (a writer's page is already
 * written, and the verifier ties its count to the versions), then the pick state, then the
 * slot's checksum, so that a thread ended half-way leaves a slot that fails its checksum.
 * Writers call this on every write: a few stores and one short hash.
 */
export function saveSlotProgress(i32: Int32Array, t: number, s: SlotState): void {
  const b = slotBase(t);
  Atomics.store(i32, b + S_WRITES_LO, low32(s.writes));
  Atomics.store(i32, b + S_WRITES_HI, high32(s.writes));
  Atomics.store(i32, b + S_READS_LO, low32(s.reads));
  Atomics.store(i32, b + S_READS_HI, high32(s.reads));
  Atomics.store(i32, b + S_RNG, s.rng);
  Atomics.store(i32, b + S_CURSOR, s.cursor);
  Atomics.store(i32, b + S_CHECK, slotChecksum(t, s));
}

/**
 * Write a fresh ledger: slots first, then the header, its checksum last, so that an
 * interrupted initialisation never looks like a valid ledger.
 */
export function writeLedger(i32: Int32Array, info: LedgerInfo): void {
  for (let t = 0; t < info.threads; t++) writeSlot(i32, t, initialSlot(info, t));
  i32[L_LAYOUT] = LEDGER_LAYOUT;
  i32[L_PATTERN] = patternCode(info.pattern);
  i32[L_THREADS] = info.threads;
  i32[L_WRITERS] = info.writers;
  i32[L_DATA_PAGES] = info.dataPages;
  i32[L_SEED] = info.seed | 0;
  i32[L_HOT_DIV] = info.hotDivisor;
  i32[L_HOT_PCT] = info.hotPercent;
  i32[L_BASE] = info.baseVersion;
  i32[L_MAGIC] = LEDGER_MAGIC;
  Atomics.store(i32, L_CHECK, ledgerCheck(i32));
}
