// Where a restore puts each block of a snapshot: one fresh mapping per block, in the file's
// block order, checked before anything is read so that no byte lands outside a block.
import type { Mapping } from '../kernel/index.js';
import type { Bitmap } from '../memory/index.js';
import type { SnapshotReader } from './file.js';
import { PostcopyError } from '../base/index.js';

/** Throws (ERR_RESTORE_TARGET) naming the block and the mismatch unless each target fits its block. */
export function checkTargets(reader: SnapshotReader, targets: readonly Mapping[]): void {
  const { blocks, file } = reader;
  if (targets.length !== blocks.length) {
    throw new PostcopyError('ERR_RESTORE_TARGET', `${file} has ${blocks.length} block(s) (${blocks.map((b) => `'${b.idstr}'`).join(', ')}), ${targets.length} target mapping(s) were given`);
  }
  blocks.forEach((block, i) => {
    const target = targets[i];
    const what = `block '${block.idstr}' (#${i}) of ${file}`;
    if (!target.mapped) throw new PostcopyError('ERR_RESTORE_TARGET', `${what}: its target mapping is unmapped`);
    if (target.length !== block.usedLength) throw new PostcopyError('ERR_RESTORE_TARGET', `${what} is ${block.usedLength} bytes, its target mapping ${target.length}`);
    if (target.pageSize !== block.pageSize) {
      throw new PostcopyError('ERR_RESTORE_TARGET', `${what} has ${block.pageSize}-byte pages, its target mapping ${target.pageSize}-byte pages (a 2 MiB block needs hugetlb memory)`);
    }
  });
}

/**
 * The run of pages from `start` (at most `maxPages`, below `limit`) whose `present` bit equals
 * that of `start`: one positional read, or one hole.
 */
export function runFrom(present: Bitmap, start: number, limit: number, maxPages: number): { end: number; present: boolean } {
  const isPresent = present.get(start);
  const change = isPresent ? present.findNextZero(start) : present.findNextSet(start);
  return { end: Math.min(change, limit, start + maxPages), present: isPresent };
}
