#!/usr/bin/env node
// `npm test`: builds the addon if missing, compiles src, test and bench afresh into dist-test/
// (emptied first, so a deleted test's old .js never runs), reserves 2 MiB huge pages for the
// hugetlb tests when running as root (restoring the old reservation afterwards), then runs
// every test with node:test. Tests that still cannot run (not root, old kernel) skip and say
// why. Arguments name test files (dist-test/test/<group>/<name>.test.js) to run only those.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const OUT = join(root, 'dist-test');
const NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages';
const HUGE_PAGES_WANTED = Number(process.env.POSTCOPY_TEST_HUGEPAGES ?? 96);

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function testFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return e.name === 'vm' ? [] : testFiles(path); // test:vm runs those, in VMs
    return e.name.endsWith('.test.js') ? [relative(root, path)] : [];
  }).sort();
}

if (!existsSync(join(root, 'build/Release/postcopy.node'))) run('npx', ['node-gyp', 'rebuild']);
rmSync(OUT, { recursive: true, force: true });
run('npx', ['tsc', '-p', 'tsconfig.test.json']);

let restore;
try {
  const old = Number(readFileSync(NR_HUGEPAGES, 'utf8'));
  const free = Number(/HugePages_Free:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  if (free < HUGE_PAGES_WANTED) {
    writeFileSync(NR_HUGEPAGES, String(old + HUGE_PAGES_WANTED - free));
    restore = () => writeFileSync(NR_HUGEPAGES, String(old));
    console.log(`reserved huge pages: nr_hugepages ${old} -> ${readFileSync(NR_HUGEPAGES, 'utf8').trim()} (restored afterwards)`);
  }
} catch (error) {
  console.log(`huge pages not reserved (${error.code ?? error.message}): hugetlb tests will skip`);
}

const args = process.argv.slice(2);
const files = args.length ? args : testFiles(join(OUT, 'test'));
const result = spawnSync(process.execPath, ['--test', '--test-reporter=spec', ...files], {
  cwd: root,
  stdio: 'inherit',
});
restore?.();
process.exit(result.status ?? 1);
