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
import { Mapping, RangePlacer, Userfaultfd, duplicateDescriptor, probeFeatures } from '../../src/kernel/index.js';
import { featureSkip } from '../support/hugepages.js';

const PAGE = 4096;
const KERNEL = join(__dirname, '..', '..', 'src', 'kernel', 'index.js');
const ADDON = join(__dirname, '..', '..', 'src', 'kernel', 'addon.js');

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/**
 * Runs `body` (CommonJS, with the kernel layer as `kernel`) in a child; returns what it printed
 * as JSON. `fd` becomes the child's descriptor 3, `stdin` its descriptor 0.
 */
function inChild(body: string, options: { fd?: number; stdin?: number } = {}): unknown {
  const script = `const kernel = require(${JSON.stringify(KERNEL)});\n${body}`;
  const stdio: StdioOptions = [options.stdin ?? 'ignore', 'pipe', 'pipe', ...(options.fd === undefined ? [] : [options.fd])];
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
      const { readlinkSync } = require('node:fs');
      // what fd 3 is; once closed, another thread of Node's may be given the number at once
      const target = () => { try { return readlinkSync('/proc/self/fd/3'); } catch (e) { return e.code; } };
      const before = target();
      const adopted = kernel.Userfaultfd.adopt(3, []);
      let again;
      try { kernel.Userfaultfd.adopt(3, []); } catch (e) { again = e.code; }
      const status = adopted.tryWake(0x10000, 4096); // nothing registered on it yet
      adopted.close();
      const after = target();
      process.stdout.write(JSON.stringify({ fd: adopted.fd, again, status, before, closed: after !== before }));`, { fd: uffd.fd });
    assert.deepEqual(result, { fd: -1, again: 'ERR_INVALID_ARG_VALUE', status: -14, before: 'anon_inode:[userfaultfd]', closed: true });
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

test('duplicateDescriptor takes an integer descriptor: anything else throws and duplicates nothing', () => {
  const open = () => readdirSync('/proc/self/fd').length;
  const before = open();
  const refused: [unknown, string, RegExp][] = [
    [NaN, 'ERR_OUT_OF_RANGE', /It must be an integer\. Received NaN$/],
    [3.5, 'ERR_OUT_OF_RANGE', /It must be an integer\. Received 3\.5$/],
    [2 ** 40, 'ERR_OUT_OF_RANGE', /It must be >= 0 && <= 2147483647\. Received 1_099_511_627_776$/],
    [-1, 'ERR_OUT_OF_RANGE', /It must be >= 0 && <= 2147483647\. Received -1$/],
    [Infinity, 'ERR_OUT_OF_RANGE', /Received Infinity$/],
    ['3', 'ERR_INVALID_ARG_TYPE', /^The "fd" argument must be of type number\. Received type string \('3'\)$/],
    [undefined, 'ERR_INVALID_ARG_TYPE', /Received undefined$/],
  ];
  for (const [fd, code, message] of refused) {
    assert.throws(() => duplicateDescriptor(fd as number), (error: Error & { code?: string }) => {
      assert.equal(error.code, code, `${String(fd)}: ${error.message}`);
      assert.match(error.message, message);
      return true;
    });
  }
  assert.equal(open(), before, 'no descriptor was created');
  const file = openSync(__filename, 'r');
  try {
    const copy = duplicateDescriptor(file);
    assert.notEqual(copy, file);
    assert.equal(fstatSync(copy).ino, fstatSync(file).ino);
    closeSync(copy);
  } finally {
    closeSync(file);
  }
  assert.equal(open(), before);
});

test('a placement never reads a bad descriptor as another: NaN is not fd 0, 3.5 is not fd 3', { skip: featureSkip() }, () => {
  const mapping = new Mapping(8 * PAGE);
  const uffd = Userfaultfd.open();
  try {
    uffd.register(mapping.address, mapping.length, 'missing');
    // The child's descriptors 0 and 3 are this userfaultfd: an ioctl on either places pages into
    // this process's memory, as the control (fd 0 itself) shows.
    const result = inChild(`
      const { addon } = require(${JSON.stringify(ADDON)});
      const page = new Uint8Array(4096).fill(7);
      const at = (n) => ${mapping.base} + n * 4096;
      const code = (fn) => { try { return fn(); } catch (e) { return e.code; } };
      process.stdout.write(JSON.stringify({
        nan: code(() => addon.placement.copy(NaN, at(0), page, 4096)),
        fraction: code(() => addon.placement.copy(3.5, at(1), page, 4096)),
        zeropage: code(() => addon.placement.zeropage(NaN, at(2), 4096)),
        wake: code(() => addon.placement.wake(0.5, at(2), 4096)),
        writeProtect: code(() => addon.placement.writeProtect(-0.5, at(2), 4096, 0)),
        continue: code(() => addon.placement.continue(Infinity, at(2), 4096)),
        move: code(() => addon.placement.move(NaN, at(4), at(5), 4096)),
        negative: code(() => addon.placement.copy(-2, at(0), page, 4096)),
        string: code(() => addon.placement.copy('0', at(0), page, 4096)),
        closed: addon.placement.copy(-1, at(0), page, 4096),
        fd0: addon.placement.copy(0, at(3), page, 4096),
        fd3: addon.placement.copy(3, at(6), page, 4096),
      }));`, { stdin: uffd.fd, fd: uffd.fd });
    assert.deepEqual(result, {
      nan: 'ERR_OUT_OF_RANGE', fraction: 'ERR_OUT_OF_RANGE', zeropage: 'ERR_OUT_OF_RANGE', wake: 'ERR_OUT_OF_RANGE',
      writeProtect: 'ERR_OUT_OF_RANGE', continue: 'ERR_OUT_OF_RANGE', move: 'ERR_OUT_OF_RANGE', negative: 'ERR_OUT_OF_RANGE',
      string: 'ERR_INVALID_ARG_TYPE', closed: -9, fd0: PAGE, fd3: PAGE,
    });
    const seven = new Uint8Array(PAGE).fill(7);
    assert.deepEqual(mapping.bytes(3 * PAGE, PAGE), seven, 'the control placed its page through fd 0');
    assert.deepEqual(mapping.bytes(6 * PAGE, PAGE), seven, 'and through fd 3');
    assert.equal(uffd.tryZeropage(mapping.base, 3 * PAGE), 3 * PAGE, 'nothing else was placed');
    // in this process, through a RangePlacer (a bulk worker's): refused, not placed through fd 0
    const placer = new RangePlacer(NaN, mapping.base, mapping.length);
    assert.throws(() => placer.tryCopy(4 * PAGE, seven, PAGE), { code: 'ERR_OUT_OF_RANGE', message: /"fd"/ });
    assert.throws(() => placer.tryZeropage(4 * PAGE, PAGE), { code: 'ERR_OUT_OF_RANGE', message: /"fd"/ });
    assert.equal(uffd.tryZeropage(mapping.base + 4 * PAGE, PAGE), PAGE, 'page 4 was still missing');
  } finally {
    uffd.close();
    mapping.unmap();
  }
});

test('exitNow takes an exit status the parent can see: 0 to 255, else it throws and the process lives on', () => {
  const result = inChild(`
    const { addon } = require(${JSON.stringify(ADDON)});
    const code = (value) => { try { addon.exitNow(value); } catch (e) { return e.code; } };
    process.stdout.write(JSON.stringify([256, -1, 1.5, NaN, '2'].map(code)));`);
  assert.deepEqual(result, ['ERR_OUT_OF_RANGE', 'ERR_OUT_OF_RANGE', 'ERR_OUT_OF_RANGE', 'ERR_OUT_OF_RANGE', 'ERR_INVALID_ARG_TYPE']);
  for (const [args, status] of [[[], 1], [[0], 0], [[255], 255], [[7], 7]] as const) {
    const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(ADDON)}).addon.exitNow(${args.join()})`]);
    assert.equal(r.status, status, `exitNow(${args.join()})`);
  }
});

