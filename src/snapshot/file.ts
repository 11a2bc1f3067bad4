// A snapshot file on disk (format: src/wire/snapshot-format.ts, docs/snapshot-format.md).
// SnapshotWriter writes NAME.partial with positional writes from any thread (its descriptor is
// shared), then bitmaps, device state, a sync, the trailer, a sync and the rename to NAME.
// SnapshotReader opens a file and refuses it, naming why, unless it is complete and intact.
import { closeSync, fstatSync, fsyncSync, ftruncateSync, openSync, read, readSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { Bitmap } from '../memory/bitmap.js';
import {
  HEADER_PROBE,
  SnapshotFormatError,
  addChecksum,
  crc32,
  decodeHeader,
  decodeTrailer,
  encodeFailure,
  encodeHeader,
  encodeTrailer,
  headerLengthOf,
  pageChecksum,
  planLayout,
  trailerLength,
  type BlockSummary,
  type SnapshotBlockSpec,
  type SnapshotLayout,
  type SnapshotTrailer,
} from '../wire/snapshot-format.js';

/** A file that is not a complete snapshot: interrupted, failed, or damaged. */
export class SnapshotIncompleteError extends Error {
  readonly code = 'ERR_SNAPSHOT_INCOMPLETE';
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`${file}: not a complete snapshot: ${reason}`);
    this.name = 'SnapshotIncompleteError';
  }
}

