// Skip reasons for tests the machine cannot run: no huge pages, a feature the kernel lacks.
import { freeHugePages, probeFeatures, type Feature } from '../../src/kernel/index.js';

export function hugeSkip(pages: number): string | false {
  const free = freeHugePages();
  return free >= pages ? false : `needs ${pages} free 2 MiB huge pages, the kernel has ${free} (as root: echo N > /proc/sys/vm/nr_hugepages)`;
}

export function featureSkip(...features: Feature[]): string | false {
  const report = probeFeatures();
  if (!report.available) return `no userfaultfd: ${report.reason}`;
  const missing = features.filter((f) => !report.features[f]);
  return missing.length ? `kernel ${report.kernel} lacks ${missing.join(', ')}` : false;
}
