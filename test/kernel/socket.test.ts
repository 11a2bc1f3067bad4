// The one message a VMM sends its userfaultfd handler, as receiveMessage takes it from a real
// peer (python3's socket.send_fds, in a child process): bytes with up to maxDescriptors
// descriptors, the rest closed; nothing yet; the end; and who the peer is (SO_PEERCRED).
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { peerCredentials, receiveMessage } from '../../src/kernel/index.js';
import { LineChild, listenUnix, nextMessage } from '../support/unix-peer.js';

// argv: socket path, then files to open; on stdin `send N TEXT` sends TEXT with the first N
// descriptors (none: a plain message), `close` closes the socket; each answered `sent`.
const PEER = `
import os, socket, sys
path, *files = sys.argv[1:]
fds = [os.open(f, os.O_RDONLY) for f in files]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
for line in sys.stdin:
    verb, *rest = line.split()
    if verb == 'send':
        n, text = int(rest[0]), rest[1].encode()
        if n: socket.send_fds(s, [text], fds[:n])
        else: s.sendall(text)
    elif verb == 'close':
        s.close()
    print('sent', flush=True)
`;

const pythonSkip = spawnSync('python3', ['-c', 'import socket; socket.send_fds'], { encoding: 'utf8' }).status === 0 ? false : 'needs python3 (3.9+, socket.send_fds)';

const openDescriptors = () => readdirSync('/proc/self/fd').length;

test('receiveMessage: bytes with 1, 2 and 3 descriptors (the third closed), none yet, no descriptors, the end; SO_PEERCRED names the peer', { skip: pythonSkip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'postcopy-fds-'));
  const files = ['a', 'b', 'c'].map((name) => join(dir, name));
  for (const file of files) writeFileSync(file, file);
  const listener = await listenUnix();
  const accepted = listener.accept();
  const peer = new LineChild(spawn('python3', ['-c', PEER, listener.path, ...files], { stdio: ['pipe', 'pipe', 'pipe'] }));
  try {
    const { fd } = await accepted;
    const buffer = new Uint8Array(64);
    assert.equal(receiveMessage(fd, buffer), undefined, 'nothing sent yet');
    assert.deepEqual(peerCredentials(fd), { pid: peer.child.pid, uid: process.getuid!(), gid: process.getgid!() });

    const take = async (n: number, text: string, maxDescriptors?: number) => {
      assert.equal(await peer.ask(`send ${n} ${text}`), 'sent');
      const before = openDescriptors();
      const message = await nextMessage(fd, buffer, maxDescriptors);
      const opened = openDescriptors() - before;
      const targets = message.descriptors.map((d) => readlinkSync(`/proc/self/fd/${d}`));
      for (const d of message.descriptors) closeSync(d);
      assert.equal(openDescriptors(), before, 'every descriptor left open was returned');
      return { bytes: Buffer.from(buffer.subarray(0, message.bytes)).toString(), targets, opened, truncated: message.truncated };
    };
    assert.deepEqual(await take(1, 'one'), { bytes: 'one', targets: files.slice(0, 1), opened: 1, truncated: false });
    assert.deepEqual(await take(2, 'two'), { bytes: 'two', targets: files.slice(0, 2), opened: 2, truncated: false });
    // the kernel drops what does not fit the control buffer (MSG_CTRUNC)...
    assert.deepEqual(await take(3, 'three'), { bytes: 'three', targets: files.slice(0, 2), opened: 2, truncated: true });
    // ...which, aligned, fits 2 for 1 asked: the second is closed here
    assert.deepEqual(await take(2, 'max1', 1), { bytes: 'max1', targets: files.slice(0, 1), opened: 1, truncated: true });
    assert.deepEqual(await take(1, 'max0', 0), { bytes: 'max0', targets: [], opened: 0, truncated: true });
    assert.deepEqual(await take(0, 'plain'), { bytes: 'plain', targets: [], opened: 0, truncated: false });
    assert.equal(receiveMessage(fd, buffer), undefined, 'each message was taken whole');

    assert.equal(await peer.ask('close'), 'sent');
    assert.deepEqual(await nextMessage(fd, buffer), { bytes: 0, descriptors: [], truncated: false });
    assert.deepEqual(receiveMessage(fd, buffer), { bytes: 0, descriptors: [], truncated: false }, 'the end stays the end');
    assert.deepEqual(peerCredentials(fd).pid, peer.child.pid, 'as it was when it connected');
  } finally {
    peer.kill();
    listener.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('receiveMessage and peerCredentials on what is no socket, and bad arguments: Node-shaped errors with codes', () => {
  const file = openSync(__filename, 'r');
  try {
    assert.throws(() => receiveMessage(file, new Uint8Array(8)), { code: 'ENOTSOCK', errno: -88, syscall: 'recvmsg', message: `ENOTSOCK: socket operation on non-socket, recvmsg fd ${file}` });
    assert.throws(() => peerCredentials(file), { code: 'ENOTSOCK', syscall: 'getsockopt', message: /SO_PEERCRED of fd \d+$/ });
    assert.throws(() => receiveMessage(file, new Uint8Array(0)), { code: 'ERR_OUT_OF_RANGE', message: /"buffer\.byteLength" .* must be >= 1\. Received 0/ });
    assert.throws(() => receiveMessage(file, new Uint8Array(8), 254), { code: 'ERR_OUT_OF_RANGE', message: /"maxDescriptors" .* >= 0 && <= 253\. Received 254/ });
    assert.throws(() => receiveMessage(file, 'buffer' as never), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => receiveMessage(-1, new Uint8Array(8)), { code: 'ERR_OUT_OF_RANGE' });
  } finally {
    closeSync(file);
  }
  assert.throws(() => receiveMessage(file, new Uint8Array(8)), { code: 'EBADF', syscall: 'recvmsg' });
  assert.throws(() => peerCredentials(file), { code: 'EBADF' });
});
