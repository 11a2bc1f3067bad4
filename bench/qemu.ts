// QEMU 7.2's own postcopy beside the whole-migration scenarios (`--qemu`): the anchor in
// ../shared/anchors/qemu (read-only; --qemu-anchor DIR or $POSTCOPY_QEMU_ANCHOR elsewhere) boots
// a 1 GiB TCG guest whose one vCPU writes one byte per random page of 768 MiB, and migrates it
// to a second QEMU on this machine (`bench.py postcopy`). Its builds and logs go to
// $QA_BUILD_DIR (default /tmp/qemu-anchor) and /tmp/qa-runs, never into the anchor.
//
// Here: the check that the anchor is there, the host's packages (test/vm/kernels.ts installs
// them), the guest's initramfs (built again only when an input is newer), bench.py's arguments,
// and the parser of the JSON object it writes for each run. bench/runner.ts runs it, in the
// floor's turn of a migration scenario; bench/report.ts sets its figures beside ours.
import { spawnSync } from 'node:child_process';
import { existsSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { onPath, prepareHost, qemuVersion, QEMU_NEEDS, type HostNeed } from '../test/vm/kernels.js';
import type { QemuSpec } from './scenarios.js';
import type { QemuResult } from './types.js';

export interface QemuSetup {
  anchor: string;
  /** bench.py's script, and what it is run with. */
  script: string;
  buildDir: string;
  initrd: string;
  kernel: string;
  /** `qemu-system-x86_64 --version`'s first line. */
  version: string;
  /** --qemu-trace: per-request latency from QEMU's trace events (both trace options of bench.py). */
  trace: boolean;
}

/** The anchor's files the bench uses; build-initramfs.sh reads dirty.c and init. */
const ANCHOR_FILES = ['bench.py', 'build-initramfs.sh', 'dirty.c', 'init'];

/** --qemu-anchor, else $POSTCOPY_QEMU_ANCHOR, else ../shared/anchors/qemu beside the repository. */
export function qemuAnchor(asked: string | null, root: string): string {
  return asked ?? process.env.POSTCOPY_QEMU_ANCHOR ?? join(root, '..', 'shared', 'anchors', 'qemu');
}

/** Why the anchor cannot be used (naming the path), or null. */
export function anchorProblem(anchor: string): string | null {
  if (!existsSync(anchor)) return `the QEMU anchor ${anchor} does not exist (--qemu-anchor DIR or POSTCOPY_QEMU_ANCHOR names another)`;
  const missing = ANCHOR_FILES.filter((name) => !existsSync(join(anchor, name)));
  return missing.length ? `the QEMU anchor ${anchor} lacks ${missing.join(', ')}` : null;
}

/** gcc can link statically: `-print-file-name` answers the bare name when it finds no libc.a. */
function staticLibc(): boolean {
  const r = spawnSync('gcc', ['-print-file-name=libc.a'], { encoding: 'utf8' });
  const path = r.stdout?.trim() ?? '';
  return r.status === 0 && path.startsWith('/') && existsSync(path);
}

/** bench.py, and build-initramfs.sh's static `dirty` guest program. */
const ANCHOR_NEEDS: readonly HostNeed[] = [
  ...QEMU_NEEDS,
  { pkg: 'python3', present: () => onPath('python3') },
  { pkg: 'gcc', present: () => onPath('gcc') },
  { pkg: 'libc6-dev', present: staticLibc },
];

const mtime = (path: string): number => statSync(path).mtimeMs;

/** Builds the guest's initramfs unless it is newer than every input (the anchor's files, busybox). */
function buildInitramfs(anchor: string, buildDir: string, initrd: string, log: (line: string) => void): void {
  const inputs = [...ANCHOR_FILES.map((name) => join(anchor, name)), realpathSync('/bin/busybox')];
  if (existsSync(initrd) && inputs.every((input) => mtime(input) < mtime(initrd))) {
    log(`bench: qemu: ${initrd} is newer than its inputs: not built again`);
    return;
  }
  log(`bench: qemu: building the guest's initramfs (${join(anchor, 'build-initramfs.sh')} -> ${buildDir})`);
  // its own `ls` of the result goes to our stderr: stdout is the report's
  const r = spawnSync('bash', [join(anchor, 'build-initramfs.sh')], { env: { ...process.env, QA_BUILD_DIR: buildDir }, stdio: ['ignore', 2, 2] });
  if (r.status !== 0) throw new Error(`${join(anchor, 'build-initramfs.sh')} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`})`);
}

/**
 * Everything `--qemu` needs before the first run, so that it fails at once and not half-way:
 * the anchor, the packages (installed with apt-get as root when missing), Debian's 6.1 kernel
 * and the initramfs. Throws one line saying what is missing.
 */
export function prepareQemu(anchor: string, trace: boolean, log: (line: string) => void): QemuSetup {
  const problem = anchorProblem(anchor);
  if (problem) throw new Error(problem);
  const [kernel] = prepareHost(['6.1'], (line) => log(`bench: qemu: ${line}`), ANCHOR_NEEDS);
  const buildDir = process.env.QA_BUILD_DIR || '/tmp/qemu-anchor';
  const initrd = join(buildDir, 'initramfs.cpio.gz');
  buildInitramfs(anchor, buildDir, initrd, log);
  // bench.py's own default sorts /boot's names as text (6.1.0-9 after 6.1.0-57); QA_KERNEL still wins
  const image = process.env.QA_KERNEL || kernel.image;
  return { anchor, script: join(anchor, 'bench.py'), buildDir, initrd, kernel: image, version: qemuVersion(), trace };
}

/** `bench.py postcopy`'s options for `spec`. */
export function specArgs(spec: QemuSpec): string[] {
  return ['--mode', spec.mode, '--delay', String(spec.delaySeconds), ...(spec.preempt ? ['--preempt'] : [])];
}

/** bench.py's command line for one run of `spec`, writing its JSON object to `out` alone. */
export function qemuArgs(setup: QemuSetup, spec: QemuSpec, out: string): string[] {
  return [setup.script, 'postcopy', ...specArgs(spec), ...(setup.trace ? ['--trace', '--trace-latency'] : []),
    '--kernel', setup.kernel, '--initrd', setup.initrd, '--out', out];
}

/** What the report calls QEMU: "QEMU 7.2.19" out of its version line. */
export function qemuName(version: string): string {
  const number = /version (\d+(?:\.\d+)*)/.exec(version)?.[1];
  return number ? `QEMU ${number}` : 'QEMU';
}

// ---- bench.py's result --------------------------------------------------------------------------

const excerpt = (text: string): string => (text.length > 120 ? `${text.slice(0, 120)}...` : text);

/** The value at a path of keys (QEMU's own names have dashes: 'src_query_migrate.total-time'). */
function at(object: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((o, key) => (o !== null && typeof o === 'object' ? (o as Record<string, unknown>)[key] : undefined), object);
}

/** The number at `path`; throws naming the field and the line when it is not one. */
function numberAt(object: unknown, path: string, line: string): number {
  const value = at(object, path);
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new Error(`QEMU's result has no number at ${path}: ${excerpt(line)}`);
  return value;
}

