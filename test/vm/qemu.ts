// Boots one kernel with the test initramfs in QEMU, serial console on stdio, no disk, and
// reads the console line by line. Every wait is bounded: QEMU is killed when the guest has
// not started within `bootTimeoutMs` or not finished within `timeoutMs`.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { QEMU } from './kernels.js';

export type Accel = 'kvm' | 'tcg';

export interface BootOptions {
  image: string;
  initramfs: string;
  accel: Accel;
  memoryMiB: number;
  cpus: number;
  /** Extra kernel command line words (postcopy.steps=...). */
  append: string[];
  bootTimeoutMs: number;
  timeoutMs: number;
  /** Each console line, as it arrives. */
  onLine: (line: string) => void;
}

export interface BootResult {
  /** ms from QEMU's start to the init's first line (POSTCOPY-VM-START; kernel messages can share its line). */
  bootMs?: number;
  totalMs: number;
  /** Why the VM was killed, if it was. */
  killed?: string;
  exitCode: number | null;
}

export function boot(o: BootOptions): Promise<BootResult> {
  const args = [
    '-accel', o.accel, '-cpu', o.accel === 'kvm' ? 'host' : 'max', '-smp', String(o.cpus), '-m', `${o.memoryMiB}M`,
    '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio',
    '-kernel', o.image, '-initrd', o.initramfs,
    '-append', ['console=ttyS0', 'quiet', 'panic=-1', ...o.append].join(' '),
  ];
  const started = Date.now();
  const child = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let bootMs: number | undefined;
  let killed: string | undefined;
  const kill = (why: string) => {
    if (killed || child.exitCode !== null) return;
    killed = why;
    child.kill('SIGKILL');
  };
  const bootTimer = setTimeout(() => kill(`no output from the init within ${o.bootTimeoutMs / 1000} s`), o.bootTimeoutMs);
  const timer = setTimeout(() => kill(`not finished within ${o.timeoutMs / 1000} s`), o.timeoutMs);
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on('line', (raw) => {
      const line = raw.replace(/\x1b(\[[0-9;?]*[a-zA-Z]|c)|\r/g, '');
      if (bootMs === undefined && line.includes('POSTCOPY-VM-START')) {
        bootMs = Date.now() - started;
        clearTimeout(bootTimer);
      }
      o.onLine(line);
    });
  }
  return new Promise((resolve, reject) => {
    child.on('error', (error) => {
      clearTimeout(bootTimer);
      clearTimeout(timer);
      reject(new Error(`${QEMU}: ${error.message}`));
    });
    child.on('close', (code) => {
      clearTimeout(bootTimer);
      clearTimeout(timer);
      resolve({ bootMs, totalMs: Date.now() - started, killed, exitCode: code });
    });
  });
}
