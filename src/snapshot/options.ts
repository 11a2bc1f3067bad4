// What a caller gives a background snapshot, and what it reports.
import type { Mapping } from '../kernel/index.js';

export interface SnapshotBlock {
  /** The block's name in the file (1..255 bytes). */
  idstr: string;
  mapping: Mapping;
  /** Bytes of the mapping to save (default: all of it). */
  length?: number;
}

/**
 * How pages never touched are kept from escaping the protection: 'kernel' protects them
 * as they are (UFFD_FEATURE_WP_UNPOPULATED, 6.4+); 'populate' maps them first (as QEMU does);
 * 'auto' (default) uses the kernel's feature when it has it.
 */
export type UnpopulatedMode = 'auto' | 'kernel' | 'populate';

export interface SnapshotOptions {
  /** The snapshot file; written as PATH.partial and renamed when complete. */
  path: string;
  blocks: SnapshotBlock[];
  /** Stops every guest thread (resolves when none runs). */
  pauseGuest: () => void | Promise<void>;
  resumeGuest: () => void | Promise<void>;
  /** Device state saved with the memory, taken while the guest is paused. */
  deviceState?: Uint8Array | (() => Uint8Array | Promise<Uint8Array>);
  unpopulated?: UnpopulatedMode;
  /** A checksum of each block's page data in the trailer, read back once the guest is free (default true). */
  pageChecksums?: boolean;
  /**
   * 4 KiB pages a write fault saves at once: the faulting page and the still-unsaved pages
   * around it in an aligned window (default 64, at most 256; 1 saves only the faulting page,
   * as QEMU does).
   */
  claimPages?: number;
  /** Bound on memory holding pages copied aside by write faults (default 64 MiB). */
  asideBytes?: number;
  progressIntervalMs?: number;
  /** Fail (un-protecting everything) when no page was saved for this long (default 30). */
  stallSeconds?: number;
  /** Called while the guest is paused and protected (tests take their reference copy here). */
  atProtection?: () => void | Promise<void>;
}

export interface SnapshotProgress {
  pagesSaved: number;
  pagesTotal: number;
  writeFaults: number;
  bytesWritten: number;
  /** Bytes of guest memory saved per second since the guest resumed. */
  gbPerS: number;
}

export interface SnapshotReport {
  file: string;
  complete: true;
  bytes: number;
  /** From the end of the pause until every page is saved and un-protected (the floor's measure). */
  seconds: number;
  gb_per_s: number;
  /** After that, with the guest free: page checksums read back, bitmaps, syncs, trailer, rename. */
  finish_ms: number;
  checksum_ms: number;
  /** The one pause: guest stopped, device state, protection. */
  pause_ms: number;
  unpopulated: 'kernel' | 'populate';
  pages: { total: number; written: number; zero: number; by_fault: number; by_walker: number };
  /**
   * Write faults: the time from reading the fault to un-protecting the page (the guest's own
   * wait adds the kernel's wake-up); aside_full: faults that had to write before going on.
   */
  write_faults: { count: number; p50_us: number; p99_us: number; max_us: number; histogram: number[]; aside_full: number };
  /** The longest time a guest thread could have been held: the pause, or the slowest fault. */
  longest_stall_ms: number;
  bytes_written: number;
  file_size: number;
  device_state_bytes: number;
  page_checksums: boolean;
}
