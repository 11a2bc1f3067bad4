// The snapshot file format (docs/snapshot-format.md): a pure codec, no I/O. Mapped-ram style:
// a header with a block table, one bitmap of pages present per block, each block's pages at
// fixed offsets in a region aligned to 1 MiB (zero pages are holes), the device state, and a
// trailer with checksums. A file is complete only with a valid trailer; everything read is
// checked, and a problem is a SnapshotFormatError naming the field, its offset and the file.
import { crc32 } from 'node:zlib';

export const SNAPSHOT_MAGIC = 'PCSNAP01';
export const TRAILER_MAGIC = 'PCSNEND1';
/** Written where the trailer goes when a snapshot fails, with the reason. */
export const FAILED_MAGIC = 'PCSNFAIL';
export const SNAPSHOT_VERSION = 1;
export const REGION_ALIGN = 1 << 20;
export const SNAPSHOT_TARGET_PAGE = 4096;
const MAX_BLOCKS = 1024;
const MAX_IDSTR = 255;
const FIXED_HEADER = 56;
const BLOCK_ENTRY_FIXED = 2 + 5 * 8;
const TRAILER_FIXED = 48;
const TRAILER_PER_BLOCK = 16;

export const SnapshotFlag = {
  /** The trailer holds a checksum of each block's page data. */
  PAGE_CHECKSUMS: 1,
} as const;
const KNOWN_FLAGS = SnapshotFlag.PAGE_CHECKSUMS;

export class SnapshotFormatError extends Error {
  readonly code = 'ERR_SNAPSHOT_FORMAT';
  constructor(
    readonly file: string,
    readonly field: string,
    readonly offset: number,
    problem: string,
  ) {
    super(`${file}: ${field} at offset ${offset}: ${problem}`);
    this.name = 'SnapshotFormatError';
  }
}

export interface SnapshotBlockSpec {
  idstr: string;
  /** Bytes of the block that the snapshot holds. */
  usedLength: number;
  /** The unit of the bitmap and of a saved page: 4 KiB, or 2 MiB for hugetlb. */
  pageSize: number;
}

export interface SnapshotBlockLayout extends SnapshotBlockSpec {
  pages: number;
  bitmapOffset: number;
  bitmapLength: number;
  /** Page i lies at pagesOffset + i * pageSize. */
  pagesOffset: number;
}

export interface SnapshotLayout {
  version: number;
  flags: number;
  targetPageSize: number;
  blocks: SnapshotBlockLayout[];
  headerLength: number;
  deviceStateOffset: number;
  deviceStateLength: number;
  trailerOffset: number;
  /** The length of a complete file. */
  fileLength: number;
}

export interface BlockSummary {
  /** Pages written (bit set in the bitmap). */
  present: number;
  /** Sum mod 2^32 of crc32(page, index) over present pages; 0 without PAGE_CHECKSUMS. */
  pageChecksum: number;
}

export interface SnapshotTrailer {
  fileLength: number;
  headerCrc: number;
  bitmapsCrc: number;
  deviceStateCrc: number;
  blocks: BlockSummary[];
}

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

export function trailerLength(blockCount: number): number {
  return TRAILER_FIXED + blockCount * TRAILER_PER_BLOCK + 4;
}

/** Places every part of the file: header and block table, bitmaps, page regions, device state, trailer. */
export function planLayout(blocks: SnapshotBlockSpec[], deviceStateLength: number, flags = 0): SnapshotLayout {
  if (blocks.length === 0 || blocks.length > MAX_BLOCKS) throw new RangeError(`snapshot: ${blocks.length} blocks (1..${MAX_BLOCKS})`);
  let headerLength = FIXED_HEADER;
  for (const b of blocks) {
    const id = Buffer.byteLength(b.idstr);
    if (id === 0 || id > MAX_IDSTR) throw new RangeError(`snapshot: block idstr "${b.idstr}" must be 1..${MAX_IDSTR} bytes`);
    if (b.pageSize !== SNAPSHOT_TARGET_PAGE && b.pageSize !== 2 << 20) throw new RangeError(`snapshot: block ${b.idstr}: page size ${b.pageSize}`);
    if (b.usedLength <= 0 || b.usedLength % b.pageSize) throw new RangeError(`snapshot: block ${b.idstr}: used length ${b.usedLength} is not a multiple of ${b.pageSize}`);
    headerLength += BLOCK_ENTRY_FIXED + id;
  }
  headerLength += 4; // header crc
  let at = alignUp(headerLength, 8);
  const laid: SnapshotBlockLayout[] = blocks.map((b) => {
    const pages = b.usedLength / b.pageSize;
    const bitmapLength = alignUp(Math.ceil(pages / 8), 8);
    const block = { ...b, pages, bitmapOffset: at, bitmapLength, pagesOffset: 0 };
    at += bitmapLength;
    return block;
  });
  for (const b of laid) {
    at = alignUp(at, REGION_ALIGN);
    b.pagesOffset = at;
    at += b.usedLength;
  }
  const deviceStateOffset = at;
  const trailerOffset = alignUp(deviceStateOffset + deviceStateLength, 8);
  return {
    version: SNAPSHOT_VERSION,
    flags,
    targetPageSize: SNAPSHOT_TARGET_PAGE,
    blocks: laid,
    headerLength,
    deviceStateOffset,
    deviceStateLength,
    trailerOffset,
    fileLength: trailerOffset + trailerLength(blocks.length),
  };
}

