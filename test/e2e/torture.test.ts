// The torture suite: a seeded loop of real two-process migrations (the demo: a source process
// and a destination process), each under a hard timeout, each verified page by page by the
// resumed guest. Sizes, page sizes, patterns, fill, threads, preempt, bulk channels, transport, precopy, dirty log
// and chaos (both channels through the fault-injecting proxy, cut during postcopy) are drawn
// from the seed. With recovery every run must end verified; without it (--recover-seconds 0)
// a run whose connection was cut must end FAILED with both processes gone.
//
//   POSTCOPY_TORTURE_SEED=N      replay a loop (each run prints its own seed too); 'random'
//                                draws one (npm test runs a fixed seed, the soak fresh ones)
//   POSTCOPY_TORTURE_RUNS=N      runs in the loop (default 24)
//   POSTCOPY_TORTURE_MINUTES=M   run for M minutes instead (npm run soak -- --minutes M)
import test from 'node:test';
import assert from 'node:assert/strict';
import { runCli } from '../support/cli.js';
import { loopSeed } from '../support/seed.js';
import { featureSkip, hugeSkip } from '../support/hugepages.js';
import { seededRandom } from '../../src/testing/index.js';

const skip = featureSkip('PAGEFAULT_FLAG_WP');
const minutes = Number(process.env.POSTCOPY_TORTURE_MINUTES ?? 0);
const masterSeed = loopSeed('POSTCOPY_TORTURE_SEED', minutes ? undefined : 20261203);
const runs = Number(process.env.POSTCOPY_TORTURE_RUNS ?? 24);
/** Hard bound on one migration, set-up and verification included. */
const RUN_TIMEOUT_MS = 120_000;

interface Run {
  seed: number;
  args: string[];
  chaos: boolean;
  recover: number;
}

function drawRun(seed: number): Run {
  const r = seededRandom(seed);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(r() * list.length)];
  const wantHuge = r() < 0.3;
  const size = pick(wantHuge ? [16, 32, 64] : [16, 32, 64, 128]);
  // hugetlb when the machine has the pages for both processes
  const huge = wantHuge && !hugeSkip((2 * size) / 2);
  const chaos = r() < 0.5;
  const recover = chaos && r() < 0.25 ? 0 : 30;
  const precopy = pick([0, 0, 0.3, 1]);
  const args = [
    '--size', `${size}M`,
    ...(huge ? ['--huge'] : []),
    '--pattern', pick(['sequential', 'random', 'hotset', 'read'] as const),
    '--threads', String(1 + Math.floor(r() * 8)),
    // memory never touched goes unread as zero pages until the guest writes it
    ...(r() < 0.3 ? ['--fill', '0'] : []),
    ...(r() < 0.2 ? ['--no-preempt'] : []),
    '--transport', pick(['tcp', 'unix'] as const),
    '--precopy-seconds', String(precopy),
    '--dirty-log', pick(['pagemap-scan', 'uffd-wp'] as const),
    '--channels', String(pick([0, 0, 1, 2, 4])),
    ...(chaos ? ['--chaos', String(seed)] : []),
    '--recover-seconds', String(recover),
    '--stall-seconds', '3',
    '--run-seconds', '0.3',
  ];
  return { seed, args, chaos, recover };
}

interface Outcome {
  run: Run;
  ms: number;
  verified: boolean;
  recoveries: number;
  faults: number;
}

async function migrate(run: Run): Promise<Outcome> {
  const start = Date.now();
  const replay = `replay: POSTCOPY_TORTURE_SEED=${masterSeed}; this run: postcopy demo --json ${run.args.join(' ')}`;
  const result = await runCli(['demo', '--json', ...run.args], {}, RUN_TIMEOUT_MS).catch((error: Error) => {
    throw new Error(`HANG: no end within ${RUN_TIMEOUT_MS / 1000} s (${replay})\n${error.message.slice(-1500)}`);
  });
  const r = result.report;
  const context = `${replay}\nexit ${result.code}; stderr tail:\n${result.stderr.slice(-1500)}`;
  assert.ok(r, `no JSON report\n${context}`);
  const faults = Number(r.chaos?.faults ?? 0);
  if (run.recover === 0 && faults > 0 && r.state !== 'END') {
    // cut without recovery: a clean failure, with both processes gone
    assert.equal(result.code, 1, context);
    assert.equal(r.state, 'FAILED', context);
    assert.equal(r.verified, false, context);
    assert.match(String(r.error), /(main|preempt|bulk \d+) channel|stalled|closed|recover/, context);
    assert.equal(typeof r.destination_exit, 'number', `the destination did not exit\n${context}`);
    return { run, ms: Date.now() - start, verified: false, recoveries: 0, faults };
  }
  assert.equal(r.verified, true, `not verified: ${r.reason ?? r.error}\n${context}`);
  assert.equal(r.state, 'END', context);
  assert.equal(result.code, 0, context);
  return { run, ms: Date.now() - start, verified: true, recoveries: Number(r.recoveries ?? 0), faults };
}

test(`torture: seeded two-process migrations, verified page by page (seed ${masterSeed})`, { skip, timeout: minutes ? minutes * 60_000 + 300_000 : 1_800_000 }, async (t) => {
  console.log(`torture seed ${masterSeed} (replay with POSTCOPY_TORTURE_SEED=${masterSeed})`);
  const next = seededRandom(masterSeed);
  const deadline = Date.now() + minutes * 60_000;
  const outcomes: Outcome[] = [];
  for (let i = 0; minutes ? Date.now() < deadline : i < runs; i++) {
    const run = drawRun(Math.floor(next() * 2 ** 31));
    const outcome = await migrate(run);
    outcomes.push(outcome);
    t.diagnostic(`run ${i} seed ${run.seed}: ${outcome.verified ? 'verified' : 'FAILED as expected'} in ${outcome.ms} ms, ${outcome.faults} fault(s), ${outcome.recoveries} recover(ies): ${run.args.join(' ')}`);
  }
  const chaotic = outcomes.filter((o) => o.faults > 0 && o.run.recover > 0);
  const summary = `${outcomes.length} runs: ${outcomes.filter((o) => o.verified).length} verified, ` +
    `${outcomes.filter((o) => !o.verified).length} failed as expected (cut, no recovery); ` +
    `${chaotic.length} cut with recovery, ${chaotic.reduce((n, o) => n + o.recoveries, 0)} recoveries`;
  console.log(summary);
  t.diagnostic(summary);
  assert.ok(outcomes.length > 0);
});
