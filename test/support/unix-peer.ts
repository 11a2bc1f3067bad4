// A userfaultfd handler's end of the socket, for kernel tests: a Unix socket listening in a
// fresh directory whose connections libuv never reads (pauseOnConnect), so that
// receiveMessage takes the bytes and descriptors; and a child process driven a line at a time.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { ChildProcess } from 'node:child_process';
import { receiveMessage, type ReceivedMessage } from '../../src/kernel/index.js';
import { sleep } from './threads.js';

export interface Listener {
  path: string;
  /** The next connection within `ms`: its socket (paused) and descriptor. */
  accept(ms?: number): Promise<{ socket: Socket; fd: number }>;
  close(): void;
}

export async function listenUnix(): Promise<Listener> {
  const dir = mkdtempSync(join(tmpdir(), 'postcopy-socket-'));
  const path = join(dir, 'handler.sock');
  const server: Server = createServer({ pauseOnConnect: true });
  const sockets: Socket[] = [];
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(path, resolve));
  return {
    path,
    accept: (ms = 5000) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`nobody connected to ${path} within ${ms} ms`)), ms);
        server.once('connection', (socket) => {
          clearTimeout(timer);
          sockets.push(socket);
          resolve({ socket, fd: (socket as unknown as { _handle: { fd: number } })._handle.fd });
        });
      }),
    close: () => {
      for (const socket of sockets) socket.destroy();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** receiveMessage until a message (or the end) arrives, as a handler waits for its VMM. */
export async function nextMessage(fd: number, buffer: Uint8Array, maxDescriptors?: number, ms = 5000): Promise<ReceivedMessage> {
  const until = Date.now() + ms;
  for (;;) {
    const message = receiveMessage(fd, buffer, maxDescriptors);
    if (message) return message;
    if (Date.now() > until) throw new Error(`no message on fd ${fd} within ${ms} ms`);
    await sleep(2);
  }
}

/** A child process that answers each line written to its stdin with one line on stdout. */
export class LineChild {
  private readonly lines: string[] = [];
  private waiter: (() => void) | undefined;
  /** What the child wrote to stderr so far. */
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(readonly child: ChildProcess) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      this.lines.push(line);
      this.waiter?.();
    });
    child.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  /** Writes `command` and resolves to the line that answers it. */
  async ask(command: string, ms = 5000): Promise<string> {
    this.send(command);
    return this.answer(ms);
  }

  send(command: string): void {
    this.child.stdin!.write(`${command}\n`);
  }

  async answer(ms = 5000): Promise<string> {
    const until = Date.now() + ms;
    while (this.lines.length === 0) {
      if (Date.now() > until || this.child.exitCode !== null) throw new Error(`no answer from the child within ${ms} ms; stderr: ${this.stderr}`);
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 20);
      });
    }
    return this.lines.shift()!;
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}
