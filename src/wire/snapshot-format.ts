// The snapshot file format (docs/snapshot-format.md): a pure codec, no I/O. Mapped-ram style:
// a header with a block table, one bitmap of pages present per block, each block's pages at
// fixed offsets in a region aligned to 1 MiB (zero pages are holes), the device state, and a
// trailer with checksums. A file is complete only with a valid trailer; everything read is
// checked, and a problem is a SnapshotFormatError naming the field, its offset and the file.
import { crc32 } from 'node:zlib';
import { decodeUtf8 } from './reader.js';
import { hex, PostcopyError, TARGET_PAGE_SIZE } from '../base/index.js';

export const SNAPSHOT_MAGIC = 'PCSNAP01';
export const TRAILER_MAGIC = 'PCSNEND1';
/** Written where the trailer goes when a snapshot fails, with the reason. */
export const FAILED_MAGIC = 'PCSNFAIL';
/**
 * Written: 2. Read: 1 and 2, which differ only in the page checksum: version 1 sums zlib's
 * CRC-32 of each page, version 2 CRC32C (Castagnoli, computed in hardware where the CPU can).
 */
export const SNAPSHOT_VERSION = 2;
export const SNAPSHOT_VERSIONS_READ: readonly number[] = [1, 2];
export const REGION_ALIGN = 1 << 20;
export const SNAPSHOT_TARGET_PAGE = TARGET_PAGE_SIZE;
const MAX_BLOCKS = 1024;
const MAX_IDSTR = 255;
/** A block's bitmap is a Bitmap: at most 2^32 pages. */
const MAX_PAGES = 2 ** 32;
const HUGE_PAGE = 2 << 20;
/** magic, version, flags, target page size, block count, 4 u64s, its own crc, reserved. */
const FIXED_HEADER = 64;
const FIXED_HEADER_CRC = 56;
/** idstr length, 5 u64s (used length, page size, bitmap offset, bitmap length, pages offset), crc. */
const BLOCK_ENTRY_FIXED = 2 + 5 * 8 + 4;
const TRAILER_FIXED = 48;
const TRAILER_PER_BLOCK = 16;
const MAX_FAILURE_NOTE = 4000;

export const SnapshotFlag = {
  /** The trailer holds a checksum of each block's page data. */
  PAGE_CHECKSUMS: 1,
} as const;
const KNOWN_FLAGS = SnapshotFlag.PAGE_CHECKSUMS;

