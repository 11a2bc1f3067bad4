// The working set of a snapshot: the pages a lazy restore's guest touched first, in the order
// it touched them, kept beside the snapshot (FILE.ws) so that the next lazy restore of that
// snapshot prefetches them before anything else. The file names the snapshot it was recorded
// from (the checksum closing its trailer, which covers header, bitmaps, device state and page
// checksums), so a working set left from another snapshot of the same name is refused.
//
// Layout (little endian): magic "PCWSET01", u32 version, u32 snapshot identity, u64 snapshot
// file length, u32 block count, u32 entry count, entries (u32 block, u32 page in the block's
// page size), u32 crc32 of everything before it.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { crc32, encodeTrailer } from '../wire/snapshot-format.js';
import type { SnapshotReader } from './file.js';
import { hex, PostcopyError } from '../base/index.js';

const MAGIC = 'PCWSET01';
const VERSION = 1;
const HEADER = 32;
const ENTRY = 8;

export interface WorkingSetPage {
  block: number;
  /** In the block's page size (a 2 MiB huge page is one). */
  page: number;
}

export function workingSetPath(snapshotFile: string): string {
  return snapshotFile + '.ws';
}

/** What a working set is tied to: the checksum that closes the snapshot's trailer. */
export function snapshotIdentity(reader: SnapshotReader): number {
  const trailer = encodeTrailer(reader.layout, reader.trailer);
  return trailer.readUInt32LE(trailer.length - 4);
}

export class WorkingSet {
  constructor(readonly pages: readonly WorkingSetPage[]) {}

  /** Writes the working set of `reader`'s snapshot to `file` (a temporary file renamed over it). */
  save(file: string, reader: SnapshotReader): void {
    const buf = Buffer.alloc(HEADER + this.pages.length * ENTRY + 4);
    buf.write(MAGIC, 0, 'latin1');
    buf.writeUInt32LE(VERSION, 8);
    buf.writeUInt32LE(snapshotIdentity(reader), 12);
    buf.writeBigUInt64LE(BigInt(reader.layout.fileLength), 16);
    buf.writeUInt32LE(reader.blocks.length, 24);
    buf.writeUInt32LE(this.pages.length, 28);
    this.pages.forEach((p, i) => {
      buf.writeUInt32LE(p.block, HEADER + i * ENTRY);
      buf.writeUInt32LE(p.page, HEADER + i * ENTRY + 4);
    });
    buf.writeUInt32LE(crc32(buf.subarray(0, buf.length - 4)), buf.length - 4);
    writeFileSync(file + '.tmp', buf);
    renameSync(file + '.tmp', file);
  }

  /** Reads a working set for `reader`'s snapshot; ERR_WORKING_SET names why it cannot be used. */
  static load(file: string, reader: SnapshotReader): WorkingSet {
    const buf = readFileSync(file);
    const refuse = (reason: string): never => {
      throw new PostcopyError('ERR_WORKING_SET', `${file}: working set refused: ${reason}`);
    };
    if (buf.length < HEADER + 4 || buf.toString('latin1', 0, 8) !== MAGIC) refuse(`not a working set file (no ${MAGIC} header)`);
    const count = buf.readUInt32LE(28);
    if (buf.length !== HEADER + count * ENTRY + 4) refuse(`${buf.length} bytes, ${count} entries need ${HEADER + count * ENTRY + 4}`);
    const crc = crc32(buf.subarray(0, buf.length - 4));
    if (crc !== buf.readUInt32LE(buf.length - 4)) refuse(`checksum ${hex(buf.readUInt32LE(buf.length - 4))} does not match its contents (${hex(crc)})`);
    if (buf.readUInt32LE(8) !== VERSION) refuse(`version ${buf.readUInt32LE(8)}, this reader knows ${VERSION}`);
    const identity = snapshotIdentity(reader);
    if (buf.readUInt32LE(12) !== identity || Number(buf.readBigUInt64LE(16)) !== reader.layout.fileLength) {
      refuse(`stale: recorded for another snapshot (identity ${hex(buf.readUInt32LE(12))}, ${reader.file} is ${hex(identity)})`);
    }
    if (buf.readUInt32LE(24) !== reader.blocks.length) refuse(`${buf.readUInt32LE(24)} blocks, the snapshot has ${reader.blocks.length}`);
    const pages: WorkingSetPage[] = [];
    for (let i = 0; i < count; i++) {
      const block = buf.readUInt32LE(HEADER + i * ENTRY);
      const page = buf.readUInt32LE(HEADER + i * ENTRY + 4);
      if (block >= reader.blocks.length || page >= reader.blocks[block].pages) refuse(`entry ${i} (block ${block} page ${page}) is outside the snapshot`);
      pages.push({ block, page });
    }
    return new WorkingSet(pages);
  }
}
