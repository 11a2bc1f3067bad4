// The working set of a memory file: the pages a VM restored from it faulted on first, in order,
// kept beside it so that the next VM from the same file gets them prefetched before anything
// else. The file names the memory file it was recorded for (device, inode, size and
// modification time) and its regions; a working set left from another file, or from a file
// changed since, is refused.
import { readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { PostcopyError } from '../base/index.js';
import type { GuestRegion } from './regions.js';

const FORMAT = 'postcopy-serve-working-set/1';

interface Identity {
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
}

export interface WorkingSetFile {
  /** (region, page) pairs, in the region's page size, in fault order. */
  pages: number[];
}

function identityOf(memoryFile: string): Identity {
  const st = statSync(memoryFile);
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
}

export function saveWorkingSet(path: string, memoryFile: string, regions: GuestRegion[], pages: number[]): void {
  const body = { format: FORMAT, memoryFile: identityOf(memoryFile), regions: regions.map((r) => [r.offset, r.size, r.pageSize]), pages };
  writeFileSync(path + '.tmp', JSON.stringify(body));
  renameSync(path + '.tmp', path);
}

/** Reads a working set recorded for `memoryFile` as it is now; ERR_WORKING_SET names why not. */
export function loadWorkingSet(path: string, memoryFile: string): WorkingSetFile {
  const refuse = (why: string): never => {
    throw new PostcopyError('ERR_WORKING_SET', `${path}: working set refused: ${why}`);
  };
  let body: { format?: unknown; memoryFile?: Identity; pages?: unknown; regions?: unknown };
  try {
    body = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    return refuse(`not readable as a working set (${(error as Error).message})`);
  }
  if (body.format !== FORMAT) refuse(`format ${JSON.stringify(body.format)}, expected ${FORMAT}`);
  const now = identityOf(memoryFile);
  const then = body.memoryFile;
  if (!then || then.dev !== now.dev || then.ino !== now.ino || then.size !== now.size || then.mtimeMs !== now.mtimeMs) {
    refuse(`stale: recorded for another memory file, or ${memoryFile} changed since`);
  }
  const pages = body.pages;
  if (!Array.isArray(pages) || pages.length % 2 || !pages.every((n) => Number.isSafeInteger(n) && n >= 0)) refuse('the pages are not (region, page) pairs');
  const regions = body.regions as [number, number, number][];
  for (let i = 0; i < (pages as number[]).length; i += 2) {
    const [region, page] = [(pages as number[])[i], (pages as number[])[i + 1]];
    if (!regions[region] || page >= regions[region][1] / regions[region][2]) refuse(`entry ${i / 2} (region ${region} page ${page}) is outside the regions it was recorded with`);
  }
  return { pages: pages as number[] };
}