export function encodeHeader(layout: SnapshotLayout): Buffer {
  const buf = Buffer.alloc(layout.headerLength);
  buf.write(SNAPSHOT_MAGIC, 0, 'latin1');
  buf.writeUInt32LE(layout.version, 8);
  buf.writeUInt32LE(layout.flags, 12);
  buf.writeUInt32LE(layout.targetPageSize, 16);
  buf.writeUInt32LE(layout.blocks.length, 20);
  buf.writeBigUInt64LE(BigInt(layout.deviceStateOffset), 24);
  buf.writeBigUInt64LE(BigInt(layout.deviceStateLength), 32);
  buf.writeBigUInt64LE(BigInt(layout.trailerOffset), 40);
  buf.writeBigUInt64LE(BigInt(layout.headerLength), 48);
  let at = FIXED_HEADER;
  for (const b of layout.blocks) {
    const id = Buffer.from(b.idstr);
    buf.writeUInt16LE(id.length, at);
    id.copy(buf, at + 2);
    at += 2 + id.length;
    for (const v of [b.usedLength, b.pageSize, b.bitmapOffset, b.bitmapLength, b.pagesOffset]) {
      buf.writeBigUInt64LE(BigInt(v), at);
      at += 8;
    }
  }
  buf.writeUInt32LE(crc32(buf.subarray(0, at)), at);
  return buf;
}

/** Reads fields with bounds checks; every failure names the field, its offset and the file. */
class FieldReader {
  constructor(
    readonly buf: Buffer,
    readonly file: string,
    /** The file offset of buf[0]. */
    readonly base = 0,
  ) {}
  fail(field: string, at: number, problem: string): never {
    throw new SnapshotFormatError(this.file, field, this.base + at, problem);
  }
  need(field: string, at: number, n: number): void {
    if (at + n > this.buf.length) this.fail(field, at, `truncated: needs ${n} bytes, the file ends ${Math.max(0, this.buf.length - at)} bytes later`);
  }
  u32(field: string, at: number): number {
    this.need(field, at, 4);
    return this.buf.readUInt32LE(at);
  }
  u64(field: string, at: number): number {
    this.need(field, at, 8);
    const v = this.buf.readBigUInt64LE(at);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(field, at, `value ${v} is out of range`);
    return Number(v);
  }
}

/** The fixed part of the header: enough to know how long the whole header is. */
export const HEADER_PROBE = FIXED_HEADER;

/**
 * Decodes and checks a header (with its block table) read from the start of a file of
 * `fileSize` bytes. `buf` must hold at least the header; HEADER_PROBE bytes say how long it is.
 */
