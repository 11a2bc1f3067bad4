// Which of a set of disjoint address ranges holds an address: one sorted array and a binary
// search, no allocation per lookup. The one way this package maps an address to its block,
// its mapping or its registered range (faults, write-protect faults, placements).

export class RangeIndex<T> {
  private starts: number[] = [];
  private ends: number[] = [];
  private values: T[] = [];

  constructor(entries: Iterable<{ start: number; end: number; value: T }> = []) {
    for (const e of entries) this.add(e.start, e.end, e.value);
  }

  get size(): number {
    return this.values.length;
  }

  /** Adds [start, end); a range overlapping one already here is refused (RangeError). */
  add(start: number, end: number, value: T): void {
    if (!(end > start)) throw new RangeError(`RangeIndex: empty range ${start}..${end}`);
    const i = this.firstEndingAfter(start);
    if (i < this.starts.length && this.starts[i] < end) {
      throw new RangeError(`RangeIndex: ${start}..${end} overlaps ${this.starts[i]}..${this.ends[i]}`);
    }
    this.starts.splice(i, 0, start);
    this.ends.splice(i, 0, end);
    this.values.splice(i, 0, value);
  }

  /** Removes the ranges that hold `value`. */
  remove(value: T): void {
    for (let i = this.values.length - 1; i >= 0; i--) {
      if (this.values[i] !== value) continue;
      this.starts.splice(i, 1);
      this.ends.splice(i, 1);
      this.values.splice(i, 1);
    }
  }

  /** The position of the range that holds all of [address, address + length), or -1. */
  indexOf(address: number, length = 1): number {
    const i = this.firstEndingAfter(address);
    // the first range to end after `address` is the only one that can hold it (NaN finds none)
    if (i === this.starts.length || !(address >= this.starts[i]) || !(address + length <= this.ends[i])) return -1;
    return i;
  }

  /** The value of the range that holds all of [address, address + length). */
  find(address: number, length = 1): T | undefined {
    const i = this.indexOf(address, length);
    return i < 0 ? undefined : this.values[i];
  }

  /** The values of the ranges that overlap [start, end). */
  overlapping(start: number, end: number): T[] {
    const found: T[] = [];
    for (let i = this.firstEndingAfter(start); i < this.starts.length && this.starts[i] < end; i++) found.push(this.values[i]);
    return found;
  }

  startAt(i: number): number {
    return this.starts[i];
  }

  valueAt(i: number): T {
    return this.values[i];
  }

  /** Every range, in address order. */
  *entries(): IterableIterator<{ start: number; end: number; value: T }> {
    for (let i = 0; i < this.values.length; i++) yield { start: this.starts[i], end: this.ends[i], value: this.values[i] };
  }

  private firstEndingAfter(address: number): number {
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid] <= address) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