test('madviseRanges from two worker threads at once, each on its own mapping: every range is discarded', () => {
  // In a fresh process, so that the two workers' first calls race for the pidfd too.
  const result = inChild(`
    const { Worker } = require('node:worker_threads');
    const worker = \`
      const { workerData, parentPort } = require('node:worker_threads');
      const kernel = require(workerData.kernel);
      const PAGE = 4096, PAGES = 2200;
      const go = new Int32Array(workerData.go);
      Atomics.add(go, 0, 1);
      while (Atomics.load(go, 0) < 2);  // both start together
      const mapping = new kernel.Mapping(PAGES * PAGE);
      const view = mapping.bytes();
      const syscalls = new Set();
      let wrong = 0;
      for (let round = 0; round < workerData.rounds; round++) {
        const value = 1 + ((round + workerData.id) % 250);
        for (let p = 0; p < PAGES; p++) view[p * PAGE] = view[p * PAGE + PAGE - 1] = value;
        const ranges = [];
        for (let p = round % 2; p < PAGES; p += 2) ranges.push([p * PAGE, PAGE]);
        syscalls.add(mapping.discardRanges(ranges) + '/' + ranges.length);
        for (let p = 0; p < PAGES; p++) {
          const expected = p % 2 === round % 2 ? 0 : value;
          if (view[p * PAGE] !== expected || view[p * PAGE + PAGE - 1] !== expected) wrong++;
        }
      }
      mapping.unmap();
      parentPort.postMessage({ wrong, syscalls: [...syscalls] });\`;
    const go = new SharedArrayBuffer(4);
    const runs = [0, 1].map((id) => new Promise((resolve, reject) => {
      const w = new Worker(worker, { eval: true, workerData: { id, go, rounds: 12, kernel: ${JSON.stringify(KERNEL)} } });
      w.on('message', resolve);
      w.on('error', reject);
    }));
    Promise.all(runs).then((r) => process.stdout.write(JSON.stringify(r)));`) as { wrong: number; syscalls: string[] }[];
  assert.equal(result.length, 2);
  for (const { wrong, syscalls } of result) {
    assert.equal(wrong, 0, 'pages that did not read as expected');
    // 1100 ranges: two process_madvise calls, or one madvise per range where the kernel refuses
    // it (6.12 and older: after one refused process_madvise, the first time in the process)
    for (const made of syscalls) assert.ok(['2/1100', '1100/1100', '1101/1100'].includes(made), made);
  }
});

