// Encoders of the source -> destination stream. Record-level functions produce exactly the bytes
// of one item; StreamEncoder adds the per-channel state (is a RAM frame open, which block was
// named last) and sets CONTINUE the way QEMU's save_page_header does.
import { isPageSizeSummary, isValidPageSize } from '../memory/ramblock.js';
import {
  AUTH_BYTES,
  Command,
  DEFAULT_MAX_PACKAGED_BYTES,
  DISCARD_VERSION,
  FrameKind,
  MAGIC,
  RAM_FLAGS_MASK,
  RamFlag,
  Role,
  VERSION,
  commandName,
  roleName,
} from './constants.js';
import type { ByteRange, HelloFields, MemSizeBlock } from './stream-events.js';
import { Writer, checkAligned, checkBytes, checkU64, checkUint, nameBytes, shortStringBytes } from './writer.js';
import { hex, TARGET_PAGE_SIZE } from '../base/index.js';

/** A block named by idstr, or an object with one; `postcopyLength`/`pageSize` are checked when present. */
export type BlockRef = string | { readonly idstr: string; readonly postcopyLength?: number; readonly pageSize?: number };


function refName(block: BlockRef): string {
  return typeof block === 'string' ? block : block.idstr;
}

function checkPageOffset(block: BlockRef, offset: number, field: string): void {
  checkAligned(offset, TARGET_PAGE_SIZE, field);
  if (typeof block !== 'string' && block.postcopyLength !== undefined && offset >= block.postcopyLength) {
    throw new RangeError(`${field} ${hex(offset)} is at or beyond block '${block.idstr}' postcopy length ${hex(block.postcopyLength)}`);
  }
}

// ---- stream header and frames ----

export function encodeHeader(version: number = VERSION): Buffer {
  checkUint(version, 32, 'version');
  return new Writer(8).u32(MAGIC).u32(version).done();
}

export function encodeEof(): Buffer {
  return Buffer.of(FrameKind.EOF);
}

/** The byte that opens a RAM frame; records follow until an EOS record. */
export function encodeRamFrameStart(): Buffer {
  return Buffer.of(FrameKind.RAM);
}

/** A COMMAND frame: `u8 0x08, u16 cmd, u16 len, payload`. */
export function encodeCommand(cmd: number, payload: Uint8Array = new Uint8Array(0)): Buffer {
  checkUint(cmd, 16, 'command');
  if (payload.length > 0xffff) throw new RangeError(`COMMAND ${commandName(cmd) ?? cmd}: payload of ${payload.length} bytes exceeds 65535`);
  return new Writer(5 + payload.length).u8(FrameKind.COMMAND).u16(cmd).u16(payload.length).bytes(payload).done();
}

export function encodeHello(hello: HelloFields): Buffer {
  const id = shortStringBytes(hello.sessionId, 'HELLO session id');
  if (roleName(hello.role) === undefined) throw new RangeError(`HELLO role ${hello.role} is unknown (0 main, 1 preempt, 2 bulk)`);
  checkUint(hello.index, 8, 'HELLO channel index');
  if (hello.role !== Role.BULK && hello.index !== 0) throw new RangeError(`HELLO channel index ${hello.index} must be 0 for role ${roleName(hello.role)}`);
  checkUint(hello.capabilities, 32, 'HELLO capabilities');
  checkBytes(hello.auth, AUTH_BYTES, 'HELLO auth');
  const payload = new Writer(1 + id.length + 1 + 1 + 4 + AUTH_BYTES)
    .u8(id.length)
    .bytes(id)
    .u8(hello.role)
    .u8(hello.index)
    .u32(hello.capabilities)
    .bytes(hello.auth)
    .done();
  return encodeCommand(Command.HELLO, payload);
}

export function encodeOpenReturnPath(): Buffer {
  return encodeCommand(Command.OPEN_RETURN_PATH);
}

export function encodePing(value: number): Buffer {
  checkUint(value, 32, 'PING value');
  return encodeCommand(Command.PING, new Writer(4).u32(value).done());
}

/** `pageSizeSummary`: OR of every block's page size (RamList.pageSizeSummary). */
export function encodeAdvise(pageSizeSummary: number, targetPageSize: number = TARGET_PAGE_SIZE): Buffer {
  checkAligned(pageSizeSummary, TARGET_PAGE_SIZE, 'POSTCOPY_ADVISE page size summary');
  if (!isPageSizeSummary(pageSizeSummary)) {
    throw new RangeError(`POSTCOPY_ADVISE page size summary ${hex(pageSizeSummary)} is not an OR of page sizes from 4 KiB to 1 GiB`);
  }
  checkU64(targetPageSize, 'POSTCOPY_ADVISE target page size');
  return encodeCommand(Command.POSTCOPY_ADVISE, new Writer(16).u64(pageSizeSummary).u64(targetPageSize).done());
}

