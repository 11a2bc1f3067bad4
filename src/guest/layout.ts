// Layout of the reference guest's memory, and the pure functions on it that the workers,
// the controller's setup task and the verifier all share. Everything here works on an
// Int32Array over the whole block (word index = byte offset / 4), so that hot loops are
// plain typed-array word loops and the header/ledger words can be used with Atomics.
//
// Block: page 0 = ledger, pages 1..N-1 = data pages, 4 KiB each (target page size).
//
// Data page, 1024 words:
//   w0 index     the page's own index (a page found at the wrong offset says so)
//   w1 version   number of writes to this page (plus the fill passes); 0 = never written
//   w2 checksum  hash of the body words, seeded with (index, version)
//   w3 flags     0x5047 << 16 magic | 0x8000 busy | bits 8..14 zero | writer thread id
//                (0..63, 0xff = fill)
//   w4..w1023    body: xorshift32 stream seeded from (index, version), never zero
// A page that is entirely zero is a valid version-0 page: memory starts zeroed and the guest
// never runs an initialisation pass over the data pages.
import { TARGET_PAGE_SIZE } from '../base/index.js';


export const PAGE_SIZE = TARGET_PAGE_SIZE;
export const PAGE_WORDS = 1024;
export const HEADER_WORDS = 4;
export const MAX_THREADS = 64;

export const H_INDEX = 0;
export const H_VERSION = 1;
export const H_CHECKSUM = 2;
export const H_FLAGS = 3;

export const FLAGS_MAGIC = 0x5047 << 16;
export const FLAGS_MAGIC_MASK = 0xffff0000 | 0;
export const FLAG_BUSY = 0x8000;
/** Flag bits no writer sets: a page with one of them set is damaged. */
export const FLAGS_RESERVED = 0x7f00;
export const FLAG_WRITER_MASK = 0xff;
/** Writer id stamped by fill passes when the guest has no writer threads ('read' pattern). */
export const FILL_WRITER = 0xff;

export type Pattern = 'sequential' | 'random' | 'hotset' | 'read';
export const PATTERNS: readonly Pattern[] = ['sequential', 'random', 'hotset', 'read'];
export const P_SEQUENTIAL = 1;
export const P_RANDOM = 2;
export const P_HOTSET = 3;
export const P_READ = 4;

export function patternCode(p: Pattern): number {
  const i = PATTERNS.indexOf(p);
  if (i < 0) throw new TypeError(`unknown guest pattern ${JSON.stringify(p)}`);
  return i + 1;
}

export function patternName(code: number): Pattern | undefined {
  return PATTERNS[code - 1];
}

export function hex32(x: number): string {
  return '0x' + (x >>> 0).toString(16).padStart(8, '0');
}

/** murmur3 finaliser: a cheap bijective 32-bit mixer. Returns int32. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

/** One xorshift32 step (int32 in, int32 out). Never returns 0 for a non-zero input. */
export function xs32(x: number): number {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x | 0;
}

/** Seed of a page's body stream: distinct for every (index, version). Never 0. */
export function bodySeed(page: number, version: number): number {
  const s = fmix32(Math.imul(page, 0x9e3779b1) ^ fmix32(version ^ 0x5bd1e995));
  return s === 0 ? 0x6d2b79f5 : s;
}

function checksumSeed(page: number, version: number): number {
  // Seeded with (index, version) so a header whose version does not belong to the body fails
  // even when the header is self-consistent.
  return fmix32(Math.imul(version, 0x27d4eb2f) ^ page ^ 0x165667b1);
}

/**
 * Checksum of the body of the page whose first word is at `base`. Four independent
 * rotate-xor-multiply lanes (word i goes to lane i % 4), for instruction-level parallelism:
 * a 1 GiB block verifies at memory speed. Each lane step is a bijection of the lane for a
 * given word and the lanes are combined by xor of rotations, so any single changed word
 * always changes the result.
 */
export function bodyChecksum(i32: Int32Array, base: number, page: number, version: number): number {
  const s = checksumSeed(page, version);
  let a = s;
  let b = s ^ 0x01234567;
  let c = s ^ 0x3c6ef372;
  let d = s ^ 0x7f4a7c15;
  for (let i = base + HEADER_WORDS, e = base + PAGE_WORDS; i < e; i += 4) {
    a = Math.imul(((a << 5) | (a >>> 27)) ^ i32[i], 0x9e3779b1);
    b = Math.imul(((b << 5) | (b >>> 27)) ^ i32[i + 1], 0x9e3779b1);
    c = Math.imul(((c << 5) | (c >>> 27)) ^ i32[i + 2], 0x9e3779b1);
    d = Math.imul(((d << 5) | (d >>> 27)) ^ i32[i + 3], 0x9e3779b1);
  }
  return combineLanes(a, b, c, d);
}

function combineLanes(a: number, b: number, c: number, d: number): number {
  return fmix32(a ^ ((b << 8) | (b >>> 24)) ^ ((c << 16) | (c >>> 16)) ^ ((d << 24) | (d >>> 8)));
}

