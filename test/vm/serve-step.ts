// Runs inside the test VM, a child of guest.ts: the page server as a user runs it, against the
// VMM stand-in (built on the host: the image has no compiler), which checks every byte it reads.
// First `postcopy serve --mem-file` (random touches and writes, a balloon inflate meanwhile),
// then `postcopy serve-pages` and `postcopy serve --from` over Unix sockets (faults become page
// requests while the capped stream fills the rest). Prints one JSON line: {ok, detail} or
// {ok: true, skipped}.
import { writeFileSync } from 'node:fs';
import { startService } from '../support/cli.js';
import { patternImage } from '../support/serve.js';
import { STANDIN_EXIT, runStandin, standinSkip, type StandinRun } from '../support/vmm-standin.js';

const MiB = 1 << 20;
const FILE = '/tmp/serve.mem';
/** Generous bounds: two emulated vCPUs run every process of the step. */
const WAIT_MS = 120_000;

function verdict(name: string, run: StandinRun): string | undefined {
  if (run.code === STANDIN_EXIT.ok && run.result?.mismatch_count === 0) return undefined;
  return `${name}: stand-in ${run.code ?? run.signal}: ${run.result?.error ?? run.stderr.trim().split('\n').pop()}`;
}

async function fromFile(): Promise<{ wrong?: string; detail: string }> {
  const serve = startService('serve', ['--socket', '/tmp/uffd-file.sock', '--mem-file', FILE, '--stall-seconds', '60']);
  try {
    await serve.waitFor('listening', WAIT_MS);
    const run = await runStandin(['--socket', '/tmp/uffd-file.sock', '--mem-file', FILE, '--region', '8M', '--region', '8M', '--threads', '2',
      '--pattern', 'random', '--write', '--seconds', '3', '--balloon-inflate', `1:${MiB}:${MiB}`, '--balloon-after-ms', '500', '--timeout', '150'], 180_000);
    return { wrong: verdict('serve --mem-file', run), detail: `file: ${run.result?.touches} touches, ${run.result?.removed_pages} pages removed, ${run.result?.zeros_checked} zeros checked` };
  } finally {
    serve.child.kill('SIGTERM');
    await serve.exited;
  }
}

async function fromOrigin(): Promise<{ wrong?: string; detail: string }> {
  const origin = startService('serve-pages', ['--mem-file', FILE, '--listen', 'unix:/tmp/origin.sock', '--postcopy-max-mibs', '4', '--stall-seconds', '20']);
  const serve = startService('serve', ['--socket', '/tmp/uffd-remote.sock', '--from', 'unix:/tmp/origin.sock', '--stall-seconds', '60']);
  try {
    await origin.waitFor('listening', WAIT_MS);
    await serve.waitFor('listening', WAIT_MS);
    // the VM lives until staging is complete (16 MiB at 4 MiB/s, slower under TCG), else it ends before 'staged'
    const run = await runStandin(['--socket', '/tmp/uffd-remote.sock', '--mem-file', FILE, '--region', '16M', '--threads', '2',
      '--pattern', 'random', '--seconds', '20', '--timeout', '150'], 180_000);
    const wrong = verdict('serve --from', run);
    if (wrong) return { wrong, detail: 'remote' };
    const staged = await serve.waitFor('staged', WAIT_MS);
    const { streamed, requested, missing_at_listen: missing } = staged.pages;
    const counted = streamed + requested === missing && missing === (16 * MiB) / 4096 ? undefined : `staged pages ${JSON.stringify(staged.pages)}`;
    return { wrong: counted, detail: `remote: ${requested} pages requested, ${streamed} streamed, ${staged.recoveries} recoveries` };
  } finally {
    serve.child.kill('SIGTERM');
    origin.child.kill('SIGTERM');
    await Promise.all([serve.exited, origin.exited]);
  }
}

async function main(): Promise<void> {
  const skip = standinSkip();
  if (skip) return console.log(JSON.stringify({ ok: true, skipped: skip }));
  writeFileSync(FILE, patternImage(16 * MiB, 3));
  const parts = [await fromFile(), await fromOrigin()];
  const wrong = parts.map((p) => p.wrong).filter(Boolean);
  console.log(JSON.stringify({ ok: wrong.length === 0, detail: [...parts.map((p) => p.detail), ...wrong].join('; ') }));
}

main().catch((error: Error) => {
  console.log(JSON.stringify({ ok: false, detail: error.message.slice(0, 600) }));
});
