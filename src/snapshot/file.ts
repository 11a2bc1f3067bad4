// A snapshot file on disk (format: src/wire/snapshot-format.ts, docs/snapshot-format.md).
// SnapshotWriter writes NAME.partial with positional writes from any thread (its descriptor is
// shared), then bitmaps, device state, a sync, the trailer, a sync and the rename to NAME.
// SnapshotReader opens a file and refuses it, naming why, unless it is complete and intact.
import { closeSync, fstatSync, fsyncSync, ftruncateSync, openSync, read, readSync, renameSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { Bitmap } from '../memory/bitmap.js';
import {
  HEADER_PROBE,
  SnapshotFlag,
  SnapshotFormatError,
  SNAPSHOT_VERSION,
  crc32,
  decodeHeader,
  decodeTrailer,
  encodeFailure,
  encodeHeader,
  encodeTrailer,
  headerLengthOf,
  planLayout,
  trailerProbeLength,
  type BlockSummary,
  type SnapshotBlockSpec,
  type SnapshotLayout,
  type SnapshotTrailer,
} from '../wire/snapshot-format.js';
import { verifyPageData, type PageDataCheck } from './verify.js';
import { foldPageRun } from './page-checksums.js';
import { hex, PostcopyError } from '../base/index.js';

/** A file that is not a complete snapshot: interrupted, failed, or damaged. */
export class SnapshotIncompleteError extends PostcopyError {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super('ERR_SNAPSHOT_INCOMPLETE', `${file}: not a complete snapshot: ${reason}`);
    this.name = 'SnapshotIncompleteError';
  }
}

export const PARTIAL_SUFFIX = '.partial';
/** Bytes kept at the trailer's place of a partial file for a failure note. */
const FAILURE_NOTE_SPACE = 4096;

/** pwrite of the whole buffer; a short write (a full disk reports ENOSPC on the retry) throws. */
export function writeFully(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.length) done += writeSync(fd, data, done, data.length - done, position + done);
}

export function readFully(fd: number, into: Uint8Array, position: number, file: string, field: string): void {
  let done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n === 0) throw truncated(file, field, position + done, into.length - done);
    done += n;
  }
}

function truncated(file: string, field: string, at: number, missing: number): SnapshotFormatError {
  return new SnapshotFormatError(file, field, at, `truncated: the file ends before ${missing} more bytes`);
}

/** readFully on the libuv thread pool: several reads in flight, the main thread free meanwhile. */
export async function readFullyAsync(fd: number, into: Uint8Array, position: number, file: string, field: string): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const n = await new Promise<number>((resolve, reject) => read(fd, into, done, into.length - done, position + done, (error, bytes) => (error ? reject(error) : resolve(bytes))));
    if (n === 0) throw truncated(file, field, position + done, into.length - done);
    done += n;
  }
}

export class SnapshotWriter {
  readonly partialPath: string;
  readonly fd: number;
  private closed = false;

  private constructor(
    readonly path: string,
    readonly layout: SnapshotLayout,
  ) {
    this.partialPath = path + PARTIAL_SUFFIX;
    this.fd = openSync(this.partialPath, 'w+', 0o644);
    try {
      // Sparse up to the trailer: pages never written read back as zeros (holes). The trailer's
      // place is written (zeros: "not finished") now, so that a full disk cannot keep a
      // failed snapshot from saying why.
      ftruncateSync(this.fd, layout.trailerOffset);
      writeFully(this.fd, Buffer.alloc(FAILURE_NOTE_SPACE), layout.trailerOffset);
      writeFully(this.fd, encodeHeader(layout), 0);
    } catch (error) {
      closeSync(this.fd);
      throw error;
    }
  }

  /** Creates PATH.partial with its header; pages go to `pageOffset(block, page)`. */
  /** `version`: the format's (default the newest; 1 only to test that older files are still read). */
  static create(path: string, blocks: SnapshotBlockSpec[], options: { deviceStateLength?: number; pageChecksums?: boolean; version?: number } = {}): SnapshotWriter {
    const layout = planLayout(blocks, options.deviceStateLength ?? 0, options.pageChecksums ? SnapshotFlag.PAGE_CHECKSUMS : 0, options.version);
    return new SnapshotWriter(path, layout);
  }

  /** Where a page goes; an index outside the block throws (it would land in another block). */
  pageOffset(block: number, page: number): number {
    const b = this.layout.blocks[block];
    if (!b || !Number.isInteger(page) || page < 0 || page >= b.pages) throw new RangeError(`pageOffset: page ${page} of block ${block} (${b ? `${b.idstr}, ${b.pages} pages` : `${this.layout.blocks.length} blocks`})`);
    return b.pagesOffset + page * b.pageSize;
  }

