// Runs inside the test VM (started by test/vm/init.sh, from /postcopy): the feature table, the
// kernel-layer tests, a small migration per dirty log the kernel offers and one on hugetlb
// blocks, a background snapshot and a lazy restore, and the page server (serve-step.ts), each in
// a child process with a time bound. Prints one line `POSTCOPY-VM-RESULT {json}` (a VmResult) for the host
// (test/vm/host.ts) to read.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { freeHugePages, probeFeatures, type FeatureReport } from '../../src/kernel/index.js';
import { dirtyLogKinds } from '../../src/outgoing/index.js';
import { KERNEL_TESTS, RESULT_MARK, VM_TEST_ENV, tapCounts, type StepResult, type TestCounts, type VmResult } from './result.js';

const CLI = 'dist-test/src/cli/main.js';
const SIZE_MIB = 32;
const SIZE = `${SIZE_MIB}M`;
/**
 * The postcopy stream's cap in every migration, so that the resumed guest must ask for pages.
 * Under TCG the destination's guest runs only seconds after RUN (a worker reads the ledger,
 * then one starts per thread: 3.9-9 s measured with the host loaded), and the uncapped stream
 * (2-4 MiB/s there) often ended first: 0 pages requested in whole runs. At 2 MiB/s one
 * migration of 15 still saw none (13 s of postcopy); at 1.5 the ~28 MiB left after 1 s of
 * precopy take ~19 s.
 */
const POSTCOPY_MAX_MIBS = 1.5;
/**
 * The liveness bound of every migration (default 5 s): with the host loaded, up to eight busy
 * threads on two emulated vCPUs left a healthy channel silent for 5.1 s ("preempt channel
 * stalled ... in state ADVISE"; likely why three migrations of five failed in one run).
 */
const STALL_SECONDS = 20;

interface Run {
  status: number | null;
  stdout: string;
  ms: number;
  why?: string;
}

/** Runs node with `args`; stderr and (unless captured) stdout go to the console. */
function node(args: string[], timeoutS: number, capture = false): Run {
  const started = Date.now();
  const r = spawnSync(process.execPath, args, { env: { ...process.env, ...VM_TEST_ENV }, stdio: ['ignore', capture ? 'pipe' : 'inherit', 'inherit'], encoding: 'utf8', timeout: timeoutS * 1000, killSignal: 'SIGKILL', maxBuffer: 64 << 20 });
  const ms = Date.now() - started;
  const why = r.error ? (r.signal === 'SIGKILL' ? `killed after ${timeoutS} s` : r.error.message) : r.status !== 0 ? `exit ${r.status ?? r.signal}` : undefined;
  return { status: r.status, stdout: r.stdout ?? '', ms, why };
}

/** The last line of a `--json` run, parsed. */
function lastJson(stdout: string): Record<string, any> | undefined {
  const line = stdout.trim().split('\n').pop();
  try {
    return line ? JSON.parse(line) : undefined;
  } catch {
    return undefined;
  }
}

function kernelTests(): StepResult {
  const files = KERNEL_TESTS.map((t) => `dist-test/test/${t}.test.js`);
  const tapFile = '/tmp/kernel-tests.tap';
  const r = node(['--test', '--test-reporter=spec', '--test-reporter-destination=stdout', '--test-reporter=tap', `--test-reporter-destination=${tapFile}`, ...files], 420);
  let tests: TestCounts | undefined;
  try {
    tests = tapCounts(readFileSync(tapFile, 'utf8'));
  } catch {
    // no TAP: the run died before writing it; the step fails below
  }
  const ok = r.status === 0 && !!tests && tests.fail === 0 && tests.tests > 0;
  const detail = tests ? `${tests.tests} tests: ${tests.pass} pass, ${tests.fail} fail, ${tests.skipped} skipped (${tests.notRun} left out under TCG)` : 'no test report';
  return { name: 'kernel tests', ok, ms: r.ms, detail: r.why ? `${detail} (${r.why})` : detail, tests };
}

