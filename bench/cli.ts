// The bench, compiled: `npm run bench [-- --json] [--mib N] [--only a,b] [--runs N] [--pause-ms MS]
// [--cpu LIST] [--qemu [--qemu-anchor DIR] [--qemu-trace]]` runs scripts/bench.mjs, which builds
// what is missing and then runs this.
//
// Compiles the plain-C floor (../shared/bench/uffd-floor.c, or $POSTCOPY_FLOOR_SRC), then for
// each run and each scenario: the floor's scenario it is compared with, then ours in a fresh
// `node dist-test/bench/main.js <scenario>` process, same size, same pause before each
// (bench/runner.ts). Prints the best run of each side (lowest p50 / highest GB/s, or as the
// scenario table says) with their ratio, and under it the medians, spreads and their ratio
// (bench/report.ts). Only ratios from one invocation mean anything: this machine is noisy.
// --cpu LIST runs both sides under `taskset -c LIST`, to diagnose: --cpu 0 removes the
// cross-CPU wake-up mode that makes fault latency bimodal here, but it also crowds Node's
// helper threads onto that CPU (see bench/README.md).
// The postcopy-*, snapshot* and restore-* scenarios are compared with the floor scenario named
// in their `floor` field (bench/scenarios.ts).
// The whole-migration scenarios have no floor: with --qemu, QEMU 7.2's own postcopy runs in the
// floor's turn (../shared/anchors/qemu, bench/qemu.ts), its figures beside ours, not a ratio.
// With --json, stdout carries nothing but one JSON object per scenario per line.
import { prepareQemu, qemuAnchor, type QemuSetup } from './qemu.js';
import { buildRows, printJson, printTable } from './report.js';
import { installCleanup, log, root, runBench, type BenchOptions } from './runner.js';
import { SCENARIOS } from './scenarios.js';

function usage(message?: string): never {
  if (message) process.stderr.write(`bench: ${message}\n`);
  process.stderr.write(
    'usage: npm run bench -- [--json] [--mib N] [--only a,b] [--runs N] [--pause-ms MS] [--cpu LIST]\n' +
      '                        [--qemu [--qemu-anchor DIR] [--qemu-trace]]\n' +
      `scenarios: ${SCENARIOS.map((s) => s.name).join(', ')}\n`,
  );
  process.exit(2);
}

function parseOptions(args: string[]): BenchOptions {
  const options: BenchOptions = { json: false, mib: 256, runs: 5, only: null, cpu: null, pauseMs: 1000, qemu: false, qemuAnchor: null, qemuTrace: false };
  const value = (i: number): string => (i + 1 < args.length ? args[i + 1] : usage(`${args[i]} needs a value`));
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--json') options.json = true;
    else if (a === '--mib') options.mib = Number(value(i++));
    else if (a === '--runs') options.runs = Number(value(i++));
    else if (a === '--cpu') options.cpu = value(i++);
    else if (a === '--pause-ms') options.pauseMs = Number(value(i++));
    else if (a === '--only') options.only = value(i++).split(',').map((s) => s.trim()).filter(Boolean);
    else if (a === '--qemu') options.qemu = true;
    else if (a === '--qemu-anchor') [options.qemu, options.qemuAnchor] = [true, value(i++)];
    else if (a === '--qemu-trace') [options.qemu, options.qemuTrace] = [true, true];
    else if (a === '-h' || a === '--help') usage();
    else usage(`unknown option ${a}`);
  }
  if (!Number.isInteger(options.mib) || options.mib < 2 || options.mib % 2) usage('--mib must be an even integer >= 2 (huge-2m uses 2 MiB pages)');
  if (!Number.isInteger(options.runs) || options.runs < 1) usage('--runs must be a positive integer');
  if (!Number.isInteger(options.pauseMs) || options.pauseMs < 0) usage('--pause-ms must be a whole number of milliseconds');
  if (options.cpu !== null && !/^[0-9][0-9,-]*$/.test(options.cpu)) usage('--cpu takes a CPU list such as 0 or 0,1');
  for (const name of options.only ?? []) if (!SCENARIOS.some((s) => s.name === name)) usage(`unknown scenario '${name}'`);
  const migrations = SCENARIOS.filter((s) => s.kind === 'migration').map((s) => s.name);
  if (options.qemu && options.only && !options.only.some((name) => migrations.includes(name))) usage(`--qemu runs beside ${migrations.join(' and ')}: select one`);
  return options;
}

/** With --qemu, everything QEMU's runs need, before the first run; exits 1 saying what is missing. */
function qemuSetup(options: BenchOptions): QemuSetup | null {
  if (!options.qemu) return null;
  try {
    return prepareQemu(qemuAnchor(options.qemuAnchor, root), options.qemuTrace, log);
  } catch (error) {
    log(`bench: --qemu: ${(error as Error).message}`);
    process.exit(1);
  }
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const selected = SCENARIOS.filter((s) => !options.only || options.only.includes(s.name));
  installCleanup();
  const results = await runBench(options, selected, qemuSetup(options));
  if (!results) process.exit(1);
  const rows = buildRows(selected, results, options);
  if (options.json) printJson(rows);
  else printTable(rows, results, options);
  process.exit(results.failed ? 1 : 0);
}

main().catch((error: Error) => {
  process.stderr.write(`bench: ${error.stack ?? error.message}\n`);
  process.exit(1);
});
