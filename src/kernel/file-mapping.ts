// A VM's memory file, mapped read-only and shared: the source of UFFDIO_COPY for every VM
// served from it (one page cache for all of them). It offers no view of its bytes: a store
// into a read-only mapping kills the process, and so does a read past the end of a file
// truncated since. The kernel's copy (Userfaultfd.tryCopyFrom) is the one way to read it.
import { closeSync, fstatSync, openSync } from 'node:fs';
import { addon, type NativeFileMapping } from './addon.js';
import { invalidArgument } from './errors.js';

/** dataRanges' default bound: past it the rest of the file counts as data. */
const MAX_DATA_RANGES = 65536;

export class FileMapping {
  readonly address: bigint;
  /** The address as a number: exact (user addresses are below 2^47), and free on the hot path. */
  readonly base: number;
  /** The file's length when it was mapped. */
  readonly length: number;
  /** Where copies may reach: the end of the last page (past the file's end it reads as zeros). */
  private readonly limit: number;
  private readonly native: NativeFileMapping;
  private live = true;

  /** Maps the whole file at `path` (opened read-only; the descriptor is closed again). */
  static open(path: string): FileMapping {
    const fd = openSync(path, 'r');
    try {
      return new FileMapping(fd, 'path', path);
    } finally {
      closeSync(fd);
    }
  }

  /** Maps the whole open file `fd` (a memfd too); `fd` stays the caller's to close. */
  static fromDescriptor(fd: number): FileMapping {
    return new FileMapping(fd, 'fd', fd);
  }

  private constructor(fd: number, argument: string, received: string | number) {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw invalidArgument(argument, 'must be a regular file to map (it is not one)', received);
    if (stat.size === 0) throw invalidArgument(argument, 'must be a file of at least one byte to map (it is empty)', received);
    this.native = new addon.FileMapping(fd, stat.size);
    this.address = this.native.address;
    this.base = Number(this.address);
    this.length = stat.size;
    this.limit = Math.ceil(stat.size / addon.pageSize) * addon.pageSize;
  }

  get mapped(): boolean {
    return this.live;
  }

  /**
   * Whether [offset, offset + length) can be copied from: inside the mapping (up to the end of
   * its last page) while it is mapped. Runs on every placement from it; allocates nothing.
   */
  holds(offset: number, length: number): boolean {
    return this.live && Number.isSafeInteger(offset) && typeof length === 'number' && offset >= 0 && length >= 0 && offset + length <= this.limit;
  }

  /**
   * The [start, end) byte ranges of the file that hold data, in order; the rest are holes,
   * which read as zeros (a diff snapshot's pages never written). From lseek(SEEK_DATA,
   * SEEK_HOLE) at the file system's block size. At most `maxRanges`: past that bound the rest
   * of the file is one range, which is still correct (a hole read as data is zeros), only
   * slower to serve.
   */
  dataRanges(maxRanges = MAX_DATA_RANGES): [number, number][] {
    const pairs = this.native.dataRanges(maxRanges);
    const ranges: [number, number][] = [];
    for (let i = 0; i < pairs.length; i += 2) ranges.push([pairs[i], pairs[i + 1]]);
    return ranges;
  }

  /** Unmaps the file now (later copies from it are refused); again is a no-op. */
  close(): void {
    this.live = false;
    this.native.unmap();
  }
}
