// The command line validates what it is given, naming the option and the value.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { CLI, runCli } from './support/cli.js';
import { featureSkip } from './support/hugepages.js';
import { waitFor } from './support/threads.js';
import { parseEndpoint } from '../src/transport/index.js';

const cases: [string[], RegExp][] = [
  [['demo', '--size', '3K'], /--size 3K is not a multiple of the 4 KiB page size/],
  [['demo', '--size', 'lots'], /--size 'lots' is not a size/],
  [['demo', '--huge', '--size', '3M'], /not a multiple of the 2 MiB huge page size/],
  [['demo', '--pattern', 'zigzag'], /--pattern 'zigzag' must be one of sequential, random, hotset, read/],
  [['demo', '--threads', '0'], /--threads '0' must be a whole number from 1 to 64/],
  [['demo', '--precopy-seconds', '-1'], /--precopy-seconds '-1' must be a number/],
  [['demo', '--transport', 'udp'], /--transport 'udp' must be one of tcp, unix/],
  [['demo', '--bogus'], /unknown option --bogus/],
  [['receive'], /receive needs --listen/],
  [['receive', '--listen', '127.0.0.1:4444'], /receive over TCP needs a token/],
  [['send', '--connect', 'host:70000'], /port 70000 is out of range/],
  [['nonsense'], /unknown command 'nonsense'/],
  [['features', '--bogus'], /unknown option --bogus/],
  [['demo', '--recover-seconds', '-1'], /--recover-seconds '-1' must be a number from 0 to 3600/],
  [['receive', '--listen', 'unix:/tmp/x', '--stall-seconds', '0'], /--stall-seconds '0' must be a number from 0.5/],
];

for (const [args, message] of cases) {
  test(`postcopy ${args.join(' ')}: refused with a clear message`, async () => {
    const r = await runCli(args, { POSTCOPY_TOKEN: '' });
    assert.equal(r.code, 2);
    assert.match(r.stderr, message);
  });
}

test('listening on a Unix socket in a directory that does not exist says so', async () => {
  const r = await runCli(['receive', '--listen', 'unix:/nonexistent-dir/postcopy.sock']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cannot listen on unix:\/nonexistent-dir\/postcopy.sock: the directory \/nonexistent-dir does not exist/);
});

test('when the demo is killed, its destination (guest threads blocked in faults) exits within seconds', { skip: featureSkip('PAGEFAULT_FLAG_WP'), timeout: 60_000 }, async () => {
  const demo = spawn(process.execPath, [CLI, 'demo', '--size', '256M', '--threads', '4', '--precopy-seconds', '0', '--fill', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  demo.stderr!.on('data', (d) => (stderr += d));
  await waitFor(() => /\[postcopy\]/.test(stderr), 30_000, 'postcopy to start');
  const pid = Number(/destination \(pid (\d+)\)/.exec(stderr)![1]);
  demo.kill('SIGKILL');
  const killed = Date.now();
  const alive = () => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  await waitFor(() => !alive(), 10_000, `destination pid ${pid} to exit`);
  assert.ok(Date.now() - killed < 10_000);
});

test('addresses: a bare port is loopback; IPv6 in brackets; unix paths', () => {
  assert.deepEqual(parseEndpoint('4444'), { kind: 'tcp', host: '127.0.0.1', port: 4444 });
  assert.deepEqual(parseEndpoint('[::1]:5'), { kind: 'tcp', host: '::1', port: 5 });
  assert.deepEqual(parseEndpoint('unix:/tmp/s'), { kind: 'unix', path: '/tmp/s' });
  assert.throws(() => parseEndpoint('nohost'), /'nohost' is not HOST:PORT or unix:PATH/);
});
