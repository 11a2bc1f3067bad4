// `postcopy features`: what this kernel's userfaultfd grants, and what each feature is for.
import { PostcopyError } from '../base/index.js';
import { FEATURE_USES, probeFeatures, freeHugePages, type Feature } from '../kernel/index.js';
import type { CommandEnd } from './output.js';

export function featuresCommand(): CommandEnd {
  const report = probeFeatures();
  const hugePagesFree = freeHugePages();
  const error = report.available ? undefined : new PostcopyError('ERR_POSTCOPY_UNSUPPORTED', `userfaultfd is not available: ${report.reason}`);
  return { report: { ...report, hugePagesFree }, human: humanReport(report, hugePagesFree), error };
}

function humanReport(report: ReturnType<typeof probeFeatures>, hugePagesFree: number): string {
  if (!report.available) return `kernel ${report.kernel}\nuserfaultfd: not available (${report.reason})`;
  const width = Math.max(...Object.keys(report.features).map((f) => f.length));
  return [
    `kernel ${report.kernel}`,
    `userfaultfd: opened via ${report.via === 'dev' ? '/dev/userfaultfd' : 'the userfaultfd(2) syscall'}`,
    '',
    ...(Object.entries(report.features) as [Feature, boolean][]).map(([feature, granted]) => `  ${granted ? 'yes' : ' no'}  ${feature.padEnd(width)}  ${FEATURE_USES[feature]}`),
    '',
    `ioctls on a registered range: ${report.rangeIoctls.join(' ')}`,
    `huge pages free (2 MiB): ${hugePagesFree}`,
  ].join('\n');
}