export const PARTIAL_SUFFIX = '.partial';

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
      // Sparse up to the trailer: pages never written read back as zeros (holes).
      ftruncateSync(this.fd, layout.trailerOffset);
      writeFully(this.fd, encodeHeader(layout), 0);
    } catch (error) {
      closeSync(this.fd);
      throw error;
    }
  }

  /** Creates PATH.partial with its header; pages go to `pageOffset(block, page)`. */
  static create(path: string, blocks: SnapshotBlockSpec[], options: { deviceStateLength?: number; pageChecksums?: boolean } = {}): SnapshotWriter {
    const layout = planLayout(blocks, options.deviceStateLength ?? 0, options.pageChecksums ? 1 : 0);
    return new SnapshotWriter(path, layout);
  }

  pageOffset(block: number, page: number): number {
    const b = this.layout.blocks[block];
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
    const maps = present.map((m) => m.toLittleEndianBytes());
    layout.blocks.forEach((b, i) => writeFully(this.fd, maps[i], b.bitmapOffset));
    if (state.length) writeFully(this.fd, state, layout.deviceStateOffset);
    fsyncSync(this.fd);
    const trailer: SnapshotTrailer = {
      fileLength: layout.fileLength,
      headerCrc: crc32(encodeHeader(layout)),
      bitmapsCrc: bitmapsChecksum(maps),
      deviceStateCrc: crc32(state),
      blocks: present.map((m, i): BlockSummary => ({ present: m.count(), pageChecksum: checksums[i] ?? 0 })),
    };
    writeFully(this.fd, encodeTrailer(layout, trailer), layout.trailerOffset);
    fsyncSync(this.fd);
    this.close();
    renameSync(this.partialPath, this.path);
    syncDirectory(dirname(this.path));
  }

  /** Leaves PATH.partial marked failed with the reason (best effort: the disk may be full). */
  fail(reason: string): void {
    if (this.closed) return;
    try {
      writeFully(this.fd, encodeFailure(reason), this.layout.trailerOffset);
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
  complete: boolean;
  /** Why the file is not complete (interrupted, failed with a reason, or damaged). */
  reason?: string;
  layout?: SnapshotLayout;
  trailer?: SnapshotTrailer;
}

export class SnapshotReader {
  private closed = false;

  private constructor(
    readonly file: string,
    readonly fd: number,
    readonly layout: SnapshotLayout,
    readonly trailer: SnapshotTrailer,
    readonly blocks: SnapshotBlockInfo[],
  ) {}

  /** Opens a complete, intact snapshot; anything else throws SnapshotIncompleteError or SnapshotFormatError. */
  static open(file: string): SnapshotReader {
    const fd = openSync(file, 'r');
    try {
      const { layout, trailer } = readStructure(fd, file);
      const blocks = readBitmaps(fd, file, layout, trailer);
      return new SnapshotReader(file, fd, layout, trailer, blocks);
    } catch (error) {
      closeSync(fd);
      throw error;
    }
  }

  /** Whether a file is a complete snapshot and, if not, why; never throws for a damaged file. */
  static inspect(file: string): SnapshotStatus {
    const fd = openSync(file, 'r');
    const fileSize = fstatSync(fd).size;
    try {
      const { layout, trailer } = readStructure(fd, file);
      readBitmaps(fd, file, layout, trailer);
      return { file, fileSize, complete: true, layout, trailer };
    } catch (error) {
      if (!(error instanceof SnapshotIncompleteError || error instanceof SnapshotFormatError)) throw error;
      let layout: SnapshotLayout | undefined;
      try {
        layout = readLayout(fd, file, fileSize);
      } catch {
        // the header itself is damaged: the reason says where
      }
      return { file, fileSize, complete: false, reason: error instanceof SnapshotIncompleteError ? error.reason : error.message, layout };
    } finally {
      closeSync(fd);
    }
  }

  get deviceState(): Buffer {
    const out = Buffer.alloc(this.layout.deviceStateLength);
    if (out.length) readFully(this.fd, out, this.layout.deviceStateOffset, this.file, 'device state');
    const crc = crc32(out);
    if (crc !== this.trailer.deviceStateCrc) {
      throw new SnapshotFormatError(this.file, 'device state', this.layout.deviceStateOffset, `checksum 0x${crc.toString(16)} does not match the trailer (0x${this.trailer.deviceStateCrc.toString(16)})`);
    }
    return out;
  }

  get pageChecksums(): boolean {
    return (this.layout.flags & 1) !== 0;
  }

  /** Reads `count` pages of a block from `page` on into `into` (holes read as zeros). */
  readPages(block: number, page: number, count: number, into: Uint8Array): void {
    const b = this.blocks[block];
    if (page < 0 || count < 0 || page + count > b.pages || into.length < count * b.pageSize) {
      throw new RangeError(`readPages: pages ${page}+${count} of block ${b.idstr} (${b.pages} pages)`);
    }
    readFully(this.fd, into.subarray(0, count * b.pageSize), b.pagesOffset + page * b.pageSize, this.file, `block ${b.idstr} page ${page}`);
  }

  /** Folds one present page into a block's running page checksum (compare with pageChecksum at the end). */
  static foldChecksum(sum: number, page: Uint8Array, index: number): number {
    return addChecksum(sum, pageChecksum(page, index));
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
  const header = Buffer.alloc(headerLengthOf(probe, file, fileSize));
  readFully(fd, header, 0, file, 'header');
  return decodeHeader(header, file, fileSize);
}

function readStructure(fd: number, file: string): { layout: SnapshotLayout; trailer: SnapshotTrailer } {
  const fileSize = fstatSync(fd).size;
  const layout = readLayout(fd, file, fileSize);
  const tail = Buffer.alloc(Math.max(0, Math.min(fileSize - layout.trailerOffset, trailerLength(layout.blocks.length) + 4096)));
  if (tail.length) readFully(fd, tail, layout.trailerOffset, file, 'trailer');
  const state = decodeTrailer(tail, layout, file, fileSize);
  if (state.kind === 'missing') throw new SnapshotIncompleteError(file, state.reason);
  if (state.kind === 'failed') throw new SnapshotIncompleteError(file, `the snapshot failed: ${state.reason}`);
  const headerCrc = crc32(encodeHeader(layout));
  if (headerCrc !== state.trailer.headerCrc) {
    throw new SnapshotFormatError(file, 'trailer header checksum', layout.trailerOffset + 24, `0x${state.trailer.headerCrc.toString(16)} does not match the header (0x${headerCrc.toString(16)})`);
  }
  return { layout, trailer: state.trailer };
}

function readBitmaps(fd: number, file: string, layout: SnapshotLayout, trailer: SnapshotTrailer): SnapshotBlockInfo[] {
  let crc = 0;
  const blocks = layout.blocks.map((b, i): SnapshotBlockInfo => {
    const bytes = Buffer.alloc(b.bitmapLength);
    readFully(fd, bytes, b.bitmapOffset, file, `block ${b.idstr} bitmap`);
    crc = crc32(bytes, crc);
    const present = Bitmap.fromLittleEndianBytes(bytes, b.pages);
    return { idstr: b.idstr, usedLength: b.usedLength, pageSize: b.pageSize, pages: b.pages, present, pagesOffset: b.pagesOffset, pageChecksum: trailer.blocks[i].pageChecksum };
  });
  if (crc !== trailer.bitmapsCrc) {
    throw new SnapshotFormatError(file, 'bitmaps', layout.blocks[0].bitmapOffset, `checksum 0x${crc.toString(16)} does not match the trailer (0x${trailer.bitmapsCrc.toString(16)})`);
  }
  blocks.forEach((b, i) => {
    if (b.present.count() !== trailer.blocks[i].present) {
      throw new SnapshotFormatError(file, `block ${b.idstr} bitmap`, layout.blocks[i].bitmapOffset, `${b.present.count()} pages present, the trailer says ${trailer.blocks[i].present}`);
    }
  });
  return blocks;
}