test('the addon\'s getters on another object throw ERR_INVALID_THIS (a Userfaultfd read as a Mapping crashed), FileMapping\'s too', { skip: featureSkip() }, () => {
  // In a child: were the check missing, the process would die of it.
  const result = inChild(`
    const { addon } = require(${JSON.stringify(ADDON)});
    const file = require('node:fs').openSync(process.execPath, 'r');
    const objects = { Mapping: new addon.Mapping('anonymous', 4096), Userfaultfd: new addon.Userfaultfd({}), FileMapping: new addon.FileMapping(file, 4096) };
    const out = [];
    for (const [name, C] of Object.entries({ Mapping: addon.Mapping, Userfaultfd: addon.Userfaultfd, FileMapping: addon.FileMapping })) {
      for (const [key, d] of Object.entries(Object.getOwnPropertyDescriptors(C.prototype))) {
        if (!d.get) continue;
        for (const receiver of [objects[name === 'Mapping' ? 'Userfaultfd' : 'Mapping'], {}, 5, Object.create(objects[name])]) {
          try { d.get.call(receiver); out.push('none'); } catch (e) { out.push(name + '.' + key + ' ' + e.code + ' ' + e.message); }
        }
        out.push(name + '.' + key + ' ' + typeof d.get.call(objects[name]));
      }
    }
    process.stdout.write(JSON.stringify(out));`) as string[];
  const getters = { Mapping: ['address', 'length', 'pageSize', 'fd'], Userfaultfd: ['fd', 'via'], FileMapping: ['address'] };
  const expected = Object.entries(getters).flatMap(([name, keys]) => keys.flatMap((key) => [
    ...Array(4).fill(`${name}.${key} ERR_INVALID_THIS Value of "this" must be of type ${name}`),
    `${name}.${key} ${key === 'address' ? 'bigint' : key === 'via' ? 'string' : 'number'}`,
  ]));
  assert.deepEqual(result, expected);
});

test('a worker terminated in the middle of an addon call ends alone: the process lives on', { timeout: 60_000 }, () => {
  // A worker being terminated cannot take a JavaScript exception; the addon's C++ errors must
  // not escape then (seen as "terminate called after throwing an instance of 'Napi::Error'"
  // when a recovery stopped bulk workers that had just started).
  const report = inChild(`
    const { Worker } = require('node:worker_threads');
    const mapping = new kernel.Mapping(1 << 20);
    const loop = 'const k = require(' + JSON.stringify(${JSON.stringify(KERNEL)}) + '); const { workerData } = require("node:worker_threads"); for (;;) k.attachMapping(workerData.address, workerData.length);';
    (async () => {
      let terminated = 0;
      const until = Date.now() + 10000; // a slow machine (TCG in test:vm) races fewer times
      for (let i = 0; i < 300 && Date.now() < until; i++) {
        const worker = new Worker(loop, { eval: true, workerData: mapping.descriptor });
        await new Promise((r) => setTimeout(r, Math.random() * 30)); // a race: while it starts, and once it runs
        await worker.terminate();
        terminated++;
      }
      console.log(JSON.stringify({ terminated }));
    })();
  `) as { terminated: number };
  assert.ok(report.terminated >= 20, `only ${report.terminated} workers started and were terminated`);
});