const optionalNumber = (object: unknown, path: string): number | null => {
  const value = at(object, path);
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
};

/** A run that failed says so; a migration that did not complete, or a guest that died, fails too. */
function checkRun(r: Record<string, unknown>, line: string): void {
  if (r.error) throw new Error(`QEMU's run ${r.runid ?? ''} failed: ${String(r.error)}`);
  const status = at(r, 'src_query_migrate.status');
  if (status !== 'completed') throw new Error(`QEMU's migration ended ${status === undefined ? 'without a status' : `'${String(status)}'`}: ${excerpt(line)}`);
  if (r.dst_guest_running !== true || r.dst_guest_panic === true) throw new Error(`QEMU's run ${r.runid ?? ''}: the destination guest did not keep running after the migration`);
}

/** Per-request latency from --trace --trace-latency (milliseconds there, µs here). */
function traced(r: unknown): Pick<QemuResult['details'], 'request_p50_us' | 'request_p99_us' | 'traced_requests'> {
  const p50 = optionalNumber(r, 'dst_fault_latency_ms.p50');
  const p99 = optionalNumber(r, 'dst_fault_latency_ms.p99');
  const n = optionalNumber(r, 'dst_fault_latency_ms.n');
  if (p50 === null || p99 === null || n === null) return {};
  return { request_p50_us: Math.round(p50 * 1000), request_p99_us: Math.round(p99 * 1000), traced_requests: n };
}

/** One line of bench.py's --out file: its figures, or an error naming what is wrong with it. */
export function parseQemuRun(line: string): QemuResult {
  let r: unknown;
  try {
    r = JSON.parse(line);
  } catch {
    throw new Error(`QEMU's bench.py wrote a line that is not JSON: ${excerpt(line)}`);
  }
  if (r === null || typeof r !== 'object' || Array.isArray(r)) throw new Error(`QEMU's bench.py wrote a line that is not a JSON object: ${excerpt(line)}`);
  checkRun(r as Record<string, unknown>, line);
  const total = numberAt(r, 'src_query_migrate.total-time', line);
  const downtime = numberAt(r, 'src_query_migrate.downtime', line);
  const gap = optionalNumber(r, 'dst_guest_max_gap_us');
  return {
    total_ms: total,
    // QEMU 7.2: a switchover under 1 ms leaves downtime 0, later overwritten with the host's
    // monotonic clock in ms (summarize.py in the anchor reads it the same way)
    downtime_ms: downtime > total ? 0 : downtime,
    setup_ms: numberAt(r, 'src_query_migrate.setup-time', line),
    blocktime_ms: numberAt(r, 'dst_blocktime_info.postcopy-blocktime', line),
    requests: numberAt(r, 'src_query_migrate.ram.postcopy-requests', line),
    bytes_sent: numberAt(r, 'src_query_migrate.ram.transferred', line),
    details: {
      precopy_bytes: numberAt(r, 'src_query_migrate.ram.precopy-bytes', line),
      postcopy_bytes: numberAt(r, 'src_query_migrate.ram.postcopy-bytes', line),
      postcopy_ms: optionalNumber(r, 'postcopy_phase_ms'),
      guest_max_gap_ms: gap === null ? null : gap / 1000,
      ...(downtime > total ? { downtime_reported_ms: downtime } : {}),
      ...traced(r),
      run_id: String(at(r, 'runid') ?? ''),
    },
  };
}
