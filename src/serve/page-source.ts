// Where a VM's pages come from, mapped read-only (the page cache is shared by every VM served
// from the same file, and a placement copies straight from it): Firecracker's memory file, whose
// holes (diff snapshots, unplugged memory) read as zeros and are placed without reading; or this
// package's snapshot file, block i for region i, pages not present being zeros; or staging
// memory that a migration from another host fills (remote-staging.ts), region by region: a read
// of a page not there yet waits in a fault that the migration serves.
import { Bitmap } from '../memory/index.js';
import { FileMapping, attachMapping } from '../kernel/index.js';
import { closeSync, fstatSync, openSync } from 'node:fs';
import { PostcopyError, ProtocolError } from '../base/index.js';
import { SnapshotReader } from '../snapshot/index.js';
import { memoryFileLength, type GuestRegion } from './regions.js';
import type { WorkerSourceSpec } from './protocol.js';

export class PageSource {
  private constructor(
    /** The file mapped, or each region's staging memory. */
    private readonly from: { file: FileMapping; path: string; fd: number } | { staging: Uint8Array[] },
    /** Per region, the pages (in its page size) that hold data; the others are zeros. */
    private readonly present: Bitmap[],
    /** Per region, where its page 0 is in the file (in staging: 0). */
    private readonly starts: number[],
  ) {}

  static open(spec: WorkerSourceSpec, regions: GuestRegion[]): PageSource {
    switch (spec.kind) {
      case 'file':
        return PageSource.memoryFile(spec.path, regions);
      case 'snapshot':
        return PageSource.snapshot(spec.path, regions);
      case 'staging': {
        const staging = spec.regions.map((d) => new Uint8Array(attachMapping(d.address, d.length)));
        return new PageSource({ staging }, regions.map((r) => allPages(r)), regions.map(() => 0));
      }
    }
  }

  private static mapped(path: string, file: FileMapping, present: Bitmap[], starts: number[]): PageSource {
    return new PageSource({ file, path, fd: openSync(path, 'r') }, present, starts);
  }

  private static memoryFile(path: string, regions: GuestRegion[]): PageSource {
    const file = FileMapping.open(path);
    try {
      const needed = memoryFileLength(regions);
      if (file.length < needed) throw new ProtocolError(`handshake: the regions need ${needed} bytes of ${path}, which has ${file.length}`);
      const data = file.dataRanges();
      const present = regions.map((r) => {
        const map = new Bitmap(r.size / r.pageSize);
        for (const [start, end] of data) {
          const from = Math.max(start, r.offset);
          const to = Math.min(end, r.offset + r.size);
          if (from >= to) continue;
          const first = Math.floor((from - r.offset) / r.pageSize);
          map.setRange(first, Math.ceil((to - r.offset) / r.pageSize) - first);
        }
        return map;
      });
      return PageSource.mapped(path, file, present, regions.map((r) => r.offset));
    } catch (error) {
      file.close();
      throw error;
    }
  }

  private static snapshot(path: string, regions: GuestRegion[]): PageSource {
    const reader = SnapshotReader.open(path);
    try {
      checkRegionsFit(reader.blocks, regions, path);
      const file = FileMapping.open(path);
      return PageSource.mapped(path, file, reader.blocks.map((b) => b.present), reader.blocks.map((b) => b.pagesOffset));
    } finally {
      reader.close();
    }
  }

  /** How its data pages are placed, for the latency histogram. */
  get label(): 'file' | 'remote' {
    return 'file' in this.from ? 'file' : 'remote';
  }

  /** What a placement of region `region` copies from, at offsetOf(). */
  bytesOf(region: number): FileMapping | Uint8Array {
    return 'file' in this.from ? this.from.file : this.from.staging[region];
  }

  /** The run from `page` of `region` whose pages are all data or all zeros, at most `maxPages`. */
  runFrom(region: number, page: number, maxPages: number): { end: number; present: boolean } {
    const map = this.present[region];
    const present = map.get(page);
    const change = present ? map.findNextZero(page) : map.findNextSet(page);
    return { end: Math.min(change, map.size, page + maxPages), present };
  }

  /** Where `page` of `region` (of `pageSize` bytes) is in the file. */
  offsetOf(region: number, page: number, pageSize: number): number {
    return this.starts[region] + page * pageSize;
  }

  /**
   * Throws unless [offset, offset + length) of the file can still be read: a file truncated
   * since it was mapped would otherwise be copied as zeros into a guest that had data there.
   */
  checkReadable(offset: number, length: number): void {
    if (!('file' in this.from)) return; // staging: this process's own memory
    const size = fstatSync(this.from.fd).size;
    if (offset + length > size) {
      throw new PostcopyError('ERR_RESTORE_FAILED', `${this.from.path} is now ${size} bytes: bytes ${offset}..${offset + length} can no longer be read`);
    }
  }

  close(): void {
    if (!('file' in this.from)) return;
    this.from.file.close();
    closeSync(this.from.fd);
  }
}

/** Region i must be block i of the snapshot, byte for byte in length and page size. */
export function checkRegionsFit(blocks: readonly { idstr: string; usedLength: number; pageSize: number }[], regions: GuestRegion[], path: string): void {
  if (blocks.length !== regions.length) throw new ProtocolError(`handshake: ${regions.length} regions, the snapshot ${path} has ${blocks.length} blocks`);
  blocks.forEach((b, i) => {
    const r = regions[i];
    if (b.usedLength !== r.size || b.pageSize !== r.pageSize) {
      throw new ProtocolError(`handshake: region ${i} is ${r.size} bytes of ${r.pageSize}-byte pages, block '${b.idstr}' of ${path} ${b.usedLength} of ${b.pageSize}`);
    }
  });
}

function allPages(region: GuestRegion): Bitmap {
  const map = new Bitmap(region.size / region.pageSize);
  map.setRange(0, map.size);
  return map;
}
