// Fixed-size big-endian writer for the encoders, plus the input checks they share. Encoder misuse
// is a programming error, so these throw RangeError/TypeError rather than ProtocolError.
import { checkIdstr } from '../memory/ramblock.js';
import { MAX_IDSTR_BYTES } from './constants.js';
import { hex } from '../base/index.js';

export class Writer {
  readonly buffer: Buffer;
  #pos = 0;

  constructor(size: number) {
    this.buffer = Buffer.allocUnsafe(size);
  }

  u8(v: number): this {
    this.buffer[this.#pos++] = v;
    return this;
  }

  u16(v: number): this {
    this.buffer.writeUInt16BE(v, this.#pos);
    this.#pos += 2;
    return this;
  }

  u32(v: number): this {
    this.buffer.writeUInt32BE(v, this.#pos);
    this.#pos += 4;
    return this;
  }

  /** A u64 from a safe integer (callers check the range). */
  u64(v: number): this {
    this.buffer.writeUInt32BE(Math.floor(v / 0x100000000), this.#pos);
    this.buffer.writeUInt32BE(v % 0x100000000, this.#pos + 4);
    this.#pos += 8;
    return this;
  }

  /** pairs[from..to) as u64 pairs (safe integers): a DataView, as thousands may be written by code not yet optimised. */
  u64Pairs(pairs: readonly (readonly [number, number])[], from: number, to: number): this {
    const view = new DataView(this.buffer.buffer, this.buffer.byteOffset + this.#pos, 16 * (to - from));
    for (let i = from, at = 0; i < to; i++, at += 16) {
      const [a, b] = pairs[i];
      view.setUint32(at, Math.floor(a / 0x100000000));
      view.setUint32(at + 4, a % 0x100000000);
      view.setUint32(at + 8, Math.floor(b / 0x100000000));
      view.setUint32(at + 12, b % 0x100000000);
    }
    this.#pos += 16 * (to - from);
    return this;
  }

  u64n(v: bigint): this {
    this.buffer.writeBigUInt64BE(v, this.#pos);
    this.#pos += 8;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.buffer.set(b, this.#pos);
    this.#pos += b.length;
    return this;
  }

  /** The buffer, after checking every byte was written (a size mistake would leak old memory). */
  done(): Buffer {
    if (this.#pos !== this.buffer.length) throw new Error(`internal: wrote ${this.#pos} of ${this.buffer.length} bytes`);
    return this.buffer;
  }
}

/** UTF-8 bytes of a block name, checked to fit behind a u8 length. */
export function nameBytes(name: string, field: string): Buffer {
  const bad = checkIdstr(name);
  if (bad !== undefined) throw new RangeError(`${field}: ${bad}`);
  return Buffer.from(name, 'utf8');
}

/** UTF-8 bytes of a free-form short string (session id): 1..255 bytes, no NUL. */
export function shortStringBytes(text: string, field: string): Buffer {
  if (typeof text !== 'string') throw new TypeError(`${field} must be a string, got ${typeof text}`);
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length < 1 || bytes.length > MAX_IDSTR_BYTES) throw new RangeError(`${field} '${text}' is ${bytes.length} bytes as UTF-8 (must be 1..255)`);
  if (text.includes('\0')) throw new RangeError(`${field} ${JSON.stringify(text)} contains a NUL character`);
  return bytes;
}

export function checkUint(value: number, bits: 8 | 16 | 32, field: string): void {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) throw new RangeError(`${field} ${value} is not a u${bits}`);
}

export function checkU64(value: number, field: string): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${field} ${value} must be a non-negative safe integer`);
}

export function checkAligned(value: number, alignment: number, field: string): void {
  checkU64(value, field);
  if (value % alignment !== 0) throw new RangeError(`${field} ${hex(value)} is not a multiple of ${hex(alignment)}`);
}

export function checkBytes(data: Uint8Array, length: number, field: string): void {
  if (!(data instanceof Uint8Array)) throw new TypeError(`${field} must be a Uint8Array`);
  if (data.length !== length) throw new RangeError(`${field} is ${data.length} bytes (must be ${length})`);
}
