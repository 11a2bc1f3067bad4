// The return path, destination -> source on the main connection (QEMU's MIG_RP_MSG_*), and the
// handshake replies every connection gets: `u16 type, u16 len, payload[len]`.
//
// RECV_BITMAP is the one message longer than its u16 len, as in QEMU: len covers only
// `u8 n, idstr`; then follow `u64 size` (bytes of bitmap), the bitmap as little-endian 64-bit
// words (size = ceil(bits / 64) * 8, bits = postcopyLength / 4096), and `u64 0x0123456789abcdef`.
import { Bitmap } from '../memory/bitmap.js';
import { toLookupFunction, type BlockLookup, type BlockShape } from './blocks.js';
import { MAX_IDSTR_BYTES, NONCE_BYTES, RECV_BITMAP_ENDING, ReturnPathType, returnPathTypeName } from './constants.js';
import { ChunkReader, NEED_MORE, PayloadReader, copyBytes, decodeName, decodeUtf8, u64BigInt, u64Number } from './reader.js';
import { Writer, checkAligned, checkBytes, checkUint, nameBytes } from './writer.js';
import { hex, ProtocolError, TARGET_PAGE_SIZE } from '../base/index.js';

export type ReturnPathEvent<B = BlockShape> =
  | { type: 'shut'; status: number }
  | { type: 'pong'; value: number }
  /** `named`: the message was REQ_PAGES_ID (it named the block) rather than REQ_PAGES. */
  | { type: 'req-pages'; block: B; idstr: string; start: number; length: number; named: boolean }
  | { type: 'recv-bitmap'; block: B; idstr: string; bitmap: Bitmap }
  | { type: 'resume-ack'; value: number }
  | { type: 'hello-ack'; capabilities: number | undefined }
  | { type: 'refuse'; reason: string }
  | { type: 'challenge'; nonce: Uint8Array };

export interface ReturnPathDecoderOptions<B extends BlockShape> {
  /** Resolves the idstrs of REQ_PAGES_ID and RECV_BITMAP (the source's blocks). */
  blocks: BlockLookup<B>;
}

/** Payload length per type: exact, [minimum], or a list of allowed lengths. */
const RP_LENGTH: Record<number, number | [number] | number[]> = {
  [ReturnPathType.SHUT]: 4,
  [ReturnPathType.PONG]: 4,
  [ReturnPathType.REQ_PAGES_ID]: [8 + 4 + 1 + 1],
  [ReturnPathType.REQ_PAGES]: 12,
  [ReturnPathType.RECV_BITMAP]: [2],
  [ReturnPathType.RESUME_ACK]: 4,
  [ReturnPathType.HELLO_ACK]: [0, 4],
  [ReturnPathType.REFUSE]: [1],
  [ReturnPathType.CHALLENGE]: NONCE_BYTES,
};

function lengthOk(rule: number | number[], len: number): boolean {
  if (typeof rule === 'number') return len === rule;
  if (rule.length === 1) return len >= rule[0];
  return rule.includes(len);
}

function lengthRule(rule: number | number[]): string {
  if (typeof rule === 'number') return String(rule);
  if (rule.length === 1) return `at least ${rule[0]}`;
  return rule.join(' or ');
}

/** Throws unless `len` is a payload length RP_LENGTH allows for `type`. */
function checkMessageLength(type: number, len: number, context: string): void {
  const rule = RP_LENGTH[type];
  if (!lengthOk(rule, len)) throw new ProtocolError(`${context}: length ${len} does not match (must be ${lengthRule(rule)})`);
}

/** REFUSE: `u8 n, reason` in UTF-8. */
function refuseMessage(payload: PayloadReader, len: number): ReturnPathEvent<never> {
  const context = payload.context;
  const n = payload.u8('reason length');
  if (len !== 1 + n) throw new ProtocolError(`${context}: length ${len} does not match reason length ${n} (must be ${1 + n})`);
  const bytes = payload.slice(n, 'reason');
  const reason = decodeUtf8(bytes);
  if (reason === undefined) throw new ProtocolError(`${context}: reason ${Buffer.from(bytes).toString('hex')} (hex) is not valid UTF-8`);
  return { type: 'refuse', reason };
}

/** A page request must be whole target pages inside the block's postcopy length. */
function checkRequestRange(context: string, start: number, length: number, idstr: string, limit: number): void {
  if (start % TARGET_PAGE_SIZE !== 0) throw new ProtocolError(`${context}: start ${hex(start)} is not a multiple of ${TARGET_PAGE_SIZE}`);
  if (length === 0 || length % TARGET_PAGE_SIZE !== 0) {
    throw new ProtocolError(`${context}: length ${hex(length)} is not a positive multiple of ${TARGET_PAGE_SIZE}`);
  }
  if (start + length > limit) {
    throw new ProtocolError(`${context}: range ${hex(start)}+${hex(length)} extends beyond block '${idstr}' length ${hex(limit)}`);
  }
}

