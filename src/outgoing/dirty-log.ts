// The source's dirty log, behind one interface, chosen by what the kernel offers:
// PAGEMAP_SCAN + UFFD_FEATURE_WP_ASYNC (6.7+: writes are recorded without a fault, one ioctl
// reports and re-arms), else synchronous userfaultfd write-protect (each first write to a
// page since the last sync faults once; the handler records it and lets the writer go on).
import { PagemapScanner, Userfaultfd, hasFeatures, type Mapping } from '../kernel/index.js';

export interface TrackedRange {
  mapping: Mapping;
  /** Called with byte offsets in the mapping of pages written since the last sync. */
  onDirty: (offset: number, length: number) => void;
}

export interface DirtyLog {
  readonly kind: 'pagemap-scan' | 'uffd-wp';
  /** Write-protects every tracked range: from now on writes are recorded. */
  start(): void;
  /**
   * Reports the pages written since start() or the previous sync, and re-arms them (not on the
   * `final` sync, after which nothing is written: re-protecting would only cost time).
   */
  sync(options?: { final?: boolean }): number;
  stop(): void;
}

export function createDirtyLog(ranges: TrackedRange[], prefer?: DirtyLog['kind']): DirtyLog {
  const asyncOk = hasFeatures('PAGEFAULT_FLAG_WP', 'WP_ASYNC', 'WP_UNPOPULATED') && ranges.every((r) => !r.mapping.shared && !r.mapping.huge || hasFeatures('WP_HUGETLBFS_SHMEM'));
  if (asyncOk && prefer !== 'uffd-wp') return new PagemapDirtyLog(ranges);
  return new WriteProtectDirtyLog(ranges);
}

function protectAll(uffd: Userfaultfd, ranges: TrackedRange[]): void {
  for (const { mapping } of ranges) {
    uffd.register(mapping.address, mapping.length, 'wp');
    uffd.writeProtect(mapping.address, mapping.length);
  }
}

class PagemapDirtyLog implements DirtyLog {
  readonly kind = 'pagemap-scan';
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
  private uffd: Userfaultfd | undefined;
  /** Pages written since the last sync: [range index, offset, length] triples. */
  private written: number[] = [];

  constructor(private readonly ranges: TrackedRange[]) {}

  start(): void {
    const needsShared = this.ranges.some((r) => r.mapping.shared || r.mapping.huge);
    const features: ('PAGEFAULT_FLAG_WP' | 'WP_UNPOPULATED' | 'WP_HUGETLBFS_SHMEM')[] = ['PAGEFAULT_FLAG_WP'];
    if (hasFeatures('WP_UNPOPULATED')) features.push('WP_UNPOPULATED');
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