export function encodeListen(): Buffer {
  return encodeCommand(Command.POSTCOPY_LISTEN);
}

export function encodeRun(): Buffer {
  return encodeCommand(Command.POSTCOPY_RUN);
}

export function encodeResume(): Buffer {
  return encodeCommand(Command.POSTCOPY_RESUME);
}

export function encodeComplete(): Buffer {
  return encodeCommand(Command.COMPLETE);
}

/** Most (start, length) pairs one POSTCOPY_RAM_DISCARD command can carry for an idstr of n bytes. */
export function maxDiscardPairs(idstrBytes: number): number {
  return Math.floor((0xffff - 3 - idstrBytes) / 16);
}

/**
 * POSTCOPY_RAM_DISCARD, QEMU's layout: `u8 version 0, u8 len, idstr, u8 0 (NUL), then pairs of
 * u64 start, u64 length`, both in BYTES within the block (QEMU converts its page indices with
 * the target page size before sending). Many ranges become several back-to-back commands.
 * Ranges must be non-empty and target-page aligned; when `block` carries `pageSize`, aligned to it.
 */
export function encodeDiscard(block: BlockRef, ranges: Iterable<ByteRange>): Buffer {
  const idstr = refName(block);
  const id = nameBytes(idstr, 'POSTCOPY_RAM_DISCARD idstr');
  const alignment = typeof block !== 'string' && block.pageSize !== undefined ? block.pageSize : TARGET_PAGE_SIZE;
  const limit = typeof block !== 'string' && block.postcopyLength !== undefined ? block.postcopyLength : Infinity;
  // thousands of ranges may be encoded inside the pause, in code that has run a few times at
  // most: plain loops, and a message built only for a range that is refused
  const list = Array.isArray(ranges) ? (ranges as readonly ByteRange[]) : [...ranges];
  for (let i = 0; i < list.length; i++) {
    const start = list[i][0];
    const length = list[i][1];
    const fits = Number.isSafeInteger(start) && Number.isSafeInteger(length) && start >= 0 && length > 0 &&
      start % alignment === 0 && length % alignment === 0 && start + length <= limit;
    if (!fits) refuseDiscardRange(idstr, alignment, limit, start, length);
  }
  if (list.length === 0) throw new RangeError(`POSTCOPY_RAM_DISCARD '${idstr}': no ranges (QEMU requires at least one)`);
  const perCommand = maxDiscardPairs(id.length);
  const frames: Buffer[] = [];
  for (let first = 0; first < list.length; first += perCommand) {
    const end = Math.min(first + perCommand, list.length);
    const payload = new Writer(3 + id.length + 16 * (end - first)).u8(DISCARD_VERSION).u8(id.length).bytes(id).u8(0).u64Pairs(list, first, end);
    frames.push(encodeCommand(Command.POSTCOPY_RAM_DISCARD, payload.done()));
  }
  return frames.length === 1 ? frames[0] : Buffer.concat(frames);
}

/** Throws why a discard range cannot be sent. */
function refuseDiscardRange(idstr: string, alignment: number, limit: number, start: number, length: number): never {
  checkAligned(start, alignment, `POSTCOPY_RAM_DISCARD '${idstr}' range start`);
  checkAligned(length, alignment, `POSTCOPY_RAM_DISCARD '${idstr}' range length`);
  if (length === 0) throw new RangeError(`POSTCOPY_RAM_DISCARD '${idstr}' range at ${hex(start)} is empty`);
  throw new RangeError(`POSTCOPY_RAM_DISCARD '${idstr}' range ${hex(start)}+${hex(length)} extends beyond postcopy length ${hex(limit)}`);
}

/** RECV_BITMAP command: `u8 len, idstr`; the destination answers on the return path. */
export function encodeRecvBitmapCommand(block: BlockRef): Buffer {
  const id = nameBytes(refName(block), 'RECV_BITMAP idstr');
  return encodeCommand(Command.RECV_BITMAP, new Writer(1 + id.length).u8(id.length).bytes(id).done());
}