/** Incremental decoder of return-path messages; same pull model and guarantees as StreamDecoder. */
export class ReturnPathDecoder<B extends BlockShape = BlockShape> {
  readonly #reader = new ChunkReader();
  readonly #lookup: (idstr: string) => B | undefined;
  #failed = false;
  #error: unknown = undefined;
  /** Block of the last REQ_PAGES_ID, which REQ_PAGES refers to. */
  #block: B | undefined = undefined;
  #blockId = '';

  constructor(options: ReturnPathDecoderOptions<B>) {
    this.#lookup = toLookupFunction(options.blocks);
  }

  get pending(): number {
    return this.#reader.buffered;
  }

  get failed(): boolean {
    return this.#failed;
  }

  push(chunk: Uint8Array): void {
    if (this.#failed) throw this.#error;
    this.#reader.push(chunk);
  }

  next(): ReturnPathEvent<B> | undefined {
    if (this.#failed) throw this.#error;
    const reader = this.#reader;
    let event: ReturnPathEvent<B>;
    try {
      event = this.#message();
    } catch (error) {
      if (error === NEED_MORE) {
        reader.rollback();
        return undefined;
      }
      this.#failed = true;
      this.#error = error;
      throw error;
    }
    reader.commit();
    return event;
  }

  *events(): IterableIterator<ReturnPathEvent<B>> {
    for (let event = this.next(); event !== undefined; event = this.next()) yield event;
  }

  /** The connection ended: throws if it ended inside a message. */
  finish(): void {
    if (this.#failed) throw this.#error;
    const buffered = this.#reader.buffered;
    if (buffered > 0) {
      this.#failed = true;
      this.#error = new ProtocolError(`return path truncated: ${buffered} byte(s) of an incomplete message pending`);
      throw this.#error;
    }
  }

  #message(): ReturnPathEvent<B> {
    const reader = this.#reader;
    const type = reader.u16();
    const name = returnPathTypeName(type);
    if (name === undefined) throw new ProtocolError(`return path message type ${hex(type)} is unknown`);
    const context = `return path ${name}`;
    const len = reader.u16();
    checkMessageLength(type, len, context);
    const payload = new PayloadReader(reader.bytes(len), context);
    switch (type) {
      case ReturnPathType.SHUT:
        return { type: 'shut', status: payload.u32('status') };
      case ReturnPathType.PONG:
        return { type: 'pong', value: payload.u32('value') };
      case ReturnPathType.RESUME_ACK:
        return { type: 'resume-ack', value: payload.u32('value') };
      case ReturnPathType.HELLO_ACK:
        return { type: 'hello-ack', capabilities: len === 4 ? payload.u32('capabilities') : undefined };
      case ReturnPathType.CHALLENGE:
        return { type: 'challenge', nonce: copyBytes(payload.slice(NONCE_BYTES, 'nonce')) };
      case ReturnPathType.REFUSE:
        return refuseMessage(payload, len);
      case ReturnPathType.REQ_PAGES:
      case ReturnPathType.REQ_PAGES_ID:
        return this.#reqPages(payload, len, type === ReturnPathType.REQ_PAGES_ID);
      case ReturnPathType.RECV_BITMAP:
        return this.#recvBitmap(payload);
    }
    /* c8 ignore next */
    throw new Error(`internal: return path ${name} has no decoder`);
  }

  /** REQ_PAGES and REQ_PAGES_ID (`named`): the latter names the block, the former reuses it. */
  #reqPages(payload: PayloadReader, len: number, named: boolean): ReturnPathEvent<B> {
    const context = payload.context;
    const start = payload.u64('start');
    const length = payload.u32('length');
    let block = this.#block;
    let idstr = this.#blockId;
    if (named) {
      const n = payload.u8('idstr length');
      if (n === 0 || len !== 13 + n) throw new ProtocolError(`${context}: length ${len} does not match idstr length ${n} (must be ${13 + n}, idstr 1..255 bytes)`);
      idstr = decodeName(payload.slice(n, 'idstr'), `${context}: idstr`);
      block = this.#lookup(idstr);
      if (block === undefined) throw new ProtocolError(`${context}: block '${idstr}' is unknown`);
    } else if (block === undefined) {
      throw new ProtocolError(`${context}: no block named yet (REQ_PAGES_ID must come first)`);
    }
    checkRequestRange(context, start, length, idstr, block.postcopyLength);
    this.#block = block;
    this.#blockId = idstr;
    return { type: 'req-pages', block, idstr, start, length, named };
  }

  /** RECV_BITMAP: the message names the block; `u64 size`, the bitmap and the end mark follow it. */
  #recvBitmap(payload: PayloadReader): ReturnPathEvent<B> {
    const context = payload.context;
    const idstr = payload.wholeIdstr();
    const block = this.#lookup(idstr);
    if (block === undefined) throw new ProtocolError(`${context}: block '${idstr}' is unknown`);
    // The bitmap and end mark follow the message, outside its u16 length.
    const reader = this.#reader;
    const size = u64Number(reader.u32(), reader.u32(), `${context}: block '${idstr}' bitmap size`);
    const bits = Math.floor(block.postcopyLength / TARGET_PAGE_SIZE);
    const expected = Bitmap.byteLength(bits);
    if (size !== expected) {
      throw new ProtocolError(
        `${context}: block '${idstr}' bitmap size ${hex(size)} does not match ${hex(expected)} (postcopy length ${hex(block.postcopyLength)})`,
      );
    }
    const bytes = reader.bytes(size);
    const endHi = reader.u32();
    const endLo = reader.u32();
    const end = u64BigInt(endHi, endLo);
    if (end !== RECV_BITMAP_ENDING) {
      throw new ProtocolError(`${context}: block '${idstr}' end mark ${hex(end)} is not ${hex(RECV_BITMAP_ENDING)}`);
    }
    return { type: 'recv-bitmap', block, idstr, bitmap: Bitmap.fromLittleEndianBytes(bytes, bits) };
  }
}

