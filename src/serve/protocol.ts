// What the page server's main thread and a VM's pager worker say to each other.
import type { MappingDescriptor } from '../kernel/index.js';
import type { GuestRegion } from './regions.js';
import type { RemoteSourceOptions } from './remote-staging.js';

/** A file on this host that a VM's pages come from. */
export type FileSourceSpec =
  /** Firecracker's memory file: raw guest memory, the regions at their offsets, holes read as zeros. */
  | { kind: 'file'; path: string }
  /** This package's snapshot file (checked whole before any VM is served): block i is region i. */
  | { kind: 'snapshot'; path: string };

/** Where a VM's pages come from: a file here, or another host's memory file (`serve-pages` there). */
export type PageSourceSpec = FileSourceSpec | ({ kind: 'remote' } & RemoteSourceOptions);

/** What a pager worker reads: a file, or staging memory a migration from another host fills (region i: regions[i]). */
export type WorkerSourceSpec = FileSourceSpec | { kind: 'staging'; regions: MappingDescriptor[] };

export type PrefetchMode = 'none' | 'sequential' | 'working-set';

/**
 * How a page was placed, for the latency histogram: from the file, from staging (a remote
 * source), or zeros (a hole). A removed range faults no more: it is unregistered.
 */
export type PageSourceLabel = 'file' | 'remote' | 'zero';

export interface VmTask {
  vm: number;
  /** The VMM's userfaultfd: the worker adopts it (and closes it when done). */
  uffdFd: number;
  regions: GuestRegion[];
  source: WorkerSourceSpec;
  prefetch: PrefetchMode;
  /** Pages to prefetch first, as (region, page) pairs in the region's page size. */
  workingSet: number[];
  recordWorkingSet: boolean;
  /** A fault deferred by EAGAIN this long (the VMM's events never came): the VM fails. */
  eagainBoundMs: number;
}

/** Counters since the last report, and latency samples (µs) by how the page was placed. */
export interface VmCounters {
  faults: number;
  placedByFault: number;
  placedByPrefetch: number;
  removeEvents: number;
  removedPages: number;
  eagainRetries: number;
  eexistWakes: number;
  bytesRead: number;
  latency: Record<PageSourceLabel, number[]>;
}

export type FromVm =
  /** Every progress interval, and at the end. `pending`: faults waiting now. */
  | { type: 'progress'; placedPages: number; totalPages: number; pending: number; counters: VmCounters }
  | { type: 'first-fault'; ms: number }
  | { type: 'all-present'; ms: number }
  /** The VM is gone (ESRCH, or its userfaultfd hung up): nothing to serve any more. */
  | { type: 'gone'; reason: string }
  /** Its pages can no longer be served: the VM must be ended. */
  | { type: 'failed'; message: string; code: string }
  /** When the pager ends, if it recorded: the pages faulted on, in order, as (region, page) pairs. */
  | { type: 'working-set'; pages: number[] }
  | { type: 'stopped' };

export type ToVm =
  | { type: 'stop' }
  /** Staging is complete (every page arrived): prefetch the rest into the VM now. */
  | { type: 'prefetch'; mode: PrefetchMode };

export function emptyCounters(): VmCounters {
  return { faults: 0, placedByFault: 0, placedByPrefetch: 0, removeEvents: 0, removedPages: 0, eagainRetries: 0, eexistWakes: 0, bytesRead: 0, latency: { file: [], remote: [], zero: [] } };
}
