// What the test VMs need from the host: qemu, busybox and Debian's kernel images (the bench's
// --qemu asks for a few more packages: bench/qemu.ts). Missing ones are installed with apt-get
// (as root), without building the host an initrd for the new kernels (INITRD=No: the VMs boot
// our own initramfs, and the host does not boot them). A fresh machine's package lists can lack
// a package (6.12 lives in bookworm-security) or name versions the mirror no longer has (404):
// then the lists are updated, once, and apt asked again.
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

export function onPath(command: string): boolean {
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

const APT_ENV = { ...process.env, DEBIAN_FRONTEND: 'noninteractive', INITRD: 'No' };
/** What apt says when its lists are missing a package or name a version the mirror dropped. */
const STALE_LISTS = /Unable to locate package|has no installation candidate|404\s+Not Found|maybe run apt-get update/;

/**
 * Runs apt-get with its stdout on our stderr (the bench's --json keeps stdout for its JSON lines)
 * and its stderr both on ours and returned.
 */
function aptGet(args: string[], timeoutMs: number): { status: string | undefined; stderr: string } {
  const r = spawnSync('apt-get', args, { env: APT_ENV, stdio: ['ignore', 2, 'pipe'], encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 });
  process.stderr.write(r.stderr ?? '');
  const status = r.error ? r.error.message : r.status !== 0 ? `exit ${r.status ?? r.signal}` : undefined;
  return { status, stderr: r.stderr ?? '' };
}

let listsUpdated = false;

/**
 * `apt-get update`, at most once per run (lists one update did not fix, a second will not
 * either); true if it ran now. Throws one line naming the cause if it fails.
 */
function updateLists(why: string, log: (line: string) => void): boolean {
  if (listsUpdated) return false;
  listsUpdated = true;
  log(`apt-get update (${why})`);
  const r = aptGet(['update'], 10 * 60_000);
  if (r.status) {
    // the last line that says something: apt ends with a generic "Some index files failed"
    const said = r.stderr.split('\n').map((l) => l.trim()).filter((l) => l && !/Some index files failed to download/.test(l)).pop();
    throw new Error(`apt-get update failed (${r.status})${said ? `: ${said}` : ''}`);
  }
  return true;
}

/** The Debian package that installs the newest kernel of a series: its own meta-package or linux-image-amd64. */
function kernelPackage(series: string, log: (line: string) => void): string {
  const find = () => [`linux-image-${series}-amd64`, 'linux-image-amd64'].find((pkg) => candidateVersion(pkg)?.startsWith(`${series}.`));
  const pkg = find() ?? (updateLists(`no package installs a ${series} kernel`, log) ? find() : undefined);
  if (!pkg) throw new Error(`no Debian package installs a ${series} kernel here, even after apt-get update (apt-cache policy linux-image-${series}-amd64 linux-image-amd64)`);
  return pkg;
}

/** Installs `packages`; lists that lack one of them, or that apt finds stale, are updated once first. */
function aptInstall(packages: string[], log: (line: string) => void): void {
  const noCandidate = packages.filter((p) => !candidateVersion(p));
  if (noCandidate.length) updateLists(`no candidate for ${noCandidate.join(' ')}`, log);
  const install = () => {
    log(`installing ${packages.join(' ')} (apt-get)`);
    return aptGet(['install', '-y', '--no-install-recommends', ...packages], 20 * 60_000);
  };
  let r = install();
  if (r.status && STALE_LISTS.test(r.stderr) && updateLists(`apt-get install: ${STALE_LISTS.exec(r.stderr)![0]}`, log)) r = install();
  if (r.status) throw new Error(`apt-get install ${packages.join(' ')} failed (${r.status}); see above`);
}

/** A Debian package the host may lack, and how to tell that it is there. */
export interface HostNeed {
  pkg: string;
  present: () => boolean;
}

/** What every QEMU boot of ours needs: qemu, and busybox for the initramfs. */
export const QEMU_NEEDS: readonly HostNeed[] = [
  { pkg: 'qemu-system-x86', present: () => onPath(QEMU) },
  // a static busybox is what it installs; a dynamic one there works too (the initramfs takes its libraries)
  { pkg: 'busybox-static', present: () => existsSync('/bin/busybox') },
];

/** Installs what is missing (`needs`, the kernels asked for); returns the kernels. */
export function prepareHost(series: string[], log: (line: string) => void, needs: readonly HostNeed[] = QEMU_NEEDS): Kernel[] {
  const missing = needs.filter((need) => !need.present()).map((need) => need.pkg);
  const kernels = series.filter((s) => !installedKernel(s));
  if (missing.length || kernels.length) {
    const what = [...missing, ...kernels.map((s) => `a ${s} kernel`)].join(', ');
    if (process.getuid?.() !== 0) throw new Error(`${what} must be installed, and only root can: run as root, or install them with apt-get`);
    if (!onPath('apt-get')) throw new Error(`${what} must be installed and there is no apt-get here: install them by hand`);
    aptInstall([...missing, ...kernels.map((s) => kernelPackage(s, log))], log);
  }
  return series.map((s) => {
    const kernel = installedKernel(s);
    if (!kernel) throw new Error(`the ${s} kernel is still not in /boot after installing it`);
    return kernel;
  });
}

export function qemuVersion(): string {
  return execFileSync(QEMU, ['--version'], { encoding: 'utf8' }).split('\n')[0];
}
