#!/usr/bin/env node
// `npm run test:vm`: builds the TypeScript (and the addon if missing), then boots Debian's
// kernels in QEMU and runs the kernel-layer tests, migrations and a snapshot inside each.
// The logic is in test/vm/host.ts; options: --kernel 6.1 (repeatable), --accel kvm|tcg|auto,
// --timeout S (per kernel), --steps features,tests,migration,snapshot,serve.
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

if (!existsSync(join(root, 'build/Release/postcopy.node'))) run('npx', ['node-gyp', 'rebuild']);
rmSync(join(root, 'dist-test'), { recursive: true, force: true }); // no stale test in the image
run('npx', ['tsc', '-p', 'tsconfig.test.json']);
run(process.execPath, [join(root, 'dist-test/test/vm/host.js'), ...process.argv.slice(2)]);