/**
 * Write one new version of a page. Order matters for concurrent readers (seqlock): busy
 * first, then body and checksum, then index/version, then busy cleared. A reader that
 * sees busy, or a different flags/version word at the end of its read than at the start,
 * retries instead of reporting.
 */
export function writePage(i32: Int32Array, page: number, version: number, writer: number): void {
  const base = page * PAGE_WORDS;
  Atomics.store(i32, base + H_FLAGS, FLAGS_MAGIC | FLAG_BUSY | writer);
  let x = bodySeed(page, version);
  const s = checksumSeed(page, version);
  let a = s;
  let b = s ^ 0x01234567;
  let c = s ^ 0x3c6ef372;
  let d = s ^ 0x7f4a7c15;
  // Generate and checksum in one pass (same lanes as bodyChecksum).
  for (let i = base + HEADER_WORDS, e = base + PAGE_WORDS; i < e; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    i32[i] = x;
    a = Math.imul(((a << 5) | (a >>> 27)) ^ x, 0x9e3779b1);
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    i32[i + 1] = x;
    b = Math.imul(((b << 5) | (b >>> 27)) ^ x, 0x9e3779b1);
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    i32[i + 2] = x;
    c = Math.imul(((c << 5) | (c >>> 27)) ^ x, 0x9e3779b1);
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    i32[i + 3] = x;
    d = Math.imul(((d << 5) | (d >>> 27)) ^ x, 0x9e3779b1);
  }
  Atomics.store(i32, base + H_CHECKSUM, combineLanes(a, b, c, d));
  Atomics.store(i32, base + H_INDEX, page);
  Atomics.store(i32, base + H_VERSION, version);
  Atomics.store(i32, base + H_FLAGS, FLAGS_MAGIC | writer);
}

/** Index of the first body word that differs from the content of (page, version), or -1. */
export function bodyMismatch(i32: Int32Array, page: number, version: number): number {
  const base = page * PAGE_WORDS;
  let x = bodySeed(page, version);
  for (let i = base + HEADER_WORDS, e = base + PAGE_WORDS; i < e; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    if (i32[i] !== x) return i - base;
  }
  return -1;
}

/**
 * Check one data page. Returns null for a good page (including an all-zero version-0 page)
 * or a reason naming the page. `owner` is the thread that must have written it, or -1 to
 * skip that check (unknown ledger). `deep` also regenerates the body and compares it.
 */
export function checkPage(i32: Int32Array, page: number, owner: number, deep: boolean): string | null {
  const problem = pageProblem(i32, page, owner, deep);
  return problem === null ? null : `page ${page}: ${problem}`;
}

/** What is wrong with a data page (see checkPage), without the page's name; null if nothing. */
export function pageProblem(i32: Int32Array, page: number, owner: number, deep: boolean): string | null {
  const base = page * PAGE_WORDS;
  const idx = i32[base + H_INDEX];
  const ver = i32[base + H_VERSION];
  const sum = i32[base + H_CHECKSUM];
  const flags = i32[base + H_FLAGS];
  if ((idx | ver | sum | flags) === 0) {
    // OR-reduce (no branch per word: this runs at memory speed on a zero-page heavy block).
    let acc = 0;
    for (let i = base + HEADER_WORDS, e = base + PAGE_WORDS; i < e; i += 4) acc |= i32[i] | i32[i + 1] | i32[i + 2] | i32[i + 3];
    if (acc === 0) return null;
    let w = HEADER_WORDS;
    while (i32[base + w] === 0) w++;
    return `blank header but body word ${w} is ${hex32(i32[base + w])} (torn page or lost header)`;
  }
  if ((flags & FLAGS_MAGIC_MASK) !== FLAGS_MAGIC) return `bad header magic ${hex32(flags)}`;
  if (idx !== page) return `header says page ${idx >>> 0}`;
  if (flags & FLAG_BUSY) return `busy flag set (write in progress or interrupted)`;
  if (flags & FLAGS_RESERVED) return `reserved flag bits ${hex32(flags & FLAGS_RESERVED)} set in ${hex32(flags)}`;
  if (ver === 0) return `version 0 with a non-blank header`;
  const writer = flags & FLAG_WRITER_MASK;
  if (owner >= 0 && writer !== owner) return `written by thread ${writer}, owner is thread ${owner}`;
  if (writer >= MAX_THREADS && writer !== FILL_WRITER) return `writer ${writer} is neither a thread nor the fill`;
  const c = bodyChecksum(i32, base, page, ver >>> 0);
  if (c !== sum) return `checksum ${hex32(sum)} in header != ${hex32(c)} of body (version ${ver >>> 0})`;
  if (deep) {
    const w = bodyMismatch(i32, page, ver >>> 0);
    if (w >= 0) return `body word ${w} differs from the content of version ${ver >>> 0}`;
  }
  return null;
}
