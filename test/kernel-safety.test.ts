// The kernel layer refuses, before any syscall, what would damage descriptors or memory that
// are not its own: adopting a descriptor that is no userfaultfd (or is owned already), and
// range calls outside the ranges registered on this userfaultfd in live Mappings. Every
// refusal has its code, and the process lives on.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type StdioOptions } from 'node:child_process';
import { closeSync, fstatSync, openSync, readdirSync, readlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Mapping, Userfaultfd, probeFeatures } from '../src/kernel/index.js';
import { featureSkip } from './support/hugepages.js';

const PAGE = 4096;
const KERNEL = join(__dirname, '..', 'src', 'kernel', 'index.js');

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Runs `body` (CommonJS, with the kernel layer as `kernel`) in a child; returns what it printed as JSON. */
function inChild(body: string, options: { fd?: number } = {}): unknown {
  const script = `const kernel = require(${JSON.stringify(KERNEL)});\n${body}`;
  const stdio: StdioOptions = ['ignore', 'pipe', 'pipe', ...(options.fd === undefined ? [] : [options.fd])];
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', stdio, timeout: 20_000 });
  assert.equal(r.signal, null, `the child died of ${r.signal}: ${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

function refused(fn: () => unknown, why: RegExp) {
  assert.throws(fn, (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_POSTCOPY_RANGE', error.message);
    assert.ok(error instanceof RangeError);
    assert.match(error.message, why);
    return true;
  });
}

test('adopt refuses every descriptor that is no userfaultfd, and leaves it open', { skip: featureSkip() }, () => {
  const file = openSync(__filename, 'r');
  try {
    // stdio (pipes from the test runner), libuv's epoll and eventfd, a file: whatever is open
    const fds = readdirSync('/proc/self/fd').map(Number).flatMap((fd) => {
      try {
        return [{ fd, target: readlinkSync(`/proc/self/fd/${fd}`) }];
      } catch {
        return []; // the directory's own descriptor, closed by now
      }
    });
    assert.ok(fds.some((f) => f.fd === file) && fds.some((f) => f.target.startsWith('anon_inode:')));
    for (const { fd, target } of fds) {
      assert.notEqual(target, 'anon_inode:[userfaultfd]');
      assert.throws(() => Userfaultfd.adopt(fd, []), (error: Error & { code?: string }) => {
        assert.equal(error.code, 'ERR_INVALID_ARG_VALUE', error.message);
        assert.ok(error.message.includes(`fd ${fd} is ${target}`), error.message);
        return true;
      });
    }
    gc(); // a half-made Userfaultfd, collected, must not close what it was refused
    for (const { fd } of fds) fstatSync(fd);
    writeSync(1, ''); // stdout still works
  } finally {
    closeSync(file);
  }
  assert.throws(() => fstatSync(file), { code: 'EBADF' });
  assert.throws(() => Userfaultfd.adopt(file, []), { code: 'EBADF', syscall: 'fstat' });
  assert.throws(() => Userfaultfd.adopt(-1, []), { code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => Userfaultfd.adopt(NaN, []), { code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => Userfaultfd.adopt('1' as never, []), { code: 'ERR_INVALID_ARG_TYPE' });
});

test('adopt takes a userfaultfd no Userfaultfd owns, once, and closes it when done', { skip: featureSkip() }, () => {
  const uffd = Userfaultfd.open();
  try {
    assert.throws(() => Userfaultfd.adopt(uffd.fd, []), { code: 'ERR_INVALID_ARG_VALUE', message: /already owned/ });
    // a child inherits the descriptor as fd 3, owned by nobody there
    const result = inChild(`
      const { closeSync, fstatSync } = require('node:fs');
      const adopted = kernel.Userfaultfd.adopt(3, []);
      let again, afterClose;
      try { kernel.Userfaultfd.adopt(3, []); } catch (e) { again = e.code; }
      const status = adopted.tryWake(0x10000, 4096); // nothing registered on it yet
      adopted.close();
      try { fstatSync(3); } catch (e) { afterClose = e.code; }
      process.stdout.write(JSON.stringify({ fd: adopted.fd, again, status, afterClose }));`, { fd: uffd.fd });
    assert.deepEqual(result, { fd: -1, again: 'ERR_INVALID_ARG_VALUE', status: -14, afterClose: 'EBADF' });
  } finally {
    uffd.close();
  }
});

test('placements outside the ranges registered on this userfaultfd are refused before any ioctl', { skip: featureSkip() }, () => {
  const mapping = new Mapping(16 * PAGE);
  const other = new Mapping(4 * PAGE);
  const uffd = Userfaultfd.open();
  const page = new Uint8Array(PAGE).fill(5);
  try {
    uffd.register(mapping.address, 12 * PAGE, 'missing');
    assert.equal(uffd.copy(mapping.base, page, PAGE), PAGE);
    assert.equal(uffd.lastCount, PAGE);
    const notRegistered = /is not inside a range registered on this userfaultfd/;
    const outside: [string, number, number, RegExp][] = [
      ['a live Mapping not registered here', other.base, PAGE, notRegistered],
      ['the unregistered end of the Mapping', mapping.base + 12 * PAGE, PAGE, notRegistered],
      ['a run crossing the end of the registered range', mapping.base + 11 * PAGE, 2 * PAGE, notRegistered],
      ['a length past every Mapping', mapping.base + PAGE, 2 ** 40, /is not inside a live Mapping/],
    ];
    for (const [where, at, length, why] of outside) {
      const named = new RegExp(`0x${at.toString(16)} length ${length} `);
      for (const call of [
        () => uffd.copy(at, new Uint8Array(Math.min(length, 2 * PAGE)), length),
        () => uffd.zeropage(BigInt(at), length),
        () => uffd.writeProtect(at, length),
        () => uffd.unprotect(at, length),
        () => uffd.wake(at, length),
        () => uffd.continue(at, length),
        () => uffd.poison(at, length),
        () => uffd.move(at, other.base, length),
      ]) {
        refused(call, why);
        refused(call, named);
      }
      assert.equal(uffd.tryZeropage(at, length), -14, where);
      assert.equal(uffd.lastCount, 0, 'a refused call placed nothing');
      assert.equal(uffd.tryCopy(at, new Uint8Array(Math.min(length, 2 * PAGE)), length), -14, where);
      assert.equal(uffd.tryWake(at, length), -14, where);
      assert.equal(uffd.tryWriteProtect(at, length, 0), -14, where);
    }
    // argument errors keep Node's codes
    assert.throws(() => uffd.tryZeropage('0x1000' as never, PAGE), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => uffd.zeropage(-PAGE, PAGE), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => uffd.tryWake(mapping.base, 10n as never), { code: 'ERR_INVALID_ARG_TYPE' });
    // nothing was placed anywhere, and the registered range still works
    assert.equal(other.bytes().some((b) => b !== 0), false);
    assert.equal(uffd.tryZeropage(mapping.base + 11 * PAGE, PAGE), PAGE);
    assert.equal(uffd.copy(mapping.address + BigInt(PAGE), page, PAGE), PAGE);
    assert.deepEqual(mapping.bytes(PAGE, PAGE), page);
  } finally {
    uffd.close();
    mapping.unmap();
    other.unmap();
  }
});

test('unregister, unmap and close take the ranges away', { skip: featureSkip() }, () => {
  const mapping = new Mapping(16 * PAGE);
  const uffd = Userfaultfd.open();
  try {
    uffd.register(mapping.address, mapping.length, 'missing');
    uffd.unregister(mapping.base + 4 * PAGE, 4 * PAGE);
    assert.equal(uffd.tryZeropage(mapping.base + 5 * PAGE, PAGE), -14, 'unregistered');
    refused(() => uffd.zeropage(mapping.base + 3 * PAGE, 2 * PAGE), /is not inside a range registered on this userfaultfd/);
    assert.equal(uffd.tryZeropage(mapping.base + 3 * PAGE, PAGE), PAGE, 'below the hole');
    assert.equal(uffd.tryZeropage(mapping.base + 8 * PAGE, PAGE), PAGE, 'above the hole');
    uffd.register(mapping.base + 4 * PAGE, 4 * PAGE, 'missing');
    assert.equal(uffd.zeropage(mapping.base + 2 * PAGE, PAGE), PAGE);
    // one range again: the kernel, not the check, answers (EEXIST at page 8, or ENOENT if it
    // kept the two areas apart)
    assert.notEqual(uffd.tryZeropage(mapping.base + 4 * PAGE, 8 * PAGE), -14);

    mapping.unmap();
    assert.equal(uffd.tryZeropage(mapping.base + 12 * PAGE, PAGE), -14, 'unmapped');
    refused(() => uffd.zeropage(mapping.base + 12 * PAGE, PAGE), /is not inside a live Mapping/);
    refused(() => uffd.register(mapping.address, mapping.length, 'missing'), /is not inside a live Mapping/);
    refused(() => uffd.unregister(mapping.address, mapping.length), /is not inside a live Mapping/);
    // new memory, maybe at the same address, is not registered until it is
    const next = new Mapping(16 * PAGE);
    try {
      assert.equal(uffd.tryZeropage(next.base + 12 * PAGE, PAGE), -14);
      uffd.register(next.address, next.length, 'missing');
      assert.equal(uffd.tryZeropage(next.base + 12 * PAGE, PAGE), PAGE);
      uffd.close();
      assert.throws(() => uffd.zeropage(next.base, PAGE), { code: 'EBADF', errno: -9, syscall: 'ioctl(UFFDIO_ZEROPAGE)', message: /the userfaultfd is closed/ });
      assert.equal(uffd.tryZeropage(next.base, PAGE), -9);
      assert.equal(uffd.tryWake(next.base, PAGE), -9);
      assert.throws(() => uffd.register(next.address, next.length, 'missing'), { code: 'EBADF', syscall: 'ioctl(UFFDIO_REGISTER)' });
    } finally {
      next.unmap();
    }
  } finally {
    uffd.close();
    mapping.unmap();
  }
});

test('memory that is not guest memory: registering, placing into and moving from it are refused', { skip: featureSkip() }, () => {
  // In a child: were a check missing, the malloc heap or a thread's stack would lose pages
  // (UFFDIO_MOVE) or fault for ever, and only the child would die of it.
  const features = probeFeatures().features.MOVE ? "['MOVE']" : '[]';
  const result = inChild(`
    const { readFileSync } = require('node:fs');
    const maps = readFileSync('/proc/self/maps', 'utf8').split('\\n');
    const start = (match) => { const line = maps.find(match); return line && parseInt(line.split('-')[0], 16); };
    const places = {
      heap: start((l) => l.endsWith('[heap]')),
      stack: start((l) => l.endsWith('[stack]')),
      // an anonymous read-write region that is not ours: V8's heap or a malloc arena
      anonymous: start((l) => / rw-p 00000000 00:00 0\\s*$/.test(l)),
    };
    const mapping = new kernel.Mapping(4 * 4096);
    const uffd = kernel.Userfaultfd.open({ features: ${features} });
    uffd.register(mapping.address, mapping.length, 'missing');
    const code = (fn) => { try { fn(); return 'none'; } catch (e) { return e.code; } };
    const out = {};
    for (const [name, at] of Object.entries(places)) {
      if (at === undefined) continue;
      out[name] = {
        register: code(() => uffd.register(at, 4096, 'missing')),
        copy: code(() => uffd.copy(at, new Uint8Array(4096), 4096)),
        tryZeropage: uffd.tryZeropage(at, 4096),
        moveFrom: code(() => uffd.move(mapping.address, at, 4096)),
        moveInto: code(() => uffd.move(at, mapping.address, 4096)),
      };
    }
    out.betweenMappings = code(() => uffd.move(mapping.address, mapping.base + mapping.length, 4096));
    out.stillServing = uffd.zeropage(mapping.address, mapping.length);
    process.stdout.write(JSON.stringify(out));`) as Record<string, unknown>;
  const refusedEverywhere = { register: 'ERR_POSTCOPY_RANGE', copy: 'ERR_POSTCOPY_RANGE', tryZeropage: -14, moveFrom: 'ERR_POSTCOPY_RANGE', moveInto: 'ERR_POSTCOPY_RANGE' };
  assert.deepEqual(result.heap, refusedEverywhere);
  assert.deepEqual(result.stack, refusedEverywhere);
  assert.deepEqual(result.anonymous, refusedEverywhere);
  assert.equal(result.betweenMappings, 'ERR_POSTCOPY_RANGE');
  assert.equal(result.stillServing, 4 * PAGE);
});

test('copy reads only inside its source view', { skip: featureSkip() }, () => {
  const mapping = new Mapping(8 * PAGE);
  const uffd = Userfaultfd.open();
  try {
    uffd.register(mapping.address, mapping.length, 'missing');
    const backing = new Uint8Array(4 * PAGE).map((_, i) => i >> 12);
    const sub = backing.subarray(PAGE, 3 * PAGE); // pages filled with 1, then 2
    const view = new DataView(backing.buffer, 2 * PAGE, 2 * PAGE);
    assert.throws(() => uffd.copy(mapping.base, sub, 3 * PAGE), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => uffd.copy(mapping.base, sub, PAGE, { srcOffset: 2 * PAGE }), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => uffd.tryCopy(mapping.base, view, PAGE, 0, PAGE + 1), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => uffd.copy(mapping.base, new Uint32Array(PAGE / 4 - 1), PAGE), { code: 'ERR_OUT_OF_RANGE' });
    const detached = new Uint8Array(PAGE);
    structuredClone(detached.buffer, { transfer: [detached.buffer] });
    assert.throws(() => uffd.copy(mapping.base, detached, PAGE), { code: 'ERR_OUT_OF_RANGE' });
    // offsets of views and srcOffset both count: the right bytes arrive
    assert.equal(uffd.copy(mapping.base, sub, PAGE, { srcOffset: PAGE }), PAGE);
    assert.equal(uffd.copy(mapping.base + PAGE, view, PAGE, { srcOffset: PAGE }), PAGE);
    assert.deepEqual(mapping.bytes(0, 2 * PAGE), new Uint8Array(2 * PAGE).fill(2, 0, PAGE).fill(3, PAGE));
  } finally {
    uffd.close();
    mapping.unmap();
  }
});