export function decodeHeader(buf: Buffer, file: string, fileSize: number): SnapshotLayout {
  const r = new FieldReader(buf, file);
  r.need('magic', 0, 8);
  const magic = buf.toString('latin1', 0, 8);
  if (magic !== SNAPSHOT_MAGIC) r.fail('magic', 0, `${JSON.stringify(magic)} is not ${JSON.stringify(SNAPSHOT_MAGIC)}: not a postcopy snapshot`);
  const version = r.u32('version', 8);
  if (version !== SNAPSHOT_VERSION) r.fail('version', 8, `${version} is not supported (this reader knows ${SNAPSHOT_VERSION})`);
  const flags = r.u32('flags', 12);
  if (flags & ~KNOWN_FLAGS) r.fail('flags', 12, `unknown flags 0x${(flags & ~KNOWN_FLAGS).toString(16)}`);
  const targetPageSize = r.u32('target page size', 16);
  if (targetPageSize !== SNAPSHOT_TARGET_PAGE) r.fail('target page size', 16, `${targetPageSize} is not ${SNAPSHOT_TARGET_PAGE}`);
  const count = r.u32('block count', 20);
  if (count === 0 || count > MAX_BLOCKS) r.fail('block count', 20, `${count} is not in 1..${MAX_BLOCKS}`);
  const deviceStateOffset = r.u64('device state offset', 24);
  const deviceStateLength = r.u64('device state length', 32);
  const trailerOffset = r.u64('trailer offset', 40);
  const headerLength = r.u64('header length', 48);
  if (headerLength > fileSize) r.fail('header length', 48, `${headerLength} is past the end of the file (${fileSize} bytes)`);
  const blocks: SnapshotBlockSpec[] = [];
  let at = FIXED_HEADER;
  for (let i = 0; i < count; i++) {
    r.need(`block ${i} idstr length`, at, 2);
    const idLength = buf.readUInt16LE(at);
    if (idLength === 0 || idLength > MAX_IDSTR) r.fail(`block ${i} idstr length`, at, `${idLength} is not in 1..${MAX_IDSTR}`);
    r.need(`block ${i} idstr`, at + 2, idLength);
    const idstr = buf.toString('utf8', at + 2, at + 2 + idLength);
    at += 2 + idLength;
    const usedLength = r.u64(`block ${i} used length`, at);
    const pageSize = r.u64(`block ${i} page size`, at + 8);
    blocks.push({ idstr, usedLength, pageSize });
    at += 8 * 5;
  }
  const crcAt = at;
  const storedCrc = r.u32('header checksum', crcAt);
  if (crcAt + 4 !== headerLength) r.fail('header length', 48, `${headerLength}, but the block table ends at ${crcAt + 4}`);
  const actualCrc = crc32(buf.subarray(0, crcAt));
  if (storedCrc !== actualCrc) r.fail('header checksum', crcAt, `0x${storedCrc.toString(16)} does not match the header (0x${actualCrc.toString(16)})`);
  // The header is intact; now check that it describes the layout this writer would have made.
  const expected = planOrFail(blocks, deviceStateLength, flags, r);
  at = FIXED_HEADER;
  expected.blocks.forEach((b, i) => {
    at += 2 + Buffer.byteLength(b.idstr) + 16;
    const check = (field: string, v: number, want: number, off: number): void => {
      if (v !== want) r.fail(`block ${i} (${b.idstr}) ${field}`, off, `${v}, expected ${want}`);
    };
    check('bitmap offset', r.u64('', at), b.bitmapOffset, at);
    check('bitmap length', r.u64('', at + 8), b.bitmapLength, at + 8);
    check('pages offset', r.u64('', at + 16), b.pagesOffset, at + 16);
    at += 24;
  });
  if (deviceStateOffset !== expected.deviceStateOffset) r.fail('device state offset', 24, `${deviceStateOffset}, expected ${expected.deviceStateOffset}`);
  if (trailerOffset !== expected.trailerOffset) r.fail('trailer offset', 40, `${trailerOffset}, expected ${expected.trailerOffset}`);
  return expected;
}

function planOrFail(blocks: SnapshotBlockSpec[], deviceStateLength: number, flags: number, r: FieldReader): SnapshotLayout {
  try {
    return planLayout(blocks, deviceStateLength, flags);
  } catch (e) {
    return r.fail('block table', FIXED_HEADER, (e as Error).message);
  }
}

/** How long the header is, from its first HEADER_PROBE bytes (checked again by decodeHeader). */
export function headerLengthOf(probe: Buffer, file: string, fileSize: number): number {
  const r = new FieldReader(probe, file);
  r.need('header', 0, FIXED_HEADER);
  const n = r.u64('header length', 48);
  if (n < FIXED_HEADER || n > Math.min(fileSize, FIXED_HEADER + MAX_BLOCKS * (BLOCK_ENTRY_FIXED + MAX_IDSTR) + 4)) {
    if (probe.toString('latin1', 0, 8) !== SNAPSHOT_MAGIC) decodeHeader(probe, file, fileSize); // names the magic
    r.fail('header length', 48, `${n} is not a possible header length for a file of ${fileSize} bytes`);
  }
  return n;
}

export function encodeTrailer(layout: SnapshotLayout, t: SnapshotTrailer): Buffer {
  const buf = Buffer.alloc(trailerLength(layout.blocks.length));
  buf.write(TRAILER_MAGIC, 0, 'latin1');
  buf.writeUInt32LE(layout.version, 8);
  buf.writeUInt32LE(layout.blocks.length, 12);
  buf.writeBigUInt64LE(BigInt(t.fileLength), 16);
  buf.writeUInt32LE(t.headerCrc, 24);
  buf.writeUInt32LE(t.bitmapsCrc, 28);
  buf.writeUInt32LE(t.deviceStateCrc, 32);
  // 36..48 reserved (zero)
  let at = TRAILER_FIXED;
  for (const b of t.blocks) {
    buf.writeBigUInt64LE(BigInt(b.present), at);
    buf.writeUInt32LE(b.pageChecksum >>> 0, at + 8);
    at += TRAILER_PER_BLOCK;
  }
  buf.writeUInt32LE(crc32(buf.subarray(0, at)), at);
  return buf;
}

