// A stalled disk (stall-fuse.c): a FUSE file with the bytes of a backing file, whose reads are
// held unanswered while stalled. A page of it not in the page cache then blocks its reader in
// the kernel, as a disk that stopped answering does.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, compileOnce } from './vmm-standin.js';

const SOURCE = join(ROOT, 'test', 'support', 'stall-fuse.c');
const BINARY = join(__dirname, 'stall-fuse');

/** Why a stalled disk cannot be made here, or false. */
export function stallFuseSkip(): string | false {
  if (process.getuid?.() !== 0) return 'mounting a FUSE filesystem needs root';
  if (!existsSync('/dev/fuse')) return 'no /dev/fuse';
  if (spawnSync('cc', ['--version']).error) return 'no C compiler (cc) to build stall-fuse';
  return false;
}

export class StalledDisk {
  /** The file whose reads stall: same bytes as the backing file. */
  readonly path: string;
  /** Reads held so far, as "OFFSET SIZE". */
  readonly held: string[] = [];
  private readonly child: ChildProcess;
  private readonly exited: Promise<void>;

  private constructor(mountpoint: string, readonly mounted: Promise<void>, child: ChildProcess) {
    this.path = join(mountpoint, 'mem');
    this.child = child;
    this.exited = new Promise((resolve) => child.on('close', () => resolve()));
  }

  /** Mounts a file over `backing` at `mountpoint` (created); with `stalled`, no read is answered until go(). */
  static async mount(mountpoint: string, backing: string, stalled: boolean): Promise<StalledDisk> {
    compileOnce(SOURCE, BINARY);
    mkdirSync(mountpoint, { recursive: true });
    const child = spawn(BINARY, [mountpoint, backing, ...(stalled ? ['--stalled'] : [])], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const mounted = new Promise<void>((resolve, reject) => {
      child.on('close', (code) => reject(new Error(`stall-fuse exited (${code}) before mounting: ${stderr.trim()}`)));
      let partial = '';
      child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
        const lines = (partial + chunk).split('\n');
        partial = lines.pop()!;
        for (const line of lines) {
          if (line === 'mounted') resolve();
          else if (line.startsWith('held ')) disk.held.push(line.slice(5));
        }
      });
    });
    const disk = new StalledDisk(mountpoint, mounted, child);
    await mounted;
    return disk;
  }

  stall(): void {
    this.child.stdin!.write('stall\n');
  }

  /** Answers the held reads and every later one. */
  go(): void {
    this.child.stdin!.write('go\n');
  }

  /** Answers what is held, unmounts, and waits for the program to end. */
  async unmount(): Promise<void> {
    this.child.stdin!.end();
    await this.exited;
  }
}
