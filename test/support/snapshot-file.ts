// Test snapshots: a file written with SnapshotWriter from populated mappings (each non-zero
// page at its offset with its bitmap bit set, zero pages left as holes), as the snapshot tool
// would write it from a paused guest.
import { Mapping, Bitmap } from '../../src/index.js';
import { SnapshotReader, SnapshotWriter, writeFully } from '../../src/snapshot/index.js';
import { Guest, type Pattern } from '../../src/testing/index.js';
import { isZeroPage } from '../../src/memory/index.js';

export interface SnapshotSource {
  idstr: string;
  mapping: Mapping;
}

/** The device state the snapshot tool writes for reference guests: see src/cli/reference-guest.ts. */
export function guestDeviceState(blocks: { idstr: string; writes: number; threads: number }[]): Uint8Array {
  return Buffer.from(JSON.stringify({ blocks: blocks.map((b) => ({ ...b, guest: true })) }));
}

export function writeSnapshot(path: string, sources: SnapshotSource[], options: { deviceState?: Uint8Array; pageChecksums?: boolean; version?: number } = {}): void {
  const { deviceState, pageChecksums = true, version } = options;
  const writer = SnapshotWriter.create(path, sources.map((s) => ({ idstr: s.idstr, usedLength: s.mapping.length, pageSize: s.mapping.pageSize })), {
    deviceStateLength: deviceState?.length ?? 0,
    pageChecksums,
    version,
  });
  const maps: Bitmap[] = [];
  const sums: number[] = [];
  sources.forEach((s, block) => {
    const { pageSize } = s.mapping;
    const bytes = s.mapping.bytes();
    const pages = s.mapping.length / pageSize;
    const present = new Bitmap(pages);
    let sum = 0;
    for (let page = 0; page < pages; page++) {
      const data = bytes.subarray(page * pageSize, (page + 1) * pageSize);
      let zero = true;
      for (let at = 0; zero && at < pageSize; at += 4096) zero = isZeroPage(data, at);
      if (zero) continue;
      present.set(page);
      sum = SnapshotReader.foldPages(sum, data, pageSize, page, writer.layout.version);
    }
    // contiguous present pages go in one write
    for (let page = present.findNextSet(0); page < pages; ) {
      const end = present.findNextZero(page);
      writeFully(writer.fd, bytes.subarray(page * pageSize, end * pageSize), writer.pageOffset(block, page));
      page = end < pages ? present.findNextSet(end) : pages;
    }
    maps.push(present);
    sums.push(pageChecksums ? sum : 0);
  });
  writer.finish(maps, sums, deviceState);
}

/** Fills `pages` pages of a mapping with a pattern derived from `seed` and the page number. */
export function fillPages(mapping: Mapping, pages: Iterable<number>, seed: number): void {
  const words = new Int32Array(mapping.view());
  const perPage = mapping.pageSize / 4;
  for (const page of pages) {
    for (let w = 0; w < perPage; w += 97) words[page * perPage + w] = (seed * 2654435761 + page * 40503 + w) | 1;
  }
}

/**
 * Runs the reference guest on fresh memory for `ops` operations per thread, stops it and saves
 * it with its device state; returns the ledger's write count at the snapshot.
 */
export async function writeGuestSnapshot(file: string, o: { size: number; threads: number; ops: number; huge?: boolean; pattern?: Pattern }): Promise<number> {
  const source = new Mapping(o.size, { huge: o.huge, name: 'ram0' });
  try {
    const guest = await Guest.start({ memory: { kind: 'mapping', ...source.descriptor }, threads: o.threads, pattern: o.pattern ?? 'random', seed: 9, paused: true });
    await guest.runOps(o.ops);
    const writes = guest.stats().ledgerWrites;
    await guest.stop();
    writeSnapshot(file, [{ idstr: 'ram0', mapping: source }], { deviceState: guestDeviceState([{ idstr: 'ram0', writes, threads: o.threads }]) });
    return writes;
  } finally {
    source.unmap();
  }
}