  /**
   * Makes the file complete: bitmaps, device state, sync, trailer, sync, rename, sync of the
   * directory. `present` holds each block's bitmap; `checksums` each block's page checksum.
   */
  finish(present: Bitmap[], checksums: number[], deviceState?: Uint8Array): void {
    const { layout } = this;
    const state = deviceState ?? new Uint8Array(0);
    if (state.length !== layout.deviceStateLength) throw new RangeError(`device state is ${state.length} bytes, the file was laid out for ${layout.deviceStateLength}`);
    if (present.length !== layout.blocks.length) throw new RangeError(`finish: ${present.length} bitmaps for ${layout.blocks.length} blocks`);
    layout.blocks.forEach((b, i) => {
      if (present[i].size !== b.pages) throw new RangeError(`finish: block ${b.idstr} has ${b.pages} pages, its bitmap ${present[i].size} bits`);
    });
    const withChecksums = (layout.flags & SnapshotFlag.PAGE_CHECKSUMS) !== 0;
    if (withChecksums && checksums.length !== layout.blocks.length) throw new RangeError(`finish: ${checksums.length} page checksums for ${layout.blocks.length} blocks`);
    const maps = present.map((m) => m.toLittleEndianBytes());
    layout.blocks.forEach((b, i) => writeFully(this.fd, maps[i], b.bitmapOffset));
    if (state.length) writeFully(this.fd, state, layout.deviceStateOffset);
    fsyncSync(this.fd);
    const trailer: SnapshotTrailer = {
      fileLength: layout.fileLength,
      headerCrc: crc32(encodeHeader(layout)),
      bitmapsCrc: bitmapsChecksum(maps),
      deviceStateCrc: crc32(state),
      blocks: present.map((m, i): BlockSummary => ({ present: m.count(), pageChecksum: withChecksums ? checksums[i] >>> 0 : 0, bitmapCrc: crc32(maps[i]) })),
    };
    writeFully(this.fd, encodeTrailer(layout, trailer), layout.trailerOffset);
    ftruncateSync(this.fd, layout.fileLength);
    fsyncSync(this.fd);
    this.close();
    renameSync(this.partialPath, this.path);
    syncDirectory(dirname(this.path));
  }

  /** Leaves PATH.partial marked failed with the reason (best effort: the disk may be full). */
  fail(reason: string): void {
    if (this.closed) return;
    try {
      writeFully(this.fd, encodeFailure(reason).subarray(0, FAILURE_NOTE_SPACE), this.layout.trailerOffset);
    } catch {
      // the file stays without a trailer: still refused as incomplete
    }
    this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeSync(this.fd);
  }
}

function bitmapsChecksum(maps: Uint8Array[]): number {
  let crc = 0;
  for (const m of maps) crc = crc32(m, crc);
  return crc;
}

