#!/usr/bin/env node
// `npm run bench [-- --json] [--mib N] [--only a,b] [--runs N] [--cpu LIST] [--qemu]`
//
// Builds what is missing (the addon with node-gyp, then TypeScript with tsc), then runs the
// compiled bench, dist-test/bench/cli.js, with the same arguments: see bench/cli.ts for what it does
// and bench/README.md for how to read it. Signals are passed on to the bench, which cleans up
// (huge pages, temporary files, the running child) and exits 128 + the signal's number.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'dist-test/bench/cli.js');
const log = (line) => process.stderr.write(line + '\n');

function runToStderr(cmd, args, what) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: ['ignore', 2, 2] });
  return r.status === 0 ? null : `${what} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`})`;
}

if (!existsSync(join(root, 'build/Release/postcopy.node'))) {
  log('bench: building the addon (node-gyp rebuild)');
  const error = runToStderr('npx', ['node-gyp', 'rebuild'], 'node-gyp rebuild');
  if (error) {
    log(`bench: ${error}`);
    process.exit(1);
  }
}
log('bench: compiling TypeScript (tsc -p tsconfig.test.json)');
const error = runToStderr('npx', ['tsc', '-p', 'tsconfig.test.json'], 'tsc');
// tsc emits despite type errors; an error elsewhere in the tree must not stop the bench.
if (error) log(`bench: warning: ${error}; continuing with what it emitted`);
if (!existsSync(cli)) {
  log('bench: dist-test/bench/cli.js is missing after tsc');
  process.exit(1);
}

// stdout and stderr go straight through: with --json, stdout carries only the bench's JSON lines
const child = spawn(process.execPath, [cli, ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' });
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  });
}
child.on('error', (e) => {
  log(`bench: ${e.message}`);
  process.exit(1);
});
child.on('close', (code, signal) => process.exit(code ?? 128 + (constants.signals[signal] ?? 0)));
