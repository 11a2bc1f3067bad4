// What the running kernel's userfaultfd offers, as a table. Users run older kernels than the
// one we develop on, so every part of postcopy checks here before relying on a feature.
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import { addon } from './addon.js';
import { FEATURES, IOCTLS, REGISTER_MODES, maskToNames, type Feature, type Ioctl } from './constants.js';

export interface FeatureReport {
  kernel: string;
  /** False when no userfaultfd could be opened at all; `reason` says why. */
  available: boolean;
  reason?: string;
  via?: 'dev' | 'syscall';
  features: Record<Feature, boolean>;
  /** ioctls on the descriptor itself (API, REGISTER, UNREGISTER). */
  ioctls: Record<Ioctl, boolean>;
  /** ioctls the kernel allows on an anonymous range registered for MISSING faults. */
  rangeIoctls: Ioctl[];
}

let cached: FeatureReport | undefined;

/** Asks the kernel (once per process) with UFFDIO_API features=0: it answers with all it has. */
export function probeFeatures(): FeatureReport {
  if (cached) return cached;
  const none = <K extends string>(table: Record<K, unknown>) =>
    Object.fromEntries(Object.keys(table).map((k) => [k, false])) as Record<K, boolean>;
  const report: FeatureReport = { kernel: release(), available: false, features: none(FEATURES), ioctls: none(IOCTLS), rangeIoctls: [] };
  try {
    const probe = new addon.Userfaultfd({});
    try {
      const api = probe.api(0n);
      report.available = true;
      report.via = probe.via;
      for (const f of maskToNames(api.features, FEATURES)) report.features[f] = true;
      for (const i of maskToNames(api.ioctls, IOCTLS)) report.ioctls[i] = true;
      const page = new addon.Mapping('anonymous', addon.pageSize);
      try {
        report.rangeIoctls = maskToNames(probe.register(page.address, page.length, REGISTER_MODES.missing), IOCTLS);
      } finally {
        page.unmap();
      }
    } finally {
      probe.close();
    }
  } catch (error) {
    report.reason = (error as Error).message;
  }
  return (cached = report);
}

export function hasFeatures(...features: Feature[]): boolean {
  const report = probeFeatures();
  return features.every((f) => report.features[f]);
}

/** Huge pages the kernel has reserved and free (HugePages_Free in /proc/meminfo). */
export function freeHugePages(): number {
  try {
    const meminfo = readFileSync('/proc/meminfo', 'utf8');
    const match = /HugePages_Free:\s+(\d+)/.exec(meminfo);
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}
