// The source's dirty log, behind one interface, chosen by what the kernel offers:
// PAGEMAP_SCAN + UFFD_FEATURE_WP_ASYNC (6.7+: writes are recorded without a fault, one ioctl
// reports and re-arms), else synchronous userfaultfd write-protect (each first write to a
// page since the last sync faults once; the handler records it and lets the writer go on),
// else soft-dirty bits (any kernel, not hugetlb: for shared memory before WP_HUGETLBFS_SHMEM).
import { release } from 'node:os';
import { Mapping, PagemapScanner, PagemapReader, Userfaultfd, hasFeatures } from '../kernel/index.js';
import { TARGET_PAGE_SIZE } from '../base/index.js';

export interface TrackedRange {
  mapping: Mapping;
  /** Called with byte offsets in the mapping of pages written since the last sync. */
  onDirty: (offset: number, length: number) => void;
}

export type DirtyLogKind = 'pagemap-scan' | 'uffd-wp' | 'soft-dirty';
export const DIRTY_LOG_KINDS: readonly DirtyLogKind[] = ['pagemap-scan', 'uffd-wp', 'soft-dirty'];

/**
 * Runs `critical` with every writer of the tracked memory held still (between two writes),
 * and lets them go on after it. The soft-dirty log needs it: it reads the bits and clears them
 * in two steps, and a write between the two would be lost.
 */
export type HoldGuest = (critical: () => void) => void;

export interface DirtyLog {
  readonly kind: DirtyLogKind;
  /**
   * What the pagemap shows of a never-touched page once start() has run: still unpopulated;
   * marked (write-protecting it left a marker, which the pagemap reports as swapped); or
   * populated (start() populated every page to protect it).
   */
  readonly untouchedOnceArmed: 'unpopulated' | 'marked' | 'populated';
  /** Write-protects every tracked range: from now on writes are recorded. */
  start(): void;
  /**
   * Reports the pages written since start() or the previous sync, and re-arms them (not on the
   * `final` sync, after which nothing is written: re-protecting would only cost time).
   */
  sync(options?: { final?: boolean }): number;
  stop(): void;
}

/** The dirty logs this kernel offers for memory like this, best first. */
export function dirtyLogKinds(memory: { shared: boolean; huge: boolean }[]): DirtyLogKind[] {
  const kinds: DirtyLogKind[] = [];
  const writeProtect = hasFeatures('PAGEFAULT_FLAG_WP') && (memory.every((m) => !m.shared && !m.huge) || hasFeatures('WP_HUGETLBFS_SHMEM'));
  if (writeProtect && hasFeatures('WP_ASYNC', 'WP_UNPOPULATED')) kinds.push('pagemap-scan');
  if (writeProtect) kinds.push('uffd-wp');
  if (memory.every((m) => !m.huge) && softDirtyWorks()) kinds.push('soft-dirty');
  return kinds;
}

/**
 * The best dirty log the kernel offers for these ranges, or `prefer` (which must be offered).
 * `holdGuest` is needed for soft-dirty only.
 */
export function createDirtyLog(ranges: TrackedRange[], prefer?: DirtyLogKind, holdGuest?: HoldGuest): DirtyLog {
  const offered = dirtyLogKinds(ranges.map((r) => r.mapping));
  const what = ranges.some((r) => r.mapping.huge) ? 'hugetlb memory' : ranges.some((r) => r.mapping.shared) ? 'shared memory' : 'this memory';
  if (prefer && !offered.includes(prefer)) {
    throw new Error(`dirty log ${prefer}: not possible for ${what} on kernel ${release()} (offered: ${offered.join(', ') || 'none'})`);
  }
  const kind = prefer ?? offered[0];
  switch (kind) {
    case 'pagemap-scan':
      return new PagemapDirtyLog(ranges);
    case 'uffd-wp':
      return new WriteProtectDirtyLog(ranges);
    case 'soft-dirty':
      if (!holdGuest) throw new Error('dirty log soft-dirty: it reads and clears the bits in two steps, so it needs holdGuest (OutgoingOptions.holdGuest) to hold the guest still between them');
      return new SoftDirtyLog(ranges, holdGuest);
    default:
      throw new Error(`no dirty log for ${what} on kernel ${release()}: write-protect needs PAGEFAULT_FLAG_WP${what === 'this memory' ? '' : ' and WP_HUGETLBFS_SHMEM (5.19+)'}, and soft-dirty bits ${what === 'hugetlb memory' ? 'do not exist on hugetlb' : 'do not work here (CONFIG_MEM_SOFT_DIRTY)'}`);
  }
}

let softDirty: boolean | undefined;

/** Whether a written page reads soft-dirty (false without CONFIG_MEM_SOFT_DIRTY: the bit is never set). */
function softDirtyWorks(): boolean {
  if (softDirty !== undefined) return softDirty;
  const probe = new Mapping(TARGET_PAGE_SIZE);
  let reader: PagemapReader | undefined;
  try {
    reader = new PagemapReader(1);
    new Uint8Array(probe.view())[0] = 1;
    softDirty = reader.scanSoftDirty(probe.base, probe.base + probe.length, () => undefined) > 0;
  } catch {
    softDirty = false;
  } finally {
    reader?.close();
    probe.unmap();
  }
  return softDirty;
}

