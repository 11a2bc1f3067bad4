// The whole-migration scenarios: `postcopy demo --json` of the CLI's reference guest, run as
// it is in a child process (the demo starts its own destination process and runs the guest and
// the source in its own), with the options the scenario table gives (bench/scenarios.ts):
//
//   migration-1g           1 GiB, two guest threads writing random pages flat out, 1 s of
//                          precopy, then postcopy with the preempt channel
//   migration-1g-channels  the same with 2 bulk channels
//
// Its figures (total time, downtime, blocktime, page-request p50/p99, bytes sent) are reported
// as they are; with --qemu, beside QEMU's own postcopy from the same invocation (bench/qemu.ts,
// a different guest): no floor, no ratio. The demo verifies every page at the destination; a migration that does not
// verify fails the scenario.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { IncomingReport } from '../src/incoming/index.js';
import type { OutgoingReport } from '../src/outgoing/index.js';
import { killOnExit } from './children.js';
import type { MigrationSpec } from './scenarios.js';
import type { MigrationResult } from './types.js';

/** The demo gets this long (the runner's own limit per scenario process is longer). */
const DEMO_TIMEOUT_MS = 300_000;
/** Lines of the demo's stderr quoted when it fails. */
const STDERR_TAIL_LINES = 20;

/** What `postcopy demo --json` prints (src/cli/demo.ts): the destination's report and the source's. */
interface DemoReport extends IncomingReport {
  verified: boolean;
  peak_rss_mb?: number;
  downtime_to_run_ms?: number;
  source: OutgoingReport;
}

/** `postcopy demo --json` failed: why (src/cli/demo.ts, failed()). */
interface DemoFailure {
  state: 'FAILED';
  verified: false;
  error: string;
}

function demoArgs(spec: MigrationSpec): string[] {
  return ['demo', '--json', '--size', spec.size, '--threads', String(spec.threads), '--pattern', spec.pattern,
    '--precopy-seconds', String(spec.precopySeconds), '--channels', String(spec.channels)];
}

/** Runs the demo; its report, or an error quoting why it failed and the end of its stderr. */
function runDemo(name: string, spec: MigrationSpec): Promise<DemoReport> {
  const args = demoArgs(spec);
  // our own node flags go along (e.g. --cpu-prof), as to the postcopy scenarios' source
  const child = spawn(process.execPath, [...process.execArgv, join(__dirname, '..', 'src', 'cli', 'main.js'), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  killOnExit(child);
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
  // SIGTERM: the demo takes its destination process down with it
  const timer = setTimeout(() => child.kill('SIGTERM'), DEMO_TIMEOUT_MS);
  return new Promise<DemoReport>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const tail = err.trimEnd().split('\n').slice(-STDERR_TAIL_LINES).join('\n');
      const fail = (why: string) => reject(new Error(`${name}: postcopy ${args.join(' ')}: ${why}\n${tail}`));
      let report: DemoReport | DemoFailure;
      try {
        report = JSON.parse(out.trim().split('\n').pop() ?? '');
      } catch {
        return fail(signal ? `killed by ${signal}` : `exit ${code} without a report`);
      }
      if (!('source' in report)) return fail(`failed: ${report.error}`);
      if (code !== 0 || !report.verified) return fail(`exit ${code}, guest memory ${report.verified ? 'verified' : 'NOT verified'}`);
      resolve(report);
    });
  });
}

export async function migrationScenario(name: string, spec: MigrationSpec): Promise<MigrationResult> {
  const r = await runDemo(name, spec);
  const s = r.source;
  return {
    scenario: name,
    kind: 'migration',
    total_ms: s.total_ms,
    downtime_ms: s.downtime_ms,
    blocktime_ms: r.blocktime_ms,
    request_p50_us: r.latency_us.p50,
    request_p99_us: r.latency_us.p99,
    bytes_sent: s.bytes_sent,
    details: {
      verified: r.verified,
      guest_bytes: r.bytes_total,
      bulk_channels: s.bulk_channels,
      precopy_ms: s.precopy_ms,
      precopy_send_mib_s: s.precopy_totals.send_mib_s,
      precopy_dirty_mib_s: s.precopy_totals.dirty_mib_s,
      postcopy_ms: r.postcopy_ms,
      postcopy_gb_per_s: r.throughput_gb_per_s,
      pages_precopy: r.pages.precopy,
      pages_streamed: r.pages.streamed,
      pages_requested: r.pages.requested,
      request_avg_us: r.latency_us.avg,
      downtime_to_run_ms: r.downtime_to_run_ms ?? null,
      downtime_parts_ms: { ...s.downtime_parts_ms },
      destination_total_ms: r.total_ms,
      destination_peak_rss_mb: r.peak_rss_mb ?? null,
    },
  };
}
