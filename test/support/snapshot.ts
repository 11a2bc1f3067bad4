// Snapshot files for tests: written with the real SnapshotWriter, with seeded page contents.
import { mkdtempSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bitmap } from '../../src/memory/index.js';
import { SnapshotReader, SnapshotWriter } from '../../src/snapshot/index.js';
import type { SnapshotBlockSpec } from '../../src/wire/snapshot-format.js';
import { seededRandom } from '../../src/testing/index.js';

export const MiB = 1 << 20;

export interface WrittenSnapshot {
  path: string;
  /** Per block, the saved content of each page (undefined for a zero page, not written). */
  pages: (Buffer | undefined)[][];
  deviceState?: Buffer;
}

export interface SnapshotOptions {
  deviceStateLength?: number;
  pageChecksums?: boolean;
  /** Share of pages that hold data (the rest are zero pages, left as holes). */
  presentShare?: number;
  seed?: number;
  /** The format version to write (default: the newest). */
  version?: number;
}

/** Writes a complete snapshot of `blocks` at `path` (through PATH.partial, as the engine does). */
export function writeSnapshot(path: string, blocks: SnapshotBlockSpec[], options: SnapshotOptions = {}): WrittenSnapshot {
  const random = seededRandom(options.seed ?? 1);
  const writer = SnapshotWriter.create(path, blocks, options);
  const pages = fillPages(writer, blocks, options.presentShare ?? 0.6, random);
  const maps = pages.map((block) => {
    const map = new Bitmap(block.length);
    block.forEach((page, i) => page && map.set(i));
    return map;
  });
  const sums = pages.map((block) => block.reduce((sum, page, i) => (page ? SnapshotReader.foldPages(sum, page, page.length, i, writer.layout.version) : sum), 0));
  const deviceState = options.deviceStateLength ? randomBytes(options.deviceStateLength, random) : undefined;
  writer.finish(maps, sums, deviceState);
  return { path, pages, deviceState };
}

/** Writes seeded pages into a snapshot being written; returns what went where. */
export function fillPages(writer: SnapshotWriter, blocks: SnapshotBlockSpec[], presentShare: number, random: () => number): (Buffer | undefined)[][] {
  return blocks.map((b, block) =>
    Array.from({ length: b.usedLength / b.pageSize }, (_, page) => {
      if (random() >= presentShare) return undefined;
      const data = randomBytes(b.pageSize, random);
      writeSync(writer.fd, data, 0, data.length, writer.pageOffset(block, page));
      return data;
    }),
  );
}

export function randomBytes(n: number, random: () => number): Buffer {
  const out = Buffer.alloc(Math.ceil(n / 4) * 4);
  for (let i = 0; i < out.length; i += 4) out.writeUInt32LE((random() * 2 ** 32) >>> 0, i);
  return out.subarray(0, n);
}

export function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'postcopy-snap-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
