// The command line validates what it is given, naming the option and the value; every
// command's --json ends with one object, failures included; the help lists every option.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { COMMANDS } from '../../src/cli/commands.js';
import { parseCommandLine } from '../../src/cli/options.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, assertJsonFailure, runCli, startReceiver } from '../support/cli.js';
import { featureSkip } from '../support/hugepages.js';
import { freeHugePages } from '../../src/kernel/index.js';
import { waitFor } from '../support/threads.js';
import { parseEndpoint } from '../../src/transport/index.js';

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
  [['demo', '--channels', '99'], /--channels '99' must be a whole number from 0 to 16/],
  [['send', '--connect', 'unix:/tmp/x', '--channels', '1.5'], /--channels '1.5' must be a whole number from 0 to 16/],
  [['demo', '--size'], /--size needs a value/],
  [['demo', '--size', '--json'], /--size needs a value/],
  [['demo', '--huge=yes'], /--huge takes no value/],
  [['demo', 'extra'], /unexpected argument 'extra'/],
  [['demo', '--connect', 'host:1'], /unknown option --connect \(send takes it\)/],
  [['send', '--connect', 'unix:/tmp/x', '--chaos', '3'], /unknown option --chaos \(demo takes it\)/],
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
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /cannot listen on unix:\/nonexistent-dir\/postcopy.sock: the directory \/nonexistent-dir does not exist/);
});

test('receive --json that cannot listen still ends with its report event, naming error and error_code', async () => {
  const r = await runCli(['receive', '--listen', 'unix:/nonexistent-dir/postcopy.sock', '--json']);
  const report = assertJsonFailure(r, 1, 'ERR_POSTCOPY_CONFIG', /cannot listen on unix:\/nonexistent-dir\/postcopy.sock/);
  assert.equal(report.event, 'report');
});

test('receive --json that fails after listening (SIGTERM) ends with its report event, naming error and error_code', async () => {
  const receiver = await startReceiver(['--listen', `unix:${join(tmpdir(), `postcopy-cli-${process.pid}.sock`)}`], {});
  receiver.child.kill('SIGTERM');
  assert.equal(await receiver.exited, 1);
  const last = receiver.events.at(-1)!;
  assert.equal(last.event, 'report', JSON.stringify(receiver.events.map((e) => e.event)));
  assert.equal(receiver.events.filter((e) => e.event === 'report').length, 1);
  assert.equal(last.error_code, 'ERR_POSTCOPY_INTERRUPTED');
  assert.equal(last.error, 'interrupted (SIGTERM)');
  assert.equal(last.verified, false);
});

for (const command of COMMANDS) {
  test(`postcopy ${command.name} --json with a bad option: one JSON object naming the usage error, exit 2`, async () => {
    const r = await runCli([command.name, '--json', '--bogus'], { POSTCOPY_TOKEN: '' });
    assertJsonFailure(r, 2, 'ERR_POSTCOPY_USAGE', /^unknown option --bogus$/);
  });
}

test('demo and send --json with a bad value: one JSON object naming option and value, exit 2', async () => {
  const demo = await runCli(['demo', '--json', '--size', 'abc']);
  assertJsonFailure(demo, 2, 'ERR_POSTCOPY_USAGE', /^--size 'abc' is not a size \(e\.g\. 256M, 2G\)$/);
  const send = await runCli(['send', '--json', '--connect', 'unix:/tmp/x', '--pattern', 'zigzag']);
  assertJsonFailure(send, 2, 'ERR_POSTCOPY_USAGE', /^--pattern 'zigzag' must be one of/);
  const unknown = await runCli(['nonsense', '--json']);
  assertJsonFailure(unknown, 2, 'ERR_POSTCOPY_USAGE', /^unknown command 'nonsense'$/);
});

test('send --json whose destination is not there: one JSON object naming error and error_code, exit 1', async () => {
  const r = await runCli(['send', '--json', '--connect', 'unix:/nonexistent-dir/postcopy.sock', '--size', '8M', '--precopy-seconds', '0']);
  assertJsonFailure(r, 1, 'ERR_POSTCOPY_HANDSHAKE', /^main channel to unix:\/nonexistent-dir\/postcopy.sock: no such socket/);
});

test('demo whose source fails before any migration begins ends its listening destination at once, and says so', async () => {
  // --huge with more 2 MiB pages than the kernel has free: the source's set-up fails (the
  // destination, listening, allocates nothing until a migration arrives)
  const pages = Math.max(32, freeHugePages() + 1);
  const start = performance.now();
  const r = await runCli(['demo', '--json', '--huge', '--size', `${2 * pages}M`, '--precopy-seconds', '0']);
  const needs = new RegExp(`needs ${pages} free 2 MiB huge pages.*; the destination, which no migration had reached, was ended$`);
  assertJsonFailure(r, 2, 'ERR_POSTCOPY_USAGE', needs);
  assert.ok(performance.now() - start < 8_000, `took ${performance.now() - start} ms (it waited 10 s for a destination that listens for ever)`);
});

/** `postcopy --help` as sections: each heading's commands, and the options listed under it (with whether they take a value). */
function helpSections(help: string): { commands: string[]; options: { name: string; takesValue: boolean }[] }[] {
  return help.split('\n\n').flatMap((block) => {
    const [heading, ...lines] = block.split('\n');
    const match = /^(\S+) options(?: \((.+)\))?:$/.exec(heading);
    if (!match) return [];
    const commands = match[2] === 'every command' ? COMMANDS.map((c) => c.name) : match[2]?.split(', ') ?? [match[1]];
    const options = lines.flatMap((line) => {
      const option = /^ {2}--([a-z-]+)( \S+)?/.exec(line);
      return option ? [{ name: option[1], takesValue: option[2] !== undefined }] : [];
    });
    return [{ commands, options }];
  });
}

test('postcopy --help lists every option each command parses, under a heading naming the command; each one listed is parsed', async () => {
  const r = await runCli(['--help']);
  assert.equal(r.code, 0);
  const sections = helpSections(r.stdout);
  for (const command of COMMANDS) {
    const listed = sections.filter((s) => s.commands.includes(command.name)).flatMap((s) => s.options);
    const parsed = command.groups.flatMap((g) => Object.keys(g.options));
    assert.deepEqual(listed.map((o) => o.name).sort(), parsed.sort(), `${command.name}: options listed in the help vs parsed`);
    for (const { name, takesValue } of listed) {
      const parse = (args: string[]) => parseCommandLine(args, command.groups, command.positionals === true);
      assert.equal(parse(takesValue ? [`--${name}`, 'v'] : [`--${name}`]).values[name], takesValue ? 'v' : true, `${command.name} --${name}`);
      assert.throws(() => parse(takesValue ? [`--${name}`] : [`--${name}=v`]), { message: takesValue ? `--${name} needs a value` : `--${name} takes no value` });
    }
  }
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