export class SnapshotFormatError extends PostcopyError {
  /** The message without the file: "FIELD at offset N: PROBLEM". */
  readonly detail: string;
  constructor(
    readonly file: string,
    readonly field: string,
    readonly offset: number,
    problem: string,
  ) {
    const detail = `${field} at offset ${offset}: ${problem}`;
    super('ERR_SNAPSHOT_FORMAT', `${file}: ${detail}`);
    this.name = 'SnapshotFormatError';
    this.detail = detail;
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
  /** crc32 of this block's bitmap bytes (padding included), so a damaged bitmap names its block. */
  bitmapCrc: number;
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

function blockEntryLength(idstr: string): number {
  return BLOCK_ENTRY_FIXED + Buffer.byteLength(idstr);
}

/** Why a block cannot be laid out (undefined when it can); shared by planLayout and the decoder. */
function blockProblem(b: SnapshotBlockSpec): { field: 'idstr' | 'page size' | 'used length'; problem: string } | undefined {
  const id = Buffer.byteLength(b.idstr);
  if (id === 0 || id > MAX_IDSTR) return { field: 'idstr', problem: `"${b.idstr}" must be 1..${MAX_IDSTR} bytes` };
  if (b.pageSize !== SNAPSHOT_TARGET_PAGE && b.pageSize !== HUGE_PAGE) return { field: 'page size', problem: `${b.pageSize} is not ${SNAPSHOT_TARGET_PAGE} or ${HUGE_PAGE}` };
  if (!Number.isSafeInteger(b.usedLength) || b.usedLength <= 0 || b.usedLength % b.pageSize) {
    return { field: 'used length', problem: `${b.usedLength} is not a positive multiple of the page size ${b.pageSize}` };
  }
  if (b.usedLength / b.pageSize > MAX_PAGES) return { field: 'used length', problem: `${b.usedLength} is more than ${MAX_PAGES} pages` };
  return undefined;
}

/** Places every part of the file: header and block table, bitmaps, page regions, device state, trailer. */
export function planLayout(blocks: SnapshotBlockSpec[], deviceStateLength: number, flags = 0, version = SNAPSHOT_VERSION): SnapshotLayout {
  if (!SNAPSHOT_VERSIONS_READ.includes(version)) throw new RangeError(`snapshot: version ${version} (this writer knows ${SNAPSHOT_VERSIONS_READ.join(' and ')})`);
  if (blocks.length === 0 || blocks.length > MAX_BLOCKS) throw new RangeError(`snapshot: ${blocks.length} blocks (1..${MAX_BLOCKS})`);
  if (flags & ~KNOWN_FLAGS) throw new RangeError(`snapshot: unknown flags ${hex((flags & ~KNOWN_FLAGS))}`);
  if (!Number.isSafeInteger(deviceStateLength) || deviceStateLength < 0) throw new RangeError(`snapshot: device state length ${deviceStateLength}`);
  const seen = new Set<string>();
  let headerLength = FIXED_HEADER;
  for (const b of blocks) {
    const bad = blockProblem(b);
    if (bad) throw new RangeError(`snapshot: block ${b.idstr}: ${bad.field} ${bad.problem}`);
    if (seen.has(b.idstr)) throw new RangeError(`snapshot: two blocks are named "${b.idstr}"`);
    seen.add(b.idstr);
    headerLength += blockEntryLength(b.idstr);
  }
  let at = alignUp(headerLength, 8);
  const laid: SnapshotBlockLayout[] = blocks.map((b) => {
    const pages = b.usedLength / b.pageSize;
    const bitmapLength = alignUp(Math.ceil(pages / 8), 8);
    const block = { idstr: b.idstr, usedLength: b.usedLength, pageSize: b.pageSize, pages, bitmapOffset: at, bitmapLength, pagesOffset: 0 };
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
  const fileLength = trailerOffset + trailerLength(blocks.length);
  if (!Number.isSafeInteger(fileLength)) throw new RangeError(`snapshot: a file of ${fileLength} bytes is too large`);
  return { version, flags, targetPageSize: SNAPSHOT_TARGET_PAGE, blocks: laid, headerLength, deviceStateOffset, deviceStateLength, trailerOffset, fileLength };
}

/** Names the part of the file an offset falls in ("block 1 (vga) page region"), for messages. */
export function partAt(layout: SnapshotLayout, offset: number): string {
  const parts: [string, number, number][] = [
    ['the fixed header', 0, FIXED_HEADER],
    ['the block table', FIXED_HEADER, layout.headerLength],
    ...layout.blocks.flatMap((b, i): [string, number, number][] => [
      [`block ${i} (${b.idstr}) bitmap`, b.bitmapOffset, b.bitmapOffset + b.bitmapLength],
      [`block ${i} (${b.idstr}) page region`, b.pagesOffset, b.pagesOffset + b.usedLength],
    ]),
    ['the device state', layout.deviceStateOffset, layout.deviceStateOffset + layout.deviceStateLength],
    ['the trailer', layout.trailerOffset, layout.fileLength],
  ];
  const part = parts.find(([, from, to]) => offset >= from && offset < to);
  return part ? part[0] : offset < layout.fileLength ? 'alignment padding' : 'past the end of the layout';
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
  buf.writeUInt32LE(crc32(buf.subarray(0, FIXED_HEADER_CRC)), FIXED_HEADER_CRC);
  // 60..64 reserved (zero)
  let at = FIXED_HEADER;
  for (const b of layout.blocks) {
    const start = at;
    const id = Buffer.from(b.idstr);
    buf.writeUInt16LE(id.length, at);
    id.copy(buf, at + 2);
    at += 2 + id.length;
    for (const v of [b.usedLength, b.pageSize, b.bitmapOffset, b.bitmapLength, b.pagesOffset]) {
      buf.writeBigUInt64LE(BigInt(v), at);
      at += 8;
    }
    buf.writeUInt32LE(crc32(buf.subarray(start, at)), at);
    at += 4;
  }
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
  u16(field: string, at: number): number {
    this.need(field, at, 2);
    return this.buf.readUInt16LE(at);
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
  /** A stored crc32 of buf[from, at) at `at`. */
  crc(field: string, at: number, from: number, covers: string): void {
    const stored = this.u32(field, at);
    const actual = crc32(this.buf.subarray(from, at));
    if (stored !== actual) {
      this.fail(field, at, `${hex(stored)} does not match bytes ${this.base + from}..${this.base + at - 1} (${hex(actual)}): ${covers} is damaged`);
    }
  }
}

/** The fixed part of the header: enough to know how long the whole header is. */
export const HEADER_PROBE = FIXED_HEADER;

interface FixedHeader {
  version: number;
  flags: number;
  count: number;
  deviceStateOffset: number;
  deviceStateLength: number;
  trailerOffset: number;
  headerLength: number;
}

/**
 * The fixed header, each field checked on its own first (so a damaged one is named), then the
 * header's own checksum (which catches what still looks plausible).
 */
function decodeFixedHeader(r: FieldReader, fileSize: number): FixedHeader {
  const { buf } = r;
  if (fileSize === 0) r.fail('magic', 0, 'truncated: the file is empty (0 bytes), there is no snapshot header');
  // A prefix of the magic in a file shorter than 8 bytes is a cut snapshot, not another kind of file.
  const magic = buf.toString('latin1', 0, Math.min(8, buf.length));
  if (!SNAPSHOT_MAGIC.startsWith(magic)) r.fail('magic', 0, `${JSON.stringify(magic)} is not ${JSON.stringify(SNAPSHOT_MAGIC)}: not a postcopy snapshot`);
  r.need('fixed header', 0, FIXED_HEADER);
  const version = r.u32('version', 8);
  if (!SNAPSHOT_VERSIONS_READ.includes(version)) r.fail('version', 8, `${version} is not supported (this reader knows ${SNAPSHOT_VERSIONS_READ.join(' and ')})`);
  const flags = r.u32('flags', 12);
  if (flags & ~KNOWN_FLAGS) r.fail('flags', 12, `unknown flags ${hex((flags & ~KNOWN_FLAGS))}`);
  const targetPageSize = r.u32('target page size', 16);
  if (targetPageSize !== SNAPSHOT_TARGET_PAGE) r.fail('target page size', 16, `${targetPageSize} is not ${SNAPSHOT_TARGET_PAGE}`);
  const count = r.u32('block count', 20);
  if (count === 0 || count > MAX_BLOCKS) r.fail('block count', 20, `${count} is not in 1..${MAX_BLOCKS}`);
  const deviceStateOffset = r.u64('device state offset', 24);
  const deviceStateLength = r.u64('device state length', 32);
  const trailerOffset = r.u64('trailer offset', 40);
  const headerLength = r.u64('header length', 48);
  if (r.u32('reserved', 60) !== 0) r.fail('reserved', 60, 'is not zero');
  r.crc('header checksum', FIXED_HEADER_CRC, 0, 'the fixed header (version, flags, page size, block count, device state offset and length, trailer offset, header length)');
  // Checks between fields come after the checksum, so that a damaged byte is named where it is.
  const shortest = FIXED_HEADER + count * (BLOCK_ENTRY_FIXED + 1);
  const longest = FIXED_HEADER + count * (BLOCK_ENTRY_FIXED + MAX_IDSTR);
  if (headerLength < shortest || headerLength > longest) r.fail('header length', 48, `${headerLength} is not possible for ${count} blocks (${shortest}..${longest})`);
  if (headerLength > fileSize) r.fail('block table', FIXED_HEADER, `truncated: the header is ${headerLength} bytes, the file only ${fileSize}`);
  return { version, flags, count, deviceStateOffset, deviceStateLength, trailerOffset, headerLength };
}

/** How long the header is, from its first HEADER_PROBE bytes (checked again by decodeHeader). */
export function headerLengthOf(probe: Buffer, file: string, fileSize: number): number {
  return decodeFixedHeader(new FieldReader(probe, file), fileSize).headerLength;
}

/**
 * Decodes and checks a header (with its block table) read from the start of a file of
 * `fileSize` bytes. `buf` must hold at least the header; HEADER_PROBE bytes say how long it is.
 */
export function decodeHeader(buf: Buffer, file: string, fileSize: number): SnapshotLayout {
  const r = new FieldReader(buf, file);
  const fixed = decodeFixedHeader(r, fileSize);
  r.need('block table', FIXED_HEADER, fixed.headerLength - FIXED_HEADER);
  const blocks: SnapshotBlockSpec[] = [];
  const entries: number[] = [];
  let at = FIXED_HEADER;
  for (let i = 0; i < fixed.count; i++) {
    const start = at;
    const idLength = r.u16(`block ${i} idstr length`, at);
    if (idLength === 0 || idLength > MAX_IDSTR) r.fail(`block ${i} idstr length`, at, `${idLength} is not in 1..${MAX_IDSTR}`);
    const end = at + BLOCK_ENTRY_FIXED + idLength;
    if (end > fixed.headerLength) r.fail(`block ${i} idstr length`, at, `${idLength} makes the entry end at ${end}, past the header length ${fixed.headerLength}`);
    const idBytes = buf.subarray(at + 2, at + 2 + idLength);
    const idstr = decodeUtf8(idBytes);
    if (idstr === undefined) return r.fail(`block ${i} idstr`, at + 2, 'is not valid UTF-8');
    at += 2 + idLength;
    const block = { idstr, usedLength: r.u64(`block ${i} used length`, at), pageSize: r.u64(`block ${i} page size`, at + 8) };
    const bad = blockProblem(block);
    if (bad) r.fail(`block ${i} (${idstr}) ${bad.field}`, bad.field === 'page size' ? at + 8 : at, bad.problem);
    r.crc(`block ${i} entry checksum`, end - 4, start, `block ${i}'s entry (idstr, used length, page size, bitmap and page offsets)`);
    const other = blocks.findIndex((b) => b.idstr === idstr);
    if (other >= 0) r.fail(`block ${i} idstr`, start + 2, `"${idstr}" is also block ${other}'s name`);
    blocks.push(block);
    entries.push(at);
    at = end;
  }
  if (at !== fixed.headerLength) r.fail('header length', 48, `${fixed.headerLength}, but the block table ends at ${at}`);
  // Every checksum matched; the offsets must still be those this format places (a crafted file).
  let expected: SnapshotLayout;
  try {
    expected = planLayout(blocks, fixed.deviceStateLength, fixed.flags, fixed.version);
  } catch (e) {
    return r.fail('block table', FIXED_HEADER, (e as Error).message);
  }
  const check = (field: string, off: number, want: number): void => {
    const v = r.u64(field, off);
    if (v !== want) r.fail(field, off, `${v}, expected ${want}`);
  };
  expected.blocks.forEach((b, i) => {
    const name = `block ${i} (${b.idstr})`;
    check(`${name} bitmap offset`, entries[i] + 16, b.bitmapOffset);
    check(`${name} bitmap length`, entries[i] + 24, b.bitmapLength);
    check(`${name} pages offset`, entries[i] + 32, b.pagesOffset);
  });
  check('device state offset', 24, expected.deviceStateOffset);
  check('trailer offset', 40, expected.trailerOffset);
  return expected;
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
    buf.writeUInt32LE(b.bitmapCrc >>> 0, at + 12);
    at += TRAILER_PER_BLOCK;
  }
  buf.writeUInt32LE(crc32(buf.subarray(0, at)), at);
  return buf;
}

/** Why a file has no trailer: a failed snapshot's reason (at most MAX_FAILURE_NOTE bytes). */
export function encodeFailure(reason: string): Buffer {
  const text = Buffer.from(reason).subarray(0, MAX_FAILURE_NOTE);
  const buf = Buffer.alloc(12 + text.length);
  buf.write(FAILED_MAGIC, 0, 'latin1');
  buf.writeUInt32LE(text.length, 8);
  text.copy(buf, 12);
  return buf;
}

/** How many bytes from the trailer offset on a reader needs to decide (trailer or failure note). */
export function trailerProbeLength(layout: SnapshotLayout): number {
  return Math.max(trailerLength(layout.blocks.length), 12 + MAX_FAILURE_NOTE);
}

export type TrailerState =
  | { kind: 'complete'; trailer: SnapshotTrailer }
  | { kind: 'failed'; reason: string }
  | { kind: 'missing'; reason: string };

/**
 * Decodes what lies at the trailer offset of a file of `fileSize` bytes. `buf` holds the bytes
 * from layout.trailerOffset on, up to trailerProbeLength(layout) of them.
 * A missing trailer (interrupted) or a failure note is not an error: the caller refuses the
 * file with the reason. A file cut short of the trailer offset, or a trailer that is there but
 * wrong, is a SnapshotFormatError.
 */
export function decodeTrailer(buf: Buffer, layout: SnapshotLayout, file: string, fileSize: number): TrailerState {
  const base = layout.trailerOffset;
  const r = new FieldReader(buf, file, base);
  if (fileSize < base) {
    // The writer sizes NAME.partial to the trailer offset at once, so a shorter file was cut.
    throw new SnapshotFormatError(file, 'file length', fileSize, `truncated: the file ends at byte ${fileSize}, in ${partAt(layout, fileSize)}; the layout needs ${layout.fileLength} bytes`);
  }
  if (buf.length === 0 || buf.subarray(0, Math.min(8, buf.length)).every((b) => b === 0)) {
    return { kind: 'missing', reason: `no trailer at offset ${base}: the snapshot did not finish (interrupted, or still being written)` };
  }
  const magic = buf.toString('latin1', 0, Math.min(8, buf.length));
  if (magic === FAILED_MAGIC) {
    const n = Math.min(buf.length >= 12 ? buf.readUInt32LE(8) : 0, Math.max(0, buf.length - 12));
    return { kind: 'failed', reason: buf.toString('utf8', 12, 12 + n) || 'no reason recorded' };
  }
  const length = trailerLength(layout.blocks.length);
  if (!TRAILER_MAGIC.startsWith(magic)) r.fail('trailer magic', 0, `${JSON.stringify(magic)} is not ${JSON.stringify(TRAILER_MAGIC)}`);
  r.need('trailer', 0, length);
  const version = r.u32('trailer version', 8);
  if (version !== layout.version) r.fail('trailer version', 8, `${version}, the header says ${layout.version}`);
  const count = r.u32('trailer block count', 12);
  if (count !== layout.blocks.length) r.fail('trailer block count', 12, `${count}, the header says ${layout.blocks.length}`);
  const fileLength = r.u64('trailer file length', 16);
  if (fileLength !== layout.fileLength) r.fail('trailer file length', 16, `${fileLength}, the header implies ${layout.fileLength}`);
  for (let at = 36; at < TRAILER_FIXED; at += 4) if (r.u32('trailer reserved', at) !== 0) r.fail('trailer reserved', at, 'is not zero');
  const withChecksums = (layout.flags & SnapshotFlag.PAGE_CHECKSUMS) !== 0;
  const blocks: BlockSummary[] = layout.blocks.map((b, i) => {
    const at = TRAILER_FIXED + i * TRAILER_PER_BLOCK;
    const present = r.u64(`trailer block ${i} pages present`, at);
    if (present > b.pages) r.fail(`trailer block ${i} pages present`, at, `${present} > ${b.pages} pages in the block`);
    const pageChecksum = r.u32(`trailer block ${i} page checksum`, at + 8);
    if (!withChecksums && pageChecksum !== 0) r.fail(`trailer block ${i} page checksum`, at + 8, 'is not zero, but the header has no PAGE_CHECKSUMS flag');
    return { present, pageChecksum, bitmapCrc: r.u32(`trailer block ${i} bitmap checksum`, at + 12) };
  });
  r.crc('trailer checksum', length - 4, 0, 'the trailer');
  if (fileSize !== layout.fileLength) r.fail('file length', length, `${fileSize - layout.fileLength} bytes follow the trailer (the file is ${fileSize} bytes, the layout ${layout.fileLength})`);
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

/**
 * Version 1's checksum of one saved page: zlib's CRC-32 continued from the page's index, added
 * mod 2^32 into its block's sum (order-independent). Version 2's is CRC32C, the same way
 * (src/snapshot/page-checksums.ts: the addon computes it).
 */
export function crc32PageChecksum(page: Uint8Array, index: number): number {
  return crc32(page, index >>> 0);
}

export function addChecksum(sum: number, page: number): number {
  return (sum + page) >>> 0;
}

export { crc32 };
