// The page server's scenarios (src/serve), each a PageServer in this process serving the VMM
// stand-in (test/support/vmm-standin.c, another process: Firecracker's restore, step for step)
// from a memory file written and read once before anything is timed (page cache warm):
//   serve-file-faults  no prefetch, one vCPU thread touching its pages in order (a fault places
//                      its page alone); p50/p99 of each touch, on the stand-in's clock. vs missing-4k (a fault
//                      served in the same process; here the handler is another process).
//   serve-prefetch     prefetch on and a vCPU thread touching random pages: time from the VM's
//                      connection until every page is present; beside it, in the same run and
//                      right before, the memory file read eagerly into fresh memory (the
//                      reference the issue sets: at most 1.2x its time). vs copy-1m for the ratio.
//   serve-remote-faults as serve-file-faults, touching random pages, but the pages come from
//                      `postcopy serve-pages` in another process over loopback TCP, its stream
//                      capped at 1 MiB/s: nearly every fault is a page request. A quarter of
//                      --mib, as remote-4k. vs remote-4k.
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { round } from '../src/base/index.js';
import { Mapping } from '../src/kernel/index.js';
import { PageServer, type PageSourceSpec } from '../src/serve/index.js';
import { parseEndpoint } from '../src/transport/index.js';
import { startService } from '../test/support/cli.js';
import { runStandin, startStandin } from '../test/support/vmm-standin.js';
import type { ServeSpec } from './scenarios.js';
import type { LatencyResult, ServeDetails, ThroughputResult } from './types.js';

const PAGE = 4096;

/** A memory file of `length` bytes of non-zero data, read once so that its pages are in the page cache. */
function memoryFile(dir: string, length: number): string {
  const path = join(dir, 'bench.mem');
  const chunk = Buffer.alloc(8 << 20);
  for (let i = 0; i < chunk.length; i += PAGE) chunk.fill(((i / PAGE) | 1) & 0xff, i, i + PAGE);
  const fd = openSync(path, 'w+');
  try {
    for (let done = 0; done < length; done += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, length - done), done);
    for (let done = 0; done < length; done += chunk.length) readSync(fd, chunk, 0, Math.min(chunk.length, length - done), done);
  } finally {
    closeSync(fd);
  }
  return path;
}

/** The reference of serve-prefetch: the whole file read into fresh anonymous memory, in ms. */
function eagerReadMs(path: string, length: number): number {
  const target = new Mapping(length);
  const fd = openSync(path, 'r');
  try {
    const bytes = target.bytes();
    const start = performance.now();
    for (let done = 0; done < length; ) done += readSync(fd, bytes, done, Math.min(8 << 20, length - done), done);
    return performance.now() - start;
  } finally {
    closeSync(fd);
    target.unmap();
  }
}

const TOKEN = 'bench';

/** `postcopy serve-pages` in its own process, on loopback; resolves with it and where it listens. */
async function startOrigin(file: string) {
  const origin = startService('serve-pages', ['--mem-file', file, '--listen', '127.0.0.1:0', '--postcopy-max-mibs', '1'], { POSTCOPY_TOKEN: TOKEN });
  return { origin, from: parseEndpoint((await origin.waitFor('listening')).endpoint) };
}

export async function serveScenario(name: string, size: number, spec: ServeSpec): Promise<LatencyResult | ThroughputResult & { details: ServeDetails }> {
  const { prefetch, remote } = spec;
  // remote: a quarter, the size of the floor's remote-4k (and of postcopy-fault)
  const length = remote ? size / 4 : size;
  const dir = mkdtempSync(join(tmpdir(), 'postcopy-bench-serve-'));
  let origin: Awaited<ReturnType<typeof startOrigin>> | undefined;
  try {
    const file = memoryFile(dir, length);
    origin = remote ? await startOrigin(file) : undefined;
    const eagerMs = prefetch ? eagerReadMs(file, length) : 0;
    const source: PageSourceSpec = origin ? { kind: 'remote', from: origin.from, token: TOKEN } : { kind: 'file', path: file };
    const server = new PageServer({ socket: join(dir, 'uffd.sock'), source, prefetch: prefetch ? 'sequential' : 'none' });
    let connectedAt = 0;
    let allPresentAt = 0;
    let endedWhy: string | undefined;
    server.on('vm', () => (connectedAt = performance.now()));
    server.on('all-present', () => (allPresentAt = performance.now()));
    server.on('ended', (_, reason) => (endedWhy = reason));
    await server.listen();
    try {
      const args = ['--socket', join(dir, 'uffd.sock'), '--mem-file', file, '--region', String(length), '--threads', '1', '--timeout', '300'];
      if (!prefetch) {
        // every page faults, as in missing-4k; from the origin in random order, as in remote-4k
        const run = await runStandin([...args, '--touches', String(length / PAGE), ...(remote ? ['--pattern', 'random'] : [])], 320_000);
        if (run.code !== 0 || !run.result?.ok) throw new Error(`${name}: the stand-in failed (${run.code ?? run.signal}): ${run.result?.error ?? run.stderr}`);
        return faultResult(name, run.result.first_touches, run.result.touch_us);
      }
      // the vCPU touches random pages until every page is present, then it is done with
      const vm = startStandin([...args, '--pattern', 'random', '--seconds', '280'], 300_000);
      while (!allPresentAt && endedWhy === undefined) await new Promise((r) => setTimeout(r, 5));
      vm.child.kill('SIGKILL');
      await vm.done;
      if (!allPresentAt) throw new Error(`${name}: the VM ended before every page was present: ${endedWhy}`);
      const ms = allPresentAt - connectedAt;
      return {
        scenario: name, kind: 'throughput', bytes: length, gb_per_s: round(length / (ms / 1000) / 1e9, 3), us_per_4k: round((ms * 1000) / (length / PAGE), 3),
        details: { all_present_ms: round(ms, 1), eager_read_ms: round(eagerMs, 1), eager_ratio: round(ms / eagerMs, 2) },
      };
    } finally {
      server.close();
    }
  } finally {
    origin?.origin.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

function faultResult(name: string, faults: number, us: { p50: number | null; p99: number | null; max: number | null }): LatencyResult {
  // the pager runs on a worker thread of this process: the main thread's figures say nothing of it
  return { scenario: name, kind: 'latency', faults, p50_us: us.p50 ?? 0, p99_us: us.p99 ?? 0, max_us: us.max ?? 0, faults_per_s: NaN, handler_sleeps_per_fault: NaN, handler_cpu_us_per_fault: NaN };
}
