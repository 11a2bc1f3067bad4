// What the test VMs need from the host: qemu, busybox and Debian's kernel images. Missing ones
// are installed with apt-get (as root), without building the host an initrd for the new
// kernels (INITRD=No: the VMs boot our own initramfs, and the host does not boot them).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';

export const QEMU = 'qemu-system-x86_64';

export interface Kernel {
  /** What was asked for: '6.1', '6.12'. */
  series: string;
  /** The installed release, e.g. 6.1.0-57-amd64. */
  release: string;
  image: string;
}

function onPath(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

/** The newest installed Debian kernel of a series (6.1: 6.1.0-N-amd64; 6.12: 6.12.N+deb12-amd64). */
function installedKernel(series: string): Kernel | undefined {
  const pattern = new RegExp(`^vmlinuz-(${series.replace('.', '\\.')}[.-][\\w.+-]*amd64)$`);
  const releases = existsSync('/boot') ? readdirSync('/boot').map((n) => pattern.exec(n)?.[1]).filter((r): r is string => !!r && !/-(cloud|rt)-amd64$/.test(r)) : [];
  const release = releases.sort((a, b) => a.localeCompare(b, 'en', { numeric: true })).pop();
  return release ? { series, release, image: `/boot/vmlinuz-${release}` } : undefined;
}

function candidateVersion(pkg: string): string | undefined {
  const out = spawnSync('apt-cache', ['policy', pkg], { encoding: 'utf8' }).stdout ?? '';
  const version = /Candidate:\s*(\S+)/.exec(out)?.[1];
  return version && version !== '(none)' ? version : undefined;
}

/** The Debian package that installs the newest kernel of a series: its own meta-package or linux-image-amd64. */
function kernelPackage(series: string): string {
  for (const pkg of [`linux-image-${series}-amd64`, 'linux-image-amd64']) {
    if (candidateVersion(pkg)?.startsWith(`${series}.`)) return pkg;
  }
  throw new Error(`no Debian package installs a ${series} kernel here (apt-cache search linux-image-${series}: none; try apt-get update)`);
}

function aptInstall(packages: string[], log: (line: string) => void): void {
  if (process.getuid?.() !== 0) throw new Error(`${packages.join(' ')} must be installed, and only root can: run as root, or install them (apt-get install ${packages.join(' ')})`);
  if (!onPath('apt-get')) throw new Error(`${packages.join(' ')} must be installed and there is no apt-get here: install them by hand`);
  log(`installing ${packages.join(' ')} (apt-get)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive', INITRD: 'No' };
  const result = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...packages], { env, stdio: ['ignore', 'inherit', 'inherit'], timeout: 20 * 60_000 });
  if (result.status !== 0) throw new Error(`apt-get install ${packages.join(' ')} failed (exit ${result.status ?? result.signal}); see above`);
}

/** Installs what is missing (qemu, busybox-static, the kernels asked for); returns the kernels. */
export function prepareHost(series: string[], log: (line: string) => void): Kernel[] {
  const missing: string[] = [];
  if (!onPath(QEMU)) missing.push('qemu-system-x86');
  if (!existsSync('/bin/busybox')) missing.push('busybox-static');
  for (const s of series) if (!installedKernel(s)) missing.push(kernelPackage(s));
  if (missing.length) aptInstall(missing, log);
  return series.map((s) => {
    const kernel = installedKernel(s);
    if (!kernel) throw new Error(`the ${s} kernel is still not in /boot after installing it`);
    return kernel;
  });
}

export function qemuVersion(): string {
  return execFileSync(QEMU, ['--version'], { encoding: 'utf8' }).split('\n')[0];
}