/** A CLI command with --json that must exit 0; `check` names what is wrong with its report, if anything. */
function cliStep(name: string, args: string[], timeoutS: number, check: (report: Record<string, any>) => string | undefined,
  describe: (report: Record<string, any>) => string): StepResult {
  console.log(`\n== ${name}: postcopy ${args.join(' ')}`);
  const r = node([CLI, ...args, '--json'], timeoutS, true);
  const report = lastJson(r.stdout);
  const wrong = !report ? r.why ?? 'no JSON report' : report.error !== undefined ? failedWith(report) : check(report) ?? r.why;
  // a failure report has none of the numbers `describe` shows
  const detail = report && report.error === undefined ? describe(report) : '';
  console.log(`${wrong ? 'FAILED' : 'ok'}: ${name} ${detail}${wrong ? `: ${wrong}` : ''} (${r.ms} ms)`);
  return { name, ok: !wrong, ms: r.ms, detail: wrong ? `${detail}: ${wrong}`.replace(/^: /, '') : detail };
}

/** Why a run failed or did not verify: its error, and the destination's own (demo) when it has one. */
function failedWith(report: Record<string, any>): string {
  const destination = report.destination?.error ? `; destination: ${report.destination.error}` : '';
  return `${report.verified === false ? 'not verified' : 'failed'}: ${String(report.reason ?? report.error ?? 'no reason given').slice(0, 600)}${destination}`;
}

const THP = '/sys/kernel/mm/transparent_hugepage/enabled';

/** Runs `step` with transparent huge pages set to `mode` (if the kernel has them), then as before. */
function withThp<T>(mode: string, step: () => T): T {
  let before: string | undefined;
  try {
    before = /\[(\w+)\]/.exec(readFileSync(THP, 'utf8'))?.[1];
    if (before && before !== mode) writeFileSync(THP, mode);
  } catch {
    before = undefined; // no THP in this kernel
  }
  try {
    return step();
  } finally {
    if (before && before !== mode) writeFileSync(THP, before);
  }
}

/** A demo migration (1 s of precopy, then the capped stream) that must verify with pages requested; `check` judges the rest. */
function migrationStep(name: string, args: string[], check: (report: Record<string, any>) => string | undefined): StepResult {
  return cliStep(name, ['demo', '--size', SIZE, '--threads', '2', '--precopy-seconds', '1', '--postcopy-max-mibs', String(POSTCOPY_MAX_MIBS),
    '--stall-seconds', String(STALL_SECONDS), '--run-seconds', '0.5', ...args], 180,
    (r) => (r.verified !== true ? failedWith(r) : !(r.pages?.requested > 0) ? `${r.pages?.requested} pages requested: the guest never faulted on a page still to come` : check(r)),
    (r) => `verified ${r.verified}, dirty log ${r.source?.dirty_log}, ${r.source?.rounds} precopy round(s), ${r.pages?.requested} pages requested, ${r.source?.pages_sent?.untouched} sent unread, postcopy ${r.source?.postcopy_ms} ms, ${r.total_ms} ms`);
}

/**
 * One migration per dirty log; every other one on 2 bulk channels (their workers, and the
 * userfaultfd duplicated for them). The first runs as the kernel boots (Debian: THP "always") on
 * a filled guest. The others start the guest on untouched memory (`--fill 0`, a hot set written
 * while precopy runs) with THP "madvise" (with "always" one write populates 2 MiB and a hot set
 * soon touches every huge page): the source must send what is still untouched unread, except
 * where arming the log populates every page (uffd-wp before WP_UNPOPULATED).
 */
function migration(kind: string, channels: number, untouched: boolean, features: FeatureReport): StepResult {
  const args = ['--dirty-log', kind, '--channels', String(channels)];
  const populates = kind === 'uffd-wp' && !features.features.WP_UNPOPULATED;
  const unreadWrong = (n: number | undefined) => (!untouched ? undefined
    : populates ? (n === 0 ? undefined : `${n} pages sent unread, where arming populates`)
      : n! > 0 ? undefined : `${n} pages sent unread: untouched memory was read`);
  const run = () => migrationStep(`migration (dirty log ${kind}, ${channels} bulk channel(s)${untouched ? ', untouched memory' : ''})`,
    untouched ? [...args, '--pattern', 'hotset', '--fill', '0'] : args,
    (r) => (r.source?.dirty_log !== kind ? `used dirty log ${r.source?.dirty_log}`
      : r.bulk_channels !== channels ? `${r.bulk_channels} bulk channels` : unreadWrong(r.source?.pages_sent?.untouched)));
  return untouched ? withThp('madvise', run) : run();
}

