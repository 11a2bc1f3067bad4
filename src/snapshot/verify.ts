// The page data of a complete snapshot against the trailer's per-block page checksums: every
// present page is read (runs of present pages, in large sequential reads; holes are skipped,
// they hold nothing) and folded into its block's sum.
import { foldPageRun } from './page-checksums.js';
import type { Bitmap } from '../memory/bitmap.js';
import type { SnapshotReader } from './file.js';

export interface PageDataCheck {
  block: number;
  idstr: string;
  /** Pages read and folded (the block's present pages). */
  present: number;
  /** From the trailer. */
  expected: number;
  /** Over the pages as they are in the file. */
  actual: number;
  ok: boolean;
}

/** Large enough that reads run at disk speed; one 2 MiB page always fits. */
const READ_BYTES = 8 << 20;

/** What folding needs of a block: its page size and which pages are present. */
export interface PresentPages {
  pageSize: number;
  pages: number;
  present: Bitmap;
}

/**
 * Each block's page checksum over its present pages, read with `read(block, page, count, into)`
 * in runs of present pages (holes hold nothing). The snapshot engine computes the trailer's sums
 * this way from its own file once the guest is free; verifyPageData checks them the same way.
 */
export function foldPresentPages(version: number, blocks: PresentPages[], read: (block: number, page: number, count: number, into: Buffer) => void): number[] {
  const buffer = Buffer.allocUnsafe(READ_BYTES);
  return blocks.map((b, block) => {
    const perRead = Math.floor(buffer.length / b.pageSize);
    let sum = 0;
    for (let page = b.present.findNextSet(0); page < b.pages; page = b.present.findNextSet(page)) {
      const count = Math.min(b.present.findNextZero(page) - page, perRead);
      read(block, page, count, buffer);
      sum = foldPageRun(version, sum, buffer.subarray(0, count * b.pageSize), b.pageSize, page);
      page += count;
    }
    return sum;
  });
}

/**
 * Checks every block's page data. Only the block is named on a mismatch: the trailer keeps one
 * sum per block, so finding the page would need a checksum per page.
 */
export function verifyPageData(reader: SnapshotReader): PageDataCheck[] {
  const sums = foldPresentPages(reader.layout.version, reader.blocks, (block, page, count, into) => reader.readPages(block, page, count, into));
  return reader.blocks.map((b, block) => ({
    block, idstr: b.idstr, present: b.present.count(), expected: b.pageChecksum, actual: sums[block], ok: sums[block] === b.pageChecksum,
  }));
}