/** Why a file has no trailer: a failed snapshot's reason, or nothing (it was interrupted). */
export function encodeFailure(reason: string): Buffer {
  const text = Buffer.from(reason.slice(0, 4000));
  const buf = Buffer.alloc(12 + text.length);
  buf.write(FAILED_MAGIC, 0, 'latin1');
  buf.writeUInt32LE(text.length, 8);
  text.copy(buf, 12);
  return buf;
}

export type TrailerState =
  | { kind: 'complete'; trailer: SnapshotTrailer }
  | { kind: 'failed'; reason: string }
  | { kind: 'missing'; reason: string };

/**
 * Decodes what lies at the trailer offset of a file of `fileSize` bytes. `buf` holds the bytes
 * from layout.trailerOffset to the end of the file (at most trailerLength + a failure note).
 * A missing trailer (interrupted) or a failure note is not an error: the caller refuses the
 * file with the reason. A trailer that is there but wrong is a SnapshotFormatError.
 */
export function decodeTrailer(buf: Buffer, layout: SnapshotLayout, file: string, fileSize: number): TrailerState {
  const base = layout.trailerOffset;
  const r = new FieldReader(buf, file, base);
  if (fileSize < base || buf.length === 0 || buf.subarray(0, Math.min(8, buf.length)).every((b) => b === 0)) {
    return { kind: 'missing', reason: `no trailer at offset ${base} (file is ${fileSize} bytes): the snapshot did not finish` };
  }
  const magic = buf.toString('latin1', 0, Math.min(8, buf.length));
  if (magic === FAILED_MAGIC) {
    const n = Math.min(buf.length >= 12 ? buf.readUInt32LE(8) : 0, Math.max(0, buf.length - 12));
    return { kind: 'failed', reason: buf.toString('utf8', 12, 12 + n) || 'no reason recorded' };
  }
  const length = trailerLength(layout.blocks.length);
  if (buf.length < 8) r.fail('trailer', 0, `truncated: ${buf.length} of ${length} bytes`);
  if (magic !== TRAILER_MAGIC) r.fail('trailer magic', 0, `${JSON.stringify(magic)} is not ${JSON.stringify(TRAILER_MAGIC)}`);
  r.need('trailer', 0, length);
  const crcAt = length - 4;
  const stored = r.u32('trailer checksum', crcAt);
  const actual = crc32(buf.subarray(0, crcAt));
  if (stored !== actual) r.fail('trailer checksum', crcAt, `0x${stored.toString(16)} does not match the trailer (0x${actual.toString(16)})`);
  const version = r.u32('trailer version', 8);
  if (version !== layout.version) r.fail('trailer version', 8, `${version}, the header says ${layout.version}`);
  const count = r.u32('trailer block count', 12);
  if (count !== layout.blocks.length) r.fail('trailer block count', 12, `${count}, the header says ${layout.blocks.length}`);
  const fileLength = r.u64('trailer file length', 16);
  if (fileLength !== layout.fileLength) r.fail('trailer file length', 16, `${fileLength}, the header implies ${layout.fileLength}`);
  if (fileSize !== layout.fileLength) r.fail('file length', 0, `the file is ${fileSize} bytes, the trailer says ${layout.fileLength}`);
  const blocks: BlockSummary[] = [];
  let at = TRAILER_FIXED;
  for (let i = 0; i < count; i++) {
    const present = r.u64(`trailer block ${i} pages present`, at);
    if (present > layout.blocks[i].pages) r.fail(`trailer block ${i} pages present`, at, `${present} > ${layout.blocks[i].pages} pages in the block`);
    blocks.push({ present, pageChecksum: r.u32(`trailer block ${i} page checksum`, at + 8) });
    at += TRAILER_PER_BLOCK;
  }
  return {
    kind: 'complete',
    trailer: {
      fileLength,
      headerCrc: r.u32('trailer header checksum', 24),
      bitmapsCrc: r.u32('trailer bitmaps checksum', 28),
      deviceStateCrc: r.u32('trailer device state checksum', 32),
      blocks,
    },
  };
}

/** The order-independent checksum of one saved page, added mod 2^32 into its block's sum. */
export function pageChecksum(page: Uint8Array, index: number): number {
  return crc32(page, index >>> 0);
}

export function addChecksum(sum: number, page: number): number {
  return (sum + page) >>> 0;
}

export { crc32 };