/** 2 MiB hugetlb blocks, when init.sh's reservation leaves enough free huge pages for the source and the destination. */
function hugeMigration(features: FeatureReport): StepResult {
  const name = 'migration (2 MiB hugetlb blocks)';
  const needed = 2 * (SIZE_MIB / 2); // the source's block and the destination's
  const free = freeHugePages();
  const skip = !features.features.MISSING_HUGETLBFS ? 'the kernel lacks MISSING_HUGETLBFS'
    : free < needed ? `${free} free 2 MiB huge pages, ${needed} needed (POSTCOPY_VM_HUGEPAGES in init.sh)` : undefined;
  if (skip) {
    console.log(`\n== ${name}: skipped: ${skip}`);
    return { name, ok: true, skipped: true, ms: 0, detail: skip };
  }
  return migrationStep(name, ['--huge'], () => undefined);
}

function snapshotAndRestore(features: FeatureReport): StepResult[] {
  const file = '/tmp/vm.snap';
  const expected = features.features.WP_UNPOPULATED ? 'kernel' : 'populate';
  const snapshot = cliStep('background snapshot', ['snapshot', '--out', file, '--size', SIZE, '--threads', '2', '--warmup-seconds', '0.3'], 180,
    (r) => (r.unpopulated !== expected ? `unpopulated ${r.unpopulated}, expected ${expected} on this kernel` : undefined),
    (r) => `unpopulated ${r.unpopulated}, ${r.pages?.written} pages written, ${r.write_faults?.count} write faults, pause ${r.pause_ms} ms`);
  if (!snapshot.ok) return [snapshot];
  const restore = cliStep('lazy restore', ['restore', file, '--lazy', '--run-seconds', '0.5'], 180,
    (r) => (r.verified !== true ? failedWith(r) : undefined),
    (r) => `verified ${r.verified}, mode ${r.mode}`);
  return [snapshot, restore];
}

/** The page server against the VMM stand-in: from a memory file, then from an origin (serve-step.ts). */
function pageServer(): StepResult {
  const name = 'page server';
  console.log(`\n== ${name}: serve --mem-file, then serve-pages and serve --from (test/vm/serve-step.ts)`);
  const r = node(['dist-test/test/vm/serve-step.js'], 400, true);
  const report = lastJson(r.stdout) as { ok?: boolean; detail?: string; skipped?: string } | undefined;
  if (report?.skipped) {
    console.log(`${name}: skipped: ${report.skipped}`);
    return { name, ok: true, skipped: true, ms: r.ms, detail: report.skipped };
  }
  const ok = r.status === 0 && report?.ok === true;
  const detail = report?.detail ?? r.why ?? 'no report';
  console.log(`${ok ? 'ok' : 'FAILED'}: ${name} ${detail} (${r.ms} ms)`);
  return { name, ok, ms: r.ms, detail };
}

function main(): void {
  const only = /(?:^|\s)postcopy\.steps=(\S+)/.exec(readFileSync('/proc/cmdline', 'utf8'))?.[1]?.split(',');
  const wanted = (step: string) => !only || only.includes(step);
  const features = probeFeatures();
  const steps: StepResult[] = [];
  if (wanted('features')) node([CLI, 'features'], 60);
  if (!features.available) {
    steps.push({ name: 'userfaultfd', ok: false, ms: 0, detail: features.reason ?? 'not available' });
  } else {
    if (wanted('tests')) steps.push(kernelTests());
    if (wanted('migration')) {
      const kinds = dirtyLogKinds([{ shared: false, huge: false }]);
      kinds.forEach((kind, i) => steps.push(migration(kind, i % 2 === 1 ? 2 : 0, i > 0, features)));
      steps.push(hugeMigration(features));
    }
    if (wanted('snapshot')) steps.push(...snapshotAndRestore(features));
    if (wanted('serve')) steps.push(pageServer());
  }
  const result: VmResult = { kernel: features.kernel, features, steps, ok: steps.every((s) => s.ok) };
  console.log(`\n${RESULT_MARK}${JSON.stringify(result)}`);
}

main();