/** The PACKAGED command (`u16 len` = 4, payload `u32 length`); the blob's bytes must follow it. */
export function encodePackagedHeader(length: number, maxBytes: number = DEFAULT_MAX_PACKAGED_BYTES): Buffer {
  checkUint(length, 32, 'PACKAGED length');
  if (length > maxBytes) throw new RangeError(`PACKAGED length ${hex(length)} exceeds the limit ${hex(maxBytes)}`);
  return encodeCommand(Command.PACKAGED, new Writer(4).u32(length).done());
}

/** PACKAGED command followed by the blob, in one buffer (use encodePackagedHeader to avoid the copy). */
export function encodePackaged(blob: Uint8Array, maxBytes: number = DEFAULT_MAX_PACKAGED_BYTES): Buffer {
  return Buffer.concat([encodePackagedHeader(blob.length, maxBytes), blob]);
}

// ---- RAM records (inside a RAM frame) ----

/** `u64 offset|flags`, then `u8 len, idstr` unless CONTINUE. */
export function encodeRamRecordHeader(block: BlockRef, offset: number, flags: number, cont: boolean): Buffer {
  const idstr = refName(block);
  checkPageOffset(block, offset, `RAM record '${idstr}' offset`);
  if (!Number.isInteger(flags) || flags < 0 || flags > RAM_FLAGS_MASK) throw new RangeError(`RAM record flags ${flags} do not fit in 12 bits`);
  const id = cont ? undefined : nameBytes(idstr, 'RAM record idstr');
  const w = new Writer(8 + (id === undefined ? 0 : 1 + id.length));
  // offset is 4 KiB aligned, so adding the flags to its low word sets exactly those bits
  w.u32(Math.floor(offset / 0x100000000)).u32((offset % 0x100000000) + (cont ? flags | RamFlag.CONTINUE : flags));
  if (id !== undefined) w.u8(id.length).bytes(id);
  return w.done();
}

/** A PAGE record: header then the 4096 bytes (copied into one buffer). */
export function encodeRamPage(block: BlockRef, offset: number, data: Uint8Array, cont: boolean): Buffer {
  checkBytes(data, TARGET_PAGE_SIZE, 'RAM page data');
  return Buffer.concat([encodeRamRecordHeader(block, offset, RamFlag.PAGE, cont), data]);
}

/** A ZERO record: header then one 0 byte. */
export function encodeRamZero(block: BlockRef, offset: number, cont: boolean): Buffer {
  return Buffer.concat([encodeRamRecordHeader(block, offset, RamFlag.ZERO, cont), Buffer.of(0)]);
}

/**
 * MEM_SIZE record: `u64 total|0x04`, then per block `u8 len, idstr, u64 usedLength, u64 pageSize`
 * (QEMU omits the page size when it equals the host's; v1 always sends it).
 */
export function encodeMemSize(blocks: Iterable<MemSizeBlock>): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  const seen = new Set<string>();
  for (const { idstr, usedLength, pageSize } of blocks) {
    const id = nameBytes(idstr, 'MEM_SIZE idstr');
    if (seen.has(idstr)) throw new RangeError(`MEM_SIZE: block '${idstr}' is listed twice`);
    seen.add(idstr);
    if (!isValidPageSize(pageSize)) {
      throw new RangeError(`MEM_SIZE: block '${idstr}' page size ${pageSize} is not a power of two from 4 KiB to 1 GiB`);
    }
    checkAligned(usedLength, pageSize, `MEM_SIZE: block '${idstr}' used length`);
    if (usedLength === 0) throw new RangeError(`MEM_SIZE: block '${idstr}' used length is 0`);
    total += usedLength;
    parts.push(new Writer(1 + id.length + 16).u8(id.length).bytes(id).u64(usedLength).u64(pageSize).done());
  }
  checkU64(total, 'MEM_SIZE total');
  const head = new Writer(8).u32(Math.floor(total / 0x100000000)).u32((total % 0x100000000) + RamFlag.MEM_SIZE).done();
  return Buffer.concat([head, ...parts]);
}

export function encodeEos(): Buffer {
  return new Writer(8).u32(0).u32(RamFlag.EOS).done();
}

export function encodeMultifdFlush(): Buffer {
  return new Writer(8).u32(0).u32(RamFlag.MULTIFD_FLUSH).done();
}

/**
 * One channel's encoder. Opens a RAM frame on the first record, names the block only when it
 * changes (CONTINUE otherwise), and refuses commands or EOF while a RAM frame is open.
 * Use one per connection; call `resetBlock()` if a connection is replaced.
 */
export class StreamEncoder {
  #ramOpen = false;
  #lastBlock: string | undefined = undefined;
  readonly maxPackagedBytes: number;

