#!/usr/bin/env node
// `npm run soak -- --minutes N [--seed S]`: the torture suite's seeded loop of real two-process
// migrations (test/torture.test.ts), for as long as asked. Builds first, reserves huge pages
// like `npm test`, prints the seed so that a failure can be replayed.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const option = (name) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
for (let i = 0; i < args.length; i += 2) {
  if (!['--minutes', '--seed'].includes(args[i]) || args[i + 1] === undefined) {
    console.error('usage: npm run soak -- --minutes N [--seed S]');
    process.exit(2);
  }
}
const minutes = Number(option('minutes') ?? 10);
if (!(minutes > 0)) {
  console.error(`--minutes '${option('minutes')}' must be a positive number`);
  process.exit(2);
}
const env = { ...process.env, POSTCOPY_TORTURE_MINUTES: String(minutes) };
if (option('seed') !== undefined) env.POSTCOPY_TORTURE_SEED = option('seed');
const result = spawnSync(process.execPath, [join(root, 'scripts/test.mjs'), 'dist-test/test/e2e/torture.test.js'], { cwd: root, stdio: 'inherit', env });
process.exit(result.status ?? 1);