function protectAll(uffd: Userfaultfd, ranges: TrackedRange[]): void {
  for (const { mapping } of ranges) {
    uffd.register(mapping.address, mapping.length, 'wp');
    uffd.writeProtect(mapping.address, mapping.length);
  }
}

class PagemapDirtyLog implements DirtyLog {
  readonly kind = 'pagemap-scan';
  readonly untouchedOnceArmed = 'marked';
  private uffd: Userfaultfd | undefined;
  private scanner: PagemapScanner | undefined;

  constructor(private readonly ranges: TrackedRange[]) {}

  start(): void {
    this.uffd = Userfaultfd.open({ features: ['PAGEFAULT_FLAG_WP', 'WP_ASYNC', 'WP_UNPOPULATED'] });
    this.scanner = new PagemapScanner();
    protectAll(this.uffd, this.ranges);
  }

  sync(options: { final?: boolean } = {}): number {
    let bytes = 0;
    for (const { mapping, onDirty } of this.ranges) {
      bytes += this.scanner!.scanWritten(mapping.base, mapping.base + mapping.length, (start, end) =>
        onDirty(start - mapping.base, end - start), { reprotect: !options.final });
    }
    return bytes;
  }

  stop(): void {
    this.scanner?.close();
    this.uffd?.close();
    this.uffd = undefined;
  }
}

class WriteProtectDirtyLog implements DirtyLog {
  readonly kind = 'uffd-wp';
  readonly untouchedOnceArmed = hasFeatures('WP_UNPOPULATED') ? 'marked' : 'populated';
  private uffd: Userfaultfd | undefined;
  /** Pages written since the last sync: [range index, offset, length] triples. */
  private written: number[] = [];

  constructor(private readonly ranges: TrackedRange[]) {}

  start(): void {
    const needsShared = this.ranges.some((r) => r.mapping.shared || r.mapping.huge);
    const features: ('PAGEFAULT_FLAG_WP' | 'WP_UNPOPULATED' | 'WP_HUGETLBFS_SHMEM')[] = ['PAGEFAULT_FLAG_WP'];
    if (this.untouchedOnceArmed === 'marked') features.push('WP_UNPOPULATED');
    else for (const { mapping } of this.ranges) mapping.madvise(0, mapping.length, 'populateWrite');
    if (needsShared) features.push('WP_HUGETLBFS_SHMEM');
    const uffd = (this.uffd = Userfaultfd.open({ features }));
    protectAll(uffd, this.ranges);
    uffd.onEvents((batch) => {
      for (let i = 0; i < batch.count; i++) {
        if (!batch.isWriteProtect(i)) continue;
        const address = batch.address(i);
        const index = this.ranges.findIndex((r) => address >= r.mapping.base && address < r.mapping.base + r.mapping.length);
        if (index < 0) continue;
        const { mapping } = this.ranges[index];
        const offset = address - mapping.base - ((address - mapping.base) % mapping.pageSize);
        this.written.push(index, offset, mapping.pageSize);
        uffd.tryWriteProtect(mapping.base + offset, mapping.pageSize, 0); // un-protect and wake the writer
      }
    });
  }

  sync(options: { final?: boolean } = {}): number {
    const uffd = this.uffd!;
    const written = this.written;
    this.written = [];
    let bytes = 0;
    for (let i = 0; i < written.length; i += 3) {
      const { mapping, onDirty } = this.ranges[written[i]];
      // re-arm before reporting: a write after this point faults again and is not lost
      if (!options.final) uffd.writeProtect(mapping.base + written[i + 1], written[i + 2]);
      onDirty(written[i + 1], written[i + 2]);
      bytes += written[i + 2];
    }
    return bytes;
  }

  stop(): void {
    this.uffd?.close();
    this.uffd = undefined;
  }
}

/**
 * Soft-dirty bits: start() clears them; a sync reads them for every tracked range and clears
 * them again, with the writers held still (`holdGuest`) so that no write falls between the
 * read and the clear. clear_refs clears (and write-protects) the page table entries of the
 * whole process, not only the tracked ranges: the source process only tracks guest memory,
 * and its own memory pays one write fault per page after each sync, nothing more. Pages never
 * touched have no page table entry and read clean (they hold zeros, as sent).
 */
class SoftDirtyLog implements DirtyLog {
  readonly kind = 'soft-dirty';
  readonly untouchedOnceArmed = 'unpopulated';
  private reader: PagemapReader | undefined;

  constructor(private readonly ranges: TrackedRange[], private readonly holdGuest: HoldGuest) {}

  start(): void {
    this.reader = new PagemapReader();
    PagemapReader.clearSoftDirty();
  }

  sync(options: { final?: boolean } = {}): number {
    let bytes = 0;
    const readAndClear = () => {
      for (const { mapping, onDirty } of this.ranges) {
        bytes += this.reader!.scanSoftDirty(mapping.base, mapping.base + mapping.length, (start, end) =>
          onDirty(start - mapping.base, end - start));
      }
      if (!options.final) PagemapReader.clearSoftDirty();
    };
    // the final sync comes with the guest paused: nothing to hold, nothing to re-arm
    if (options.final) readAndClear();
    else this.holdGuest(readAndClear);
    return bytes;
  }

  stop(): void {
    this.reader?.close();
    this.reader = undefined;
  }
}
