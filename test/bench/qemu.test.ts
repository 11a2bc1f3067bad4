// The bench's --qemu side without QEMU: the parser of the JSON object the anchor's bench.py
// writes per run (bench/qemu.ts), QEMU's figures in a migration's row (bench/report.ts), and
// the options failing at once when the anchor is not there.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { anchorProblem, parseQemuRun, qemuArgs, qemuName, type QemuSetup } from '../../bench/qemu.js';
import { qemuRow } from '../../bench/report.js';
import { scenarioNamed, type MigrationScenario } from '../../bench/scenarios.js';
import type { QemuResult } from '../../bench/types.js';

const CLI = join(__dirname, '..', '..', 'bench', 'cli.js');

/** A run of `bench.py postcopy --mode write --delay 1 --preempt` on this VM, cut to what the parser reads and a little more. */
function sample(): Record<string, any> {
  return {
    kind: 'postcopy', mode: 'write', mb: 768, mem: '1G', preempt: true, delay_s: 1.0, accel: 'tcg', runid: '221932-13807',
    src_boot_to_ready_s: 14.24,
    src_query_migrate: {
      status: 'completed', 'setup-time': 4, downtime: 5, 'total-time': 5138,
      ram: { total: 1074274304, 'postcopy-requests': 1337, 'postcopy-bytes': 866817557, transferred: 996755152, 'precopy-bytes': 129937595, remaining: 0 },
    },
    dst_blocktime_info: { 'postcopy-blocktime': 2807, status: 'completed', 'postcopy-vcpu-blocktime': [2807] },
    postcopy_phase_ms: 3999.2,
    dst_status: 'running',
    dst_guest_running: true,
    dst_guest_max_gap_us: 381404,
    dst_guest_panic: false,
    stderr_dst: '',
    stderr_src: '',
    time: '2026-12-03 22:19:56',
  };
}

const line = (r: Record<string, any>): string => JSON.stringify(r);

test('bench --qemu: parseQemuRun reads each figure of a bench.py result', () => {
  const r = parseQemuRun(line(sample()));
  assert.deepEqual(r, {
    total_ms: 5138,
    downtime_ms: 5,
    setup_ms: 4,
    blocktime_ms: 2807,
    requests: 1337,
    bytes_sent: 996755152,
    details: { precopy_bytes: 129937595, postcopy_bytes: 866817557, postcopy_ms: 3999.2, guest_max_gap_ms: 381.404, run_id: '221932-13807' },
  });
});

test("bench --qemu: QEMU 7.2's downtime larger than the total time (a switchover under 1 ms) reads 0, and the figure it gave is kept", () => {
  const r = sample();
  r.src_query_migrate.downtime = 81234567;
  const parsed = parseQemuRun(line(r));
  assert.equal(parsed.downtime_ms, 0);
  assert.equal(parsed.details.downtime_reported_ms, 81234567);
});

test('bench --qemu: with --trace-latency, the per-request p50/p99 (ms there) are read in µs', () => {
  const r = sample();
  r.dst_fault_latency_ms = { n: 1300, unmatched: 37, mean: 1.2, p50: 0.8125, p90: 2, p99: 6.4, max: 30 };
  const parsed = parseQemuRun(line(r));
  assert.equal(parsed.details.request_p50_us, 813);
  assert.equal(parsed.details.request_p99_us, 6400);
  assert.equal(parsed.details.traced_requests, 1300);
});

test('bench --qemu: a malformed result fails with a message naming what is wrong', () => {
  assert.throws(() => parseQemuRun('postcopy write tag= status=completed total=5138'), /not JSON: postcopy write tag= status=completed total=5138/);
  assert.throws(() => parseQemuRun('[1,2]'), /not a JSON object: \[1,2\]/);
  for (const [path, drop] of [
    ['src_query_migrate.total-time', (r: any) => delete r.src_query_migrate['total-time']],
    ['src_query_migrate.ram.postcopy-requests', (r: any) => (r.src_query_migrate.ram['postcopy-requests'] = 'many')],
    ['dst_blocktime_info.postcopy-blocktime', (r: any) => (r.dst_blocktime_info = null)],
  ] as const) {
    const r = sample();
    drop(r);
    assert.throws(() => parseQemuRun(line(r)), (e: Error) => e.message.startsWith(`QEMU's result has no number at ${path}: {"kind":"postcopy"`), path);
  }
});

test('bench --qemu: a run that failed, did not complete or left the guest dead fails, saying so', () => {
  const failed = { ...sample(), error: 'TimeoutError: src: no DIRTY READY in serial after 180s' };
  assert.throws(() => parseQemuRun(line(failed)), /run 221932-13807 failed: TimeoutError: src: no DIRTY READY/);
  const r = sample();
  r.src_query_migrate.status = 'failed';
  assert.throws(() => parseQemuRun(line(r)), /QEMU's migration ended 'failed'/);
  assert.throws(() => parseQemuRun(line({ ...sample(), dst_guest_running: false })), /destination guest did not keep running/);
});

test("bench --qemu: a migration's row keeps every QEMU run, the shortest total time as best, the median and spread of the completed ones", () => {
  const s = scenarioNamed('migration-1g') as MigrationScenario;
  const run = (total: number): QemuResult => ({ ...parseQemuRun(line(sample())), total_ms: total });
  const row = qemuRow('QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)', s, [run(5100), { skipped: 'failed: boom' }, run(4200), run(6000)]);
  assert.equal(row.command, 'bench.py postcopy --mode write --delay 1 --preempt');
  assert.equal(row.best?.total_ms, 4200);
  assert.deepEqual(row.median, { figure: 'total_ms', runs: 4, qemu: 5100, spread: [4200, 6000] });
  assert.equal(row.runs.length, 4);
  assert.equal(qemuName(row.version), 'QEMU 7.2.19');
  assert.equal(qemuRow('x', s, [{ skipped: 'failed: boom' }]).best, null);
});

test("bench --qemu: bench.py's command line writes to the run's own file, with the scenario's options", () => {
  const setup: QemuSetup = { anchor: '/a', script: '/a/bench.py', buildDir: '/b', initrd: '/b/initramfs.cpio.gz', kernel: '/boot/vmlinuz-6.1.0-57-amd64', version: 'v', trace: true };
  const s = scenarioNamed('migration-1g') as MigrationScenario;
  assert.deepEqual(qemuArgs(setup, s.qemu, '/tmp/x/qemu-1.jsonl'), ['/a/bench.py', 'postcopy', '--mode', 'write', '--delay', '1', '--preempt', '--trace', '--trace-latency',
    '--kernel', '/boot/vmlinuz-6.1.0-57-amd64', '--initrd', '/b/initramfs.cpio.gz', '--out', '/tmp/x/qemu-1.jsonl']);
});

test('bench --qemu: a missing anchor fails at once, naming its path; --qemu without a migration scenario is a usage error', () => {
  assert.match(anchorProblem('/nonexistent/anchors/qemu') ?? '', /QEMU anchor \/nonexistent\/anchors\/qemu does not exist/);
  const r = spawnSync(process.execPath, [CLI, '--only', 'migration-1g', '--qemu-anchor', '/nonexistent/anchors/qemu'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /bench: --qemu: the QEMU anchor \/nonexistent\/anchors\/qemu does not exist/);
  assert.doesNotMatch(r.stderr, /project: migration-1g/, 'nothing ran');
  const usage = spawnSync(process.execPath, [CLI, '--only', 'missing-4k', '--qemu'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(usage.status, 2);
  assert.match(usage.stderr, /--qemu runs beside migration-1g and migration-1g-channels/);
});