function syncDirectory(dir: string): void {
  let fd = -1;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // some filesystems refuse fsync on a directory; the rename is still atomic
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

export interface SnapshotBlockInfo {
  idstr: string;
  usedLength: number;
  pageSize: number;
  pages: number;
  present: Bitmap;
  pagesOffset: number;
  /** From the trailer (0 without page checksums). */
  pageChecksum: number;
}

/** What `inspect` reports of any file, complete or not. */
export interface SnapshotStatus {
  file: string;
  fileSize: number;
  /** Complete and intact: trailer, every checksum, and the page data where the file has page checksums. */
  complete: boolean;
  /** Why the file is not complete (interrupted, failed with a reason, or damaged). */
  reason?: string;
  /** The layout, whenever the header is intact. */
  layout?: SnapshotLayout;
  /** The trailer, once header, trailer, bitmaps and device state all matched their checksums. */
  trailer?: SnapshotTrailer;
  /** Each block's page data against the trailer (only for files with page checksums). */
  pageData?: PageDataCheck[];
}

/** Device state is read this much at a time when only its checksum is wanted. */
const CHECK_CHUNK = 1 << 20;

export class SnapshotReader {
  private closed = false;

  private constructor(
    readonly file: string,
    readonly fd: number,
    readonly layout: SnapshotLayout,
    readonly trailer: SnapshotTrailer,
    readonly blocks: SnapshotBlockInfo[],
  ) {}

  /**
   * Opens a complete, intact snapshot (header, trailer, bitmaps and device state checked; page
   * data is checked by verifyPageData or as pages are read); anything else throws
   * SnapshotIncompleteError or SnapshotFormatError.
   */
  static open(file: string): SnapshotReader {
    const fd = openSync(file, 'r');
    try {
      const { layout, trailer } = readStructure(fd, file);
      const blocks = readBitmaps(fd, file, layout, trailer);
      checkDeviceState(fd, file, layout, trailer);
      return new SnapshotReader(file, fd, layout, trailer, blocks);
    } catch (error) {
      closeSync(fd);
      throw error;
    }
  }

  /**
   * Whether a file is a complete, intact snapshot and, if not, why; reads every present page
   * when the file has page checksums. Never throws for a damaged file (only for one it cannot
   * read at all: missing, a directory, no permission).
   */
  static inspect(file: string): SnapshotStatus {
    const fileSize = statSync(file).size;
    let reader: SnapshotReader;
    try {
      reader = SnapshotReader.open(file);
    } catch (error) {
      if (!(error instanceof SnapshotIncompleteError || error instanceof SnapshotFormatError)) throw error;
      const reason = error instanceof SnapshotIncompleteError ? error.reason : error.detail;
      return { file, fileSize, complete: false, reason, layout: layoutIfIntact(file, fileSize) };
    }
    try {
      const { layout, trailer } = reader;
      if (!reader.pageChecksums) return { file, fileSize, complete: true, layout, trailer };
      const pageData = verifyPageData(reader);
      const bad = pageData.find((b) => !b.ok);
      const reason = bad && `page data of block ${bad.block} (${bad.idstr}) does not match its checksum (${hex(bad.actual)}, the trailer says ${hex(bad.expected)})`;
      return { file, fileSize, complete: !bad, reason, layout, trailer, pageData };
    } finally {
      reader.close();
    }
  }

  get deviceState(): Buffer {
    const out = Buffer.alloc(this.layout.deviceStateLength);
    if (out.length) readFully(this.fd, out, this.layout.deviceStateOffset, this.file, 'device state');
    const crc = crc32(out);
    if (crc !== this.trailer.deviceStateCrc) throw deviceStateMismatch(this.file, this.layout, this.trailer, crc);
    return out;
  }

  get pageChecksums(): boolean {
    return (this.layout.flags & SnapshotFlag.PAGE_CHECKSUMS) !== 0;
  }

  /**
   * Reads `count` pages of a block from `page` on into `into`. Pages whose bit is clear are
   * zeros whatever the file holds there: the bitmap, not the bytes, says what was saved.
   */
  readPages(block: number, page: number, count: number, into: Uint8Array): void {
    const b = this.blocks[block];
    if (!b || !Number.isInteger(page) || !Number.isInteger(count) || page < 0 || count < 0 || page + count > b.pages || into.length < count * b.pageSize) {
      throw new RangeError(`readPages: pages ${page}+${count} of block ${block} (${b ? `${b.idstr}, ${b.pages} pages` : `${this.blocks.length} blocks`}) into ${into.length} bytes`);
    }
    readFully(this.fd, into.subarray(0, count * b.pageSize), b.pagesOffset + page * b.pageSize, this.file, `block ${b.idstr} page ${page}`);
    const end = page + count;
    for (let hole = b.present.findNextZero(page); hole < end; ) {
      const holeEnd = Math.min(b.present.findNextSet(hole), end);
      into.fill(0, (hole - page) * b.pageSize, (holeEnd - page) * b.pageSize);
      hole = holeEnd < end ? b.present.findNextZero(holeEnd) : end;
    }
  }

  /** Folds a run of present pages (the first being `firstPage`) into a block's running page checksum (compare with pageChecksum at the end). */
  foldPages(sum: number, pages: Uint8Array, pageSize: number, firstPage: number): number {
    return foldPageRun(this.layout.version, sum, pages, pageSize, firstPage);
  }

  /** The same for a file of `version` (default: the one written now), without a reader. */
  static foldPages(sum: number, pages: Uint8Array, pageSize: number, firstPage: number, version = SNAPSHOT_VERSION): number {
    return foldPageRun(version, sum, pages, pageSize, firstPage);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeSync(this.fd);
  }
}

function readLayout(fd: number, file: string, fileSize: number): SnapshotLayout {
  const probe = Buffer.alloc(Math.min(HEADER_PROBE, fileSize));
  readFully(fd, probe, 0, file, 'header');
  // headerLengthOf bounds the length by the block count (at most ~300 KiB) and the file size.
  const header = Buffer.alloc(headerLengthOf(probe, file, fileSize));
  readFully(fd, header, 0, file, 'header');
  return decodeHeader(header, file, fileSize);
}

/** The layout of a file whose header is intact, whatever else is wrong with it. */
function layoutIfIntact(file: string, fileSize: number): SnapshotLayout | undefined {
  const fd = openSync(file, 'r');
  try {
    return readLayout(fd, file, fileSize);
  } catch {
    return undefined; // the reason already says where the header is damaged
  } finally {
    closeSync(fd);
  }
}

function readStructure(fd: number, file: string): { layout: SnapshotLayout; trailer: SnapshotTrailer } {
  const fileSize = fstatSync(fd).size;
  const layout = readLayout(fd, file, fileSize);
  // Bounded whatever the header says: decodeTrailer refuses a file that ends before the trailer.
  const tail = Buffer.alloc(Math.max(0, Math.min(fileSize - layout.trailerOffset, trailerProbeLength(layout))));
  if (tail.length) readFully(fd, tail, layout.trailerOffset, file, 'trailer');
  const state = decodeTrailer(tail, layout, file, fileSize);
  if (state.kind === 'missing') throw new SnapshotIncompleteError(file, state.reason);
  if (state.kind === 'failed') throw new SnapshotIncompleteError(file, `the snapshot failed: ${state.reason}`);
  const headerCrc = crc32(encodeHeader(layout));
  if (headerCrc !== state.trailer.headerCrc) {
    throw new SnapshotFormatError(file, 'trailer header checksum', layout.trailerOffset + 24, `${hex(state.trailer.headerCrc)} does not match the header (${hex(headerCrc)})`);
  }
  return { layout, trailer: state.trailer };
}

/** Called once the file is known to be as long as its layout, so each bitmap is inside it. */
function readBitmaps(fd: number, file: string, layout: SnapshotLayout, trailer: SnapshotTrailer): SnapshotBlockInfo[] {
  let crc = 0;
  const blocks = layout.blocks.map((b, i): SnapshotBlockInfo => {
    const name = `block ${i} (${b.idstr}) bitmap`;
    const bytes = Buffer.alloc(b.bitmapLength);
    readFully(fd, bytes, b.bitmapOffset, file, name);
    const summary = trailer.blocks[i];
    const blockCrc = crc32(bytes);
    if (blockCrc !== summary.bitmapCrc) throw new SnapshotFormatError(file, name, b.bitmapOffset, `checksum ${hex(blockCrc)} does not match the trailer (${hex(summary.bitmapCrc)})`);
    crc = crc32(bytes, crc);
    const present = Bitmap.fromLittleEndianBytes(bytes, b.pages);
    if (present.count() !== summary.present) throw new SnapshotFormatError(file, name, b.bitmapOffset, `${present.count()} pages present, the trailer says ${summary.present}`);
    return { idstr: b.idstr, usedLength: b.usedLength, pageSize: b.pageSize, pages: b.pages, present, pagesOffset: b.pagesOffset, pageChecksum: summary.pageChecksum };
  });
  if (crc !== trailer.bitmapsCrc) {
    throw new SnapshotFormatError(file, 'trailer bitmaps checksum', layout.trailerOffset + 28, `${hex(trailer.bitmapsCrc)} does not match the bitmaps (${hex(crc)})`);
  }
  return blocks;
}

/** The device state against its checksum, a chunk at a time (it may be large). */
function checkDeviceState(fd: number, file: string, layout: SnapshotLayout, trailer: SnapshotTrailer): void {
  const chunk = Buffer.alloc(Math.min(CHECK_CHUNK, layout.deviceStateLength));
  let crc = 0;
  for (let done = 0; done < layout.deviceStateLength; ) {
    const n = Math.min(chunk.length, layout.deviceStateLength - done);
    readFully(fd, chunk.subarray(0, n), layout.deviceStateOffset + done, file, 'device state');
    crc = crc32(chunk.subarray(0, n), crc);
    done += n;
  }
  if (crc !== trailer.deviceStateCrc) throw deviceStateMismatch(file, layout, trailer, crc);
}

function deviceStateMismatch(file: string, layout: SnapshotLayout, trailer: SnapshotTrailer, crc: number): SnapshotFormatError {
  return new SnapshotFormatError(file, 'device state', layout.deviceStateOffset, `checksum ${hex(crc)} does not match the trailer (${hex(trailer.deviceStateCrc)})`);
}