// ---- encoders ----

function message(type: number, payloadLength: number): Writer {
  return new Writer(4 + payloadLength).u16(type).u16(payloadLength);
}

function u32Message(type: number, value: number, field: string): Buffer {
  checkUint(value, 32, field);
  return message(type, 4).u32(value).done();
}

export function encodeShut(status: number): Buffer {
  return u32Message(ReturnPathType.SHUT, status, 'SHUT status');
}

export function encodePong(value: number): Buffer {
  return u32Message(ReturnPathType.PONG, value, 'PONG value');
}

export function encodeResumeAck(value: number): Buffer {
  return u32Message(ReturnPathType.RESUME_ACK, value, 'RESUME_ACK value');
}

function checkRequest(start: number, length: number): void {
  checkAligned(start, TARGET_PAGE_SIZE, 'REQ_PAGES start');
  checkUint(length, 32, 'REQ_PAGES length');
  if (length === 0 || length % TARGET_PAGE_SIZE !== 0) throw new RangeError(`REQ_PAGES length ${length} is not a positive multiple of ${TARGET_PAGE_SIZE}`);
}

/** REQ_PAGES: `u64 start, u32 length`, in the block of the previous REQ_PAGES_ID. */
export function encodeReqPages(start: number, length: number): Buffer {
  checkRequest(start, length);
  return message(ReturnPathType.REQ_PAGES, 12).u64(start).u32(length).done();
}

/** REQ_PAGES_ID: `u64 start, u32 length, u8 n, idstr`. */
export function encodeReqPagesId(idstr: string, start: number, length: number): Buffer {
  checkRequest(start, length);
  const id = nameBytes(idstr, 'REQ_PAGES_ID idstr');
  return message(ReturnPathType.REQ_PAGES_ID, 13 + id.length).u64(start).u32(length).u8(id.length).bytes(id).done();
}

/** RECV_BITMAP: the message (`u8 n, idstr`), then `u64 size`, the LE bitmap, the end mark. */
export function encodeRecvBitmap(idstr: string, bitmap: Bitmap): Buffer {
  const id = nameBytes(idstr, 'RECV_BITMAP idstr');
  const bytes = bitmap.toLittleEndianBytes();
  // Sized by hand: the bitmap lies outside the u16 len, which covers only `u8 n, idstr`.
  return new Writer(4 + 1 + id.length + 8 + bytes.length + 8)
    .u16(ReturnPathType.RECV_BITMAP)
    .u16(1 + id.length)
    .u8(id.length)
    .bytes(id)
    .u64(bytes.length)
    .bytes(bytes)
    .u64n(RECV_BITMAP_ENDING)
    .done();
}

export function encodeHelloAck(capabilities?: number): Buffer {
  if (capabilities === undefined) return message(ReturnPathType.HELLO_ACK, 0).done();
  return u32Message(ReturnPathType.HELLO_ACK, capabilities, 'HELLO_ACK capabilities');
}

/** REFUSE: `u8 n, reason` (UTF-8, cut at a character boundary to fit 255 bytes). */
export function encodeRefuse(reason: string): Buffer {
  let bytes = Buffer.from(reason, 'utf8');
  if (bytes.length > MAX_IDSTR_BYTES) {
    let cut = MAX_IDSTR_BYTES;
    while (cut > 0 && (bytes[cut] & 0xc0) === 0x80) cut--; // do not split a multi-byte character
    bytes = bytes.subarray(0, cut);
  }
  return message(ReturnPathType.REFUSE, 1 + bytes.length).u8(bytes.length).bytes(bytes).done();
}

export function encodeChallenge(nonce: Uint8Array): Buffer {
  checkBytes(nonce, NONCE_BYTES, 'CHALLENGE nonce');
  return message(ReturnPathType.CHALLENGE, NONCE_BYTES).bytes(nonce).done();
}

/** Chooses REQ_PAGES_ID when the block changes and REQ_PAGES otherwise, like QEMU's destination. */
export class ReturnPathEncoder {
  #lastBlock: string | undefined = undefined;

  requestPages(idstr: string, start: number, length: number): Buffer {
    if (idstr === this.#lastBlock) return encodeReqPages(start, length);
    const out = encodeReqPagesId(idstr, start, length);
    this.#lastBlock = idstr;
    return out;
  }

  /** Forget the last block (a new connection): the next request names its block. */
  resetBlock(): void {
    this.#lastBlock = undefined;
  }
}