  constructor(options: { maxPackagedBytes?: number } = {}) {
    this.maxPackagedBytes = options.maxPackagedBytes ?? DEFAULT_MAX_PACKAGED_BYTES;
  }

  get ramOpen(): boolean {
    return this.#ramOpen;
  }

  /** The block the next record may CONTINUE. */
  get lastBlock(): string | undefined {
    return this.#lastBlock;
  }

  /** Forget the current block: the next record names its block again. */
  resetBlock(): void {
    this.#lastBlock = undefined;
  }

  header(version?: number): Buffer {
    return encodeHeader(version);
  }

  eof(): Buffer {
    this.#noRam('EOF');
    return encodeEof();
  }

  hello(hello: HelloFields): Buffer {
    this.#noRam('COMMAND HELLO');
    return encodeHello(hello);
  }

  openReturnPath(): Buffer {
    this.#noRam('COMMAND OPEN_RETURN_PATH');
    return encodeOpenReturnPath();
  }

  ping(value: number): Buffer {
    this.#noRam('COMMAND PING');
    return encodePing(value);
  }

  advise(pageSizeSummary: number, targetPageSize?: number): Buffer {
    this.#noRam('COMMAND POSTCOPY_ADVISE');
    return encodeAdvise(pageSizeSummary, targetPageSize);
  }

  discard(block: BlockRef, ranges: Iterable<ByteRange>): Buffer {
    this.#noRam('COMMAND POSTCOPY_RAM_DISCARD');
    return encodeDiscard(block, ranges);
  }

  listen(): Buffer {
    this.#noRam('COMMAND POSTCOPY_LISTEN');
    return encodeListen();
  }

  run(): Buffer {
    this.#noRam('COMMAND POSTCOPY_RUN');
    return encodeRun();
  }

  resume(): Buffer {
    this.#noRam('COMMAND POSTCOPY_RESUME');
    return encodeResume();
  }

  complete(): Buffer {
    this.#noRam('COMMAND COMPLETE');
    return encodeComplete();
  }

  recvBitmap(block: BlockRef): Buffer {
    this.#noRam('COMMAND RECV_BITMAP');
    return encodeRecvBitmapCommand(block);
  }

  /** PACKAGED command and blob in one buffer. */
  packaged(blob: Uint8Array): Buffer {
    this.#noRam('COMMAND PACKAGED');
    return encodePackaged(blob, this.maxPackagedBytes);
  }

  /** PACKAGED command; write the blob (`length` bytes) right after it. */
  packagedHeader(length: number): Buffer {
    this.#noRam('COMMAND PACKAGED');
    return encodePackagedHeader(length, this.maxPackagedBytes);
  }

  /** A PAGE record (with the RAM frame byte first if no frame is open), in one buffer. */
  ramPage(block: BlockRef, offset: number, data: Uint8Array): Buffer {
    const [head, body] = this.ramPageParts(block, offset, data);
    return Buffer.concat([head, body]);
  }

  /** A PAGE record as [header, data] so a writev can send the page without copying it. */
  ramPageParts(block: BlockRef, offset: number, data: Uint8Array): [Buffer, Uint8Array] {
    checkBytes(data, TARGET_PAGE_SIZE, 'RAM page data');
    return [this.#record(block, offset, RamFlag.PAGE), data];
  }

  ramZero(block: BlockRef, offset: number): Buffer {
    return Buffer.concat([this.#record(block, offset, RamFlag.ZERO), Buffer.of(0)]);
  }

  memSize(blocks: Iterable<MemSizeBlock>): Buffer {
    return this.#inRam(encodeMemSize(blocks));
  }

  multifdFlush(): Buffer {
    return this.#inRam(encodeMultifdFlush());
  }

  /** Ends the RAM frame with EOS (an empty RAM frame if none was open). */
  endRam(): Buffer {
    const out = this.#inRam(encodeEos());
    this.#ramOpen = false;
    return out;
  }

  #record(block: BlockRef, offset: number, flags: number): Buffer {
    const idstr = refName(block);
    const header = encodeRamRecordHeader(block, offset, flags, idstr === this.#lastBlock);
    this.#lastBlock = idstr;
    return this.#inRam(header);
  }

  #inRam(bytes: Buffer): Buffer {
    if (this.#ramOpen) return bytes;
    this.#ramOpen = true;
    return Buffer.concat([encodeRamFrameStart(), bytes]);
  }

  #noRam(what: string): void {
    if (this.#ramOpen) throw new Error(`StreamEncoder: cannot encode ${what} while a RAM frame is open (call endRam() first)`);
  }
}
