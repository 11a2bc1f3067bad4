// The command line validates what it is given, naming the option and the value.
import test from 'node:test';
import assert from 'node:assert/strict';
import { runCli } from './support/cli.js';
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
];

for (const [args, message] of cases) {
  test(`postcopy ${args.join(' ')}: refused with a clear message`, async () => {
    const r = await runCli(args, { POSTCOPY_TOKEN: '' });
    assert.equal(r.code, 2);
    assert.match(r.stderr, message);
  });
}

test('addresses: a bare port is loopback; IPv6 in brackets; unix paths', () => {
  assert.deepEqual(parseEndpoint('4444'), { kind: 'tcp', host: '127.0.0.1', port: 4444 });
  assert.deepEqual(parseEndpoint('[::1]:5'), { kind: 'tcp', host: '::1', port: 5 });
  assert.deepEqual(parseEndpoint('unix:/tmp/s'), { kind: 'unix', path: '/tmp/s' });
  assert.throws(() => parseEndpoint('nohost'), /'nohost' is not HOST:PORT or unix:PATH/);
});
