// Byte readers for the decoders.
//
// ChunkReader reads tentatively across queued chunks: a decoder parses one whole item, and if the
// bytes run out part-way the read throws NEED_MORE, the decoder rolls the cursor back and waits
// for the next push. Only `commit()` drops bytes. This makes decoding independent of how the
// input is split, at the cost of re-reading a header when an item straddles pushes.
import { hex, ProtocolError } from '../base/index.js';

/** Thrown by ChunkReader when the buffered bytes end inside a read. Never escapes a decoder. */
export const NEED_MORE: unique symbol = Symbol('postcopy.wire.needMore');

const EMPTY = new Uint8Array(0);

/** A private copy as a plain Uint8Array (Buffer#slice would return a view). */
export function copyBytes(view: Uint8Array): Uint8Array {
  const out = new Uint8Array(view.length);
  out.set(view);
  return out;
}

export class ChunkReader {
  #chunks: Uint8Array[] = [];
  /** Committed position: chunk index and offset in it. */
  #first = 0;
  #firstOffset = 0;
  /** Bytes buffered past the committed position. */
  #buffered = 0;
  /** Cursor: chunk index, offset in it, bytes read since the committed position. */
  #ci = 0;
  #co = 0;
  #read = 0;
  #position = 0;

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
  }

  /** Bytes committed as consumed since the start: the stream offset of the next item. */
  get position(): number {
    return this.#position;
  }

  /** Bytes not yet committed as consumed. */
  get buffered(): number {
    return this.#buffered;
  }

  /** Bytes after the cursor. */
  get remaining(): number {
    return this.#buffered - this.#read;
  }

  /** Throws NEED_MORE unless `n` bytes follow the cursor. */
  need(n: number): void {
    if (this.#buffered - this.#read < n) throw NEED_MORE;
  }

  /** The byte at the cursor without consuming it (NEED_MORE if there is none). */
  peek(): number {
    this.need(1);
    return this.#chunks[this.#ci][this.#co];
  }

  u8(): number {
    this.need(1);
    const chunk = this.#chunks[this.#ci];
    const v = chunk[this.#co];
    this.#advance(chunk, 1);
    return v;
  }

  u16(): number {
    this.need(2);
    const chunk = this.#chunks[this.#ci];
    const o = this.#co;
    if (o + 2 <= chunk.length) {
      this.#advance(chunk, 2);
      return (chunk[o] << 8) | chunk[o + 1];
    }
    return (this.u8() << 8) | this.u8();
  }

  u32(): number {
    this.need(4);
    const chunk = this.#chunks[this.#ci];
    const o = this.#co;
    if (o + 4 <= chunk.length) {
      this.#advance(chunk, 4);
      return ((chunk[o] << 24) | (chunk[o + 1] << 16) | (chunk[o + 2] << 8) | chunk[o + 3]) >>> 0;
    }
    return ((this.u8() << 24) | (this.u8() << 16) | (this.u8() << 8) | this.u8()) >>> 0;
  }

  /**
   * `n` bytes: a view into the pushed chunk when they lie inside one (unless `copy`), else a
   * fresh copy. Either way the bytes are copied at most once.
   */
  bytes(n: number, copy = false): Uint8Array {
    if (n === 0) return EMPTY;
    this.need(n);
    const chunk = this.#chunks[this.#ci];
    const o = this.#co;
    if (o + n <= chunk.length) {
      this.#advance(chunk, n);
      return copy ? copyBytes(chunk.subarray(o, o + n)) : chunk.subarray(o, o + n);
    }
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const c = this.#chunks[this.#ci];
      const take = Math.min(n - filled, c.length - this.#co);
      out.set(c.subarray(this.#co, this.#co + take), filled);
      filled += take;
      this.#advance(c, take);
    }
    return out;
  }

  /** Makes everything read so far consumed. */
  commit(): void {
    this.#position += this.#read;
    this.#buffered -= this.#read;
    this.#read = 0;
    // Drop consumed chunks; batch the splice so byte-sized pushes stay linear.
    if (this.#ci === this.#chunks.length) {
      this.#chunks = [];
      this.#ci = 0;
    } else if (this.#ci >= 64) {
      this.#chunks.splice(0, this.#ci);
      this.#ci = 0;
    }
    this.#first = this.#ci;
    this.#firstOffset = this.#co;
  }

  /** Moves the cursor back to the last commit. */
  rollback(): void {
    this.#ci = this.#first;
    this.#co = this.#firstOffset;
    this.#read = 0;
  }

  #advance(chunk: Uint8Array, n: number): void {
    this.#read += n;
    this.#co += n;
    if (this.#co === chunk.length) {
      this.#ci++;
      this.#co = 0;
    }
  }
}

/** A bounded reader over one complete payload; running past its end is a protocol error. */
export class PayloadReader {
  #pos = 0;

  constructor(
    readonly bytes: Uint8Array,
    readonly context: string,
  ) {}

  get remaining(): number {
    return this.bytes.length - this.#pos;
  }

  #take(n: number, field: string): number {
    if (this.#pos + n > this.bytes.length) {
      throw new ProtocolError(`${this.context}: payload of ${this.bytes.length} bytes ends inside ${field}`);
    }
    const at = this.#pos;
    this.#pos += n;
    return at;
  }

  u8(field: string): number {
    return this.bytes[this.#take(1, field)];
  }

  u32(field: string): number {
    const o = this.#take(4, field);
    const b = this.bytes;
    return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
  }

  u64(field: string): number {
    const hi = this.u32(field);
    const lo = this.u32(field);
    return hi < 0x200000 ? hi * 0x100000000 + lo : u64Number(hi, lo, `${this.context}: ${field}`);
  }

  slice(n: number, field: string): Uint8Array {
    const o = this.#take(n, field);
    return this.bytes.subarray(o, o + n);
  }

  /** A payload that is exactly `u8 n, idstr[n]` (RECV_BITMAP in both directions): the idstr. */
  wholeIdstr(): string {
    const n = this.u8('idstr length');
    const len = this.bytes.length;
    if (len !== 1 + n) throw new ProtocolError(`${this.context}: length ${len} does not match idstr length ${n} (must be ${1 + n})`);
    return decodeName(this.slice(n, 'idstr'), `${this.context}: idstr`);
  }
}

/** The u64 hi:lo as a number, or a protocol error naming `field` when it exceeds 2^53 - 1. */
export function u64Number(hi: number, lo: number, field: string): number {
  if (hi >= 0x200000) {
    throw new ProtocolError(`${field} ${hex((BigInt(hi) << 32n) | BigInt(lo))} exceeds 2^53 - 1`);
  }
  return hi * 0x100000000 + lo;
}

export function u64BigInt(hi: number, lo: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}

// fatal: invalid UTF-8 is refused, never replaced; ignoreBOM: a leading U+FEFF is part of the
// text (as Buffer.from(text, 'utf8') writes it), so a name decodes to exactly what was encoded.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** `bytes` as text if they are valid UTF-8, else undefined (the caller names the field). */
export function decodeUtf8(bytes: Uint8Array): string | undefined {
  try {
    return utf8.decode(bytes);
  } catch {
    return undefined;
  }
}

/** A block or session name: valid UTF-8 without NUL, named in errors by `field`. */
export function decodeName(bytes: Uint8Array, field: string): string {
  const text = decodeUtf8(bytes);
  if (text === undefined) throw new ProtocolError(`${field} ${Buffer.from(bytes).toString('hex')} (hex) is not valid UTF-8`);
  if (text.includes('\0')) throw new ProtocolError(`${field} ${JSON.stringify(text)} contains a NUL byte`);
  return text;
}
