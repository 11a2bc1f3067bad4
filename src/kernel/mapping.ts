// Guest memory: anonymous, shared memfd and hugetlb mappings, and views over them that any
// thread can open by address.
import { addon, type MappingKind, type NativeMapping } from './addon.js';
import { MADVISE, type Advice } from './constants.js';
import { trackMapping, untrackMapping } from './live-mappings.js';

export interface MappingOptions {
  /** Shared memfd memory (MAP_SHARED) instead of private anonymous memory. */
  shared?: boolean;
  /** 2 MiB hugetlb pages. */
  huge?: boolean;
  /** Name of the memfd (visible in /proc/PID/maps). */
  name?: string;
}

/** What a worker thread needs to reach a mapping: plain data, postable to a Worker. */
export interface MappingDescriptor {
  address: bigint;
  length: number;
}

export class Mapping {
  readonly kind: MappingKind;
  readonly address: bigint;
  /** The address as a number: exact (user addresses are below 2^47), and free on the hot path. */
  readonly base: number;
  readonly length: number;
  readonly pageSize: number;
  private readonly native: NativeMapping;
  /** Kept here, not asked of the addon: Userfaultfd reads it on every placement. */
  private live = true;
  private readonly liveRef: WeakRef<Mapping>;

  constructor(length: number, options: MappingOptions = {}) {
    this.kind = options.shared ? (options.huge ? 'memfd-hugetlb' : 'memfd') : options.huge ? 'hugetlb' : 'anonymous';
    this.native = new addon.Mapping(this.kind, length, options.name ?? 'postcopy');
    this.address = this.native.address;
    this.base = Number(this.address);
    this.length = length;
    this.pageSize = this.native.pageSize;
    this.liveRef = trackMapping(this);
  }

  get shared(): boolean {
    return this.kind === 'memfd' || this.kind === 'memfd-hugetlb';
  }
  get huge(): boolean {
    return this.kind === 'hugetlb' || this.kind === 'memfd-hugetlb';
  }
  get mapped(): boolean {
    return this.live;
  }
  get descriptor(): MappingDescriptor {
    return { address: this.address, length: this.length };
  }

  /** An ArrayBuffer over [offset, offset+length) of the mapping, no copy. */
  view(offset = 0, length = this.length - offset): ArrayBuffer {
    return this.native.view(offset, length);
  }
  bytes(offset = 0, length = this.length - offset): Uint8Array {
    return new Uint8Array(this.native.view(offset, length));
  }

  madvise(offset: number, length: number, advice: Advice): void {
    this.native.madvise(offset, length, MADVISE[advice]);
  }

  /** Frees the backing pages of a memfd range (shared/hugetlb: MADV_DONTNEED keeps the page cache). */
  punchHole(offset: number, length: number): void {
    this.native.punchHole(offset, length);
  }

  /**
   * Drops the pages of a range so that the next access faults as MISSING again: hole punch
   * for shared memory (which also drops the page cache), MADV_DONTNEED for private memory.
   */
  discard(offset: number, length: number): void {
    if (this.shared) this.punchHole(offset, length);
    else this.madvise(offset, length, 'dontneed');
  }

  /**
   * `discard` for many ranges ([offset, length] in bytes). Private memory: one process_madvise
   * per 1024 ranges (Linux 6.13+; 6.16+ flushes the TLB once per call, not once per range),
   * else one madvise per range. Shared memory: one hole punch per range. Returns the syscalls made.
   */
  discardRanges(ranges: readonly (readonly [number, number])[]): number {
    if (this.shared) {
      for (const [offset, length] of ranges) this.punchHole(offset, length);
      return ranges.length;
    }
    const pairs = new Float64Array(ranges.length * 2);
    for (let i = 0; i < ranges.length; i++) {
      pairs[2 * i] = ranges[i][0];
      pairs[2 * i + 1] = ranges[i][1];
    }
    return this.native.madviseRanges(pairs, MADVISE.dontneed);
  }

  /**
   * Releases the memory. Views still alive in any thread keep the address range reserved (as
   * fresh zero memory, no longer registered with any userfaultfd) until they are collected,
   * so a stale view never crashes the process. Userfaultfd range calls refuse the range from
   * here on (the kernel has dropped its registration).
   */
  unmap(): void {
    // first: the addon gives the range up even if it then throws
    this.live = false;
    untrackMapping(this.liveRef);
    this.native.unmap();
  }
}

/** An ArrayBuffer over a live mapping of this process, from any thread (e.g. a guest worker). */
export function attachMapping(address: bigint, length: number): ArrayBuffer {
  return addon.Mapping.attach(address, length);
}

/** The kernel thread id of the calling thread (what UFFD_FEATURE_THREAD_ID reports). */
export function threadId(): number {
  return addon.gettid();
}
