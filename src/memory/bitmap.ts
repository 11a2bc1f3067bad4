// A fixed-size bitmap over 32-bit words (plain number ops; BigInt words would be far slower).
//
// Invariants: the word array always holds a whole number of 64-bit words (so the little-endian
// serialisation QEMU uses is a straight copy on little-endian hosts) and every bit at or past
// `size` is zero (so count, isFull and the find functions need no masking on the hot path).
// The population count is maintained incrementally, which makes `count()` and `isFull()` O(1).

const MAX_BITS = 2 ** 32; // indices must survive `>>> 5`

const littleEndianHost = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function popcount32(v: number): number {
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Index of the lowest set bit of a non-zero 32-bit value. */
function ctz32(v: number): number {
  return 31 - Math.clz32(v & -v);
}

/** Mask of bits [from, to) within one word, 0 <= from < to <= 32. */
function wordMask(from: number, to: number): number {
  const high = to === 32 ? 0xffffffff : (1 << to) - 1;
  return (high & ~((1 << from) - 1)) >>> 0;
}

export class Bitmap {
  readonly size: number;
  readonly #words: Uint32Array;
  #count = 0;

  constructor(size: number) {
    if (!Number.isInteger(size) || size < 0 || size > MAX_BITS) {
      throw new RangeError(`Bitmap size ${size} must be an integer in [0, 2^32]`);
    }
    this.size = size;
    this.#words = new Uint32Array(Math.ceil(size / 64) * 2);
  }

  /** Bytes of the little-endian serialisation for `size` bits: whole 64-bit words. */
  static byteLength(size: number): number {
    return Math.ceil(size / 64) * 8;
  }

  /**
   * The inverse of `toLittleEndianBytes`. Accepts from ceil(size/8) bytes (unpadded) up to the
   * padded length; bits past `size` (padding) are ignored.
   */
  static fromLittleEndianBytes(bytes: Uint8Array, size: number): Bitmap {
    const map = new Bitmap(size);
    const min = Math.ceil(size / 8);
    const max = Bitmap.byteLength(size);
    if (bytes.length < min || bytes.length > max) {
      throw new RangeError(`Bitmap bytes: length ${bytes.length} does not fit ${size} bits (must be ${min}..${max})`);
    }
    const words = map.#words;
    const whole = bytes.length >>> 2;
    if (littleEndianHost && bytes.byteOffset % 4 === 0) {
      words.set(new Uint32Array(bytes.buffer, bytes.byteOffset, whole));
    } else {
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      for (let w = 0; w < whole; w++) words[w] = view.getUint32(w * 4, true);
    }
    for (let i = whole * 4; i < bytes.length; i++) words[i >>> 2] |= bytes[i] << ((i & 3) * 8);
    map.#maskTail();
    map.#recount();
    return map;
  }

  /**
   * The map as 64-bit little-endian words (bit i is bit i%64 of word i/64), i.e. byte i/8 bit i%8,
   * padded to a multiple of 8 bytes: the layout of QEMU's received-bitmap message.
   */
  toLittleEndianBytes(): Uint8Array {
    const words = this.#words;
    const out = new Uint8Array(words.length * 4);
    if (littleEndianHost) {
      out.set(new Uint8Array(words.buffer, words.byteOffset, out.length));
    } else {
      const view = new DataView(out.buffer);
      for (let w = 0; w < words.length; w++) view.setUint32(w * 4, words[w], true);
    }
    return out;
  }

  get(i: number): boolean {
    this.#check(i);
    return (this.#words[i >>> 5] & (1 << (i & 31))) !== 0;
  }

  set(i: number): void {
    this.#check(i);
    const w = i >>> 5;
    const bit = 1 << (i & 31);
    if ((this.#words[w] & bit) === 0) {
      this.#words[w] |= bit;
      this.#count++;
    }
  }

  clear(i: number): void {
    this.#check(i);
    const w = i >>> 5;
    const bit = 1 << (i & 31);
    if ((this.#words[w] & bit) !== 0) {
      this.#words[w] &= ~bit;
      this.#count--;
    }
  }

  /** Sets bit i and says whether it was already set. */
  testAndSet(i: number): boolean {
    this.#check(i);
    const w = i >>> 5;
    const bit = 1 << (i & 31);
    if ((this.#words[w] & bit) !== 0) return true;
    this.#words[w] |= bit;
    this.#count++;
    return false;
  }

  /** Sets [start, start+count); returns how many of those bits were clear before. */
  setRange(start: number, count: number): number {
    this.#checkRange(start, count);
    return this.#applyRange(start, start + count, true);
  }

  /** Clears [start, start+count); returns how many of those bits were set before. */
  clearRange(start: number, count: number): number {
    this.#checkRange(start, count);
    return -this.#applyRange(start, start + count, false);
  }

  /** True when every bit of [start, start+count) is set (true for count 0). */
  isRangeSet(start: number, count: number): boolean {
    this.#checkRange(start, count);
    return count === 0 || this.findNextZero(start) >= start + count;
  }

  /** True when no bit of [start, start+count) is set (true for count 0). */
  isRangeClear(start: number, count: number): boolean {
    this.#checkRange(start, count);
    return count === 0 || this.findNextSet(start) >= start + count;
  }

  /** First set bit at or after `from` (0 <= from <= size), or `size` when there is none. */
  findNextSet(from: number): number {
    this.#checkFrom(from);
    const words = this.#words;
    let w = from >>> 5;
    if (w >= words.length) return this.size;
    let v = words[w] & ~((1 << (from & 31)) - 1);
    while (v === 0) {
      if (++w >= words.length) return this.size;
      v = words[w];
    }
    return w * 32 + ctz32(v);
  }

  /** First clear bit at or after `from` (0 <= from <= size), or `size` when there is none. */
  findNextZero(from: number): number {
    this.#checkFrom(from);
    const words = this.#words;
    let w = from >>> 5;
    if (w >= words.length) return this.size;
    let v = ~words[w] & ~((1 << (from & 31)) - 1);
    while (v === 0) {
      if (++w >= words.length) return this.size;
      v = ~words[w];
    }
    // Padding bits are zero, so a "zero" found there means none below size.
    return Math.min(w * 32 + ctz32(v), this.size);
  }

  /** Number of set bits. */
  count(): number {
    return this.#count;
  }

  isFull(): boolean {
    return this.#count === this.size;
  }

  isEmpty(): boolean {
    return this.#count === 0;
  }

  fill(): void {
    this.#words.fill(0xffffffff);
    this.#maskTail();
    this.#count = this.size;
  }

  clearAll(): void {
    this.#words.fill(0);
    this.#count = 0;
  }

  /** Complements every bit in place (e.g. received map -> still-to-send map). */
  invert(): void {
    const words = this.#words;
    for (let w = 0; w < words.length; w++) words[w] = ~words[w];
    this.#maskTail();
    this.#count = this.size - this.#count;
  }

  clone(): Bitmap {
    const copy = new Bitmap(this.size);
    copy.#words.set(this.#words);
    copy.#count = this.#count;
    return copy;
  }

  equals(other: Bitmap): boolean {
    if (other.size !== this.size || other.#count !== this.#count) return false;
    const a = this.#words;
    const b = other.#words;
    for (let w = 0; w < a.length; w++) if (a[w] !== b[w]) return false;
    return true;
  }

  /** Runs of set bits as [start, length], in ascending order. */
  *ranges(): IterableIterator<[start: number, length: number]> {
    let start = this.findNextSet(0);
    while (start < this.size) {
      const end = this.findNextZero(start);
      yield [start, end - start];
      if (end >= this.size) return;
      start = this.findNextSet(end);
    }
  }

  /** Runs of bits set both here and in `other` (of the same size) as [start, length], ascending. */
  andRanges(other: Bitmap): [start: number, length: number][] {
    if (other.size !== this.size) throw new RangeError(`Bitmap andRanges: sizes ${this.size} and ${other.size} differ`);
    const runs: [number, number][] = [];
    if (this.#count === 0 || other.#count === 0) return runs; // e.g. nothing sent yet: no walk
    const a = this.#words;
    const b = other.#words;
    let runStart = -1;
    for (let w = 0; w < a.length; w++) {
      const v = a[w] & b[w];
      // whole words inside or outside a run need no bit walk
      if (runStart < 0 ? v === 0 : v === -1) continue;
      let bit = 0;
      while (bit < 32) {
        const above = bit === 0 ? -1 : ~((1 << bit) - 1);
        if (runStart < 0) {
          const set = v & above;
          if (set === 0) break;
          bit = ctz32(set);
          runStart = w * 32 + bit;
        } else {
          const clear = ~v & above;
          if (clear === 0) break;
          bit = ctz32(clear);
          runs.push([runStart, w * 32 + bit - runStart]);
          runStart = -1;
        }
      }
    }
    // bits past size are zero, so a run still open ends at size
    if (runStart >= 0) runs.push([runStart, this.size - runStart]);
    return runs;
  }

  /** Runs of clear bits as [start, length], in ascending order. */
  *zeroRanges(): IterableIterator<[start: number, length: number]> {
    let start = this.findNextZero(0);
    while (start < this.size) {
      const end = this.findNextSet(start);
      yield [start, end - start];
      if (end >= this.size) return;
      start = this.findNextZero(end);
    }
  }

  /** Sets or clears [start, end); returns the change in the population count. */
  #applyRange(start: number, end: number, value: boolean): number {
    if (start === end) return 0;
    const words = this.#words;
    const first = start >>> 5;
    const last = (end - 1) >>> 5;
    let delta = 0;
    for (let w = first; w <= last; w++) {
      const lo = w === first ? start & 31 : 0;
      const hi = w === last ? ((end - 1) & 31) + 1 : 32;
      const mask = lo === 0 && hi === 32 ? 0xffffffff : wordMask(lo, hi);
      const before = words[w];
      const after = value ? (before | mask) >>> 0 : (before & ~mask) >>> 0;
      if (after !== before) {
        delta += popcount32(after) - popcount32(before);
        words[w] = after;
      }
    }
    this.#count += delta;
    return delta;
  }

  #maskTail(): void {
    const words = this.#words;
    const full = this.size >>> 5;
    const rest = this.size & 31;
    if (rest !== 0) words[full] &= (1 << rest) - 1;
    for (let w = full + (rest !== 0 ? 1 : 0); w < words.length; w++) words[w] = 0;
  }

  #recount(): void {
    let n = 0;
    for (const v of this.#words) n += popcount32(v);
    this.#count = n;
  }

  #check(i: number): void {
    if (!(Number.isInteger(i) && i >= 0 && i < this.size)) {
      throw new RangeError(`Bitmap index ${i} is out of range [0, ${this.size})`);
    }
  }

  #checkFrom(from: number): void {
    if (!(Number.isInteger(from) && from >= 0 && from <= this.size)) {
      throw new RangeError(`Bitmap start ${from} is out of range [0, ${this.size}]`);
    }
  }

  #checkRange(start: number, count: number): void {
    if (!(Number.isInteger(start) && Number.isInteger(count) && start >= 0 && count >= 0 && start + count <= this.size)) {
      throw new RangeError(`Bitmap range start ${start} count ${count} is out of range [0, ${this.size})`);
    }
  }
}
