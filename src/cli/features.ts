// `postcopy features`: what this kernel's userfaultfd grants, and what each feature is for.
import { FEATURE_USES, probeFeatures, freeHugePages, type Feature } from '../kernel/index.js';
import { parseOptions } from './options.js';

export function featuresCommand(args: string[]): number {
  const o = parseOptions(args, { json: 'boolean' });
  const report = probeFeatures();
  if (o.json) {
    console.log(JSON.stringify({ ...report, hugePagesFree: freeHugePages() }));
    return report.available ? 0 : 1;
  }
  console.log(`kernel ${report.kernel}`);
  if (!report.available) {
    console.log(`userfaultfd: not available (${report.reason})`);
    return 1;
  }
  console.log(`userfaultfd: opened via ${report.via === 'dev' ? '/dev/userfaultfd' : 'the userfaultfd(2) syscall'}`);
  console.log('');
  const width = Math.max(...Object.keys(report.features).map((f) => f.length));
  for (const [feature, granted] of Object.entries(report.features) as [Feature, boolean][]) {
    console.log(`  ${granted ? 'yes' : ' no'}  ${feature.padEnd(width)}  ${FEATURE_USES[feature]}`);
  }
  console.log('');
  console.log(`ioctls on a registered range: ${report.rangeIoctls.join(' ')}`);
  console.log(`huge pages free (2 MiB): ${freeHugePages()}`);
  return 0;
}
