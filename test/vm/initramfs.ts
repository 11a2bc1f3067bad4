// The test VM's initramfs: busybox, the node binary and the shared libraries it, the addon and
// the VMM stand-in need (ldd, the dynamic loader included), the built project (dist-test/src,
// dist-test/test, the addon, the page server tests' VMM stand-in compiled here, package.json,
// the run-time dependencies from package.json and theirs) and test/vm/init.sh as /init. Written uncompressed
// (103 MiB; measured under TCG on 6.12, the init starts 6.8 s after QEMU, 6.9 s with gzip -1
// at 42 MiB: no gain, and no compression step) and cached under ~/.cache/postcopy-vm,
// keyed by a hash of every input, so a run whose inputs have not changed reuses it.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, relative } from 'node:path';
import { CpioWriter } from './cpio.js';
import { buildStandin } from '../support/vmm-standin.js';

const BUSYBOX = '/bin/busybox';
/** Bumped when the layout changes, so that older cached images are not reused. */
const LAYOUT_VERSION = 3;

export const CACHE_DIR = join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'postcopy-vm');

interface Entry {
  /** Path in the image, without the leading slash. */
  path: string;
  /** Host file whose bytes go there. */
  source: string;
  mode: number;
}

/** Every file of `dir` (relative to root) that `keep` accepts, recursively. */
function filesUnder(root: string, dir: string, keep: (name: string) => boolean = () => true): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(join(root, dir), { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(root, path, keep));
    else if (entry.isFile() && keep(entry.name)) out.push(path);
  }
  return out;
}

/** Shared libraries `ldd` lists for these binaries, the dynamic loader included. */
function sharedLibraries(binaries: string[]): string[] {
  const libs = new Set<string>();
  for (const binary of binaries) {
    const r = spawnSync('ldd', [binary], { encoding: 'utf8' });
    if (r.status !== 0) {
      // a static binary (busybox-static) has none, and ldd says so with status 1
      if (/not a dynamic executable/.test(`${r.stdout}${r.stderr}`)) continue;
      throw new Error(`ldd ${binary}: ${r.error?.message ?? `${r.stderr}`.trim()}`);
    }
    for (const match of r.stdout.matchAll(/(?:=>\s*)?(\/\S+)\s+\(0x/g)) libs.add(match[1]);
  }
  return [...libs].sort();
}

/**
 * Directories of the packages the built project loads at run time: package.json's
 * dependencies and theirs, found the way Node finds them (the nearest node_modules upwards).
 */
export function runtimeModules(root: string): string[] {
  const found = new Set<string>();
  const visit = (dir: string) => {
    const manifest = JSON.parse(readFileSync(join(root, dir, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
    for (const name of Object.keys(manifest.dependencies ?? {})) {
      const module = resolveModule(root, dir, name);
      if (!found.has(module)) {
        found.add(module);
        visit(module);
      }
    }
  };
  visit('.');
  return [...found].sort();
}

/** `name` as required from the package at `dir`: its own node_modules, then each enclosing package's. */
function resolveModule(root: string, dir: string, name: string): string {
  for (let at = dir; ; ) {
    const candidate = join(at, 'node_modules', name);
    if (existsSync(join(root, candidate, 'package.json'))) return candidate;
    const enclosing = at.lastIndexOf('node_modules/');
    if (enclosing < 0) throw new Error(`${name} (a dependency of ${join(dir, 'package.json')}) is not installed: run npm install`);
    at = at.slice(0, Math.max(0, enclosing - 1)) || '.';
  }
}

/** The project's files in the image, relative to root: built code, addon, manifest, runtime packages. */
export function projectFiles(root: string): string[] {
  const files = filesUnder(root, 'dist-test', (name) => name.endsWith('.js'))
    .filter((path) => path.startsWith('dist-test/src/') || path.startsWith('dist-test/test/'));
  files.push('build/Release/postcopy.node', 'package.json');
  for (const module of runtimeModules(root)) files.push(...filesUnder(root, module));
  return files;
}

/** The VMM stand-in of the page server's tests, built here (the image has no compiler), or undefined without a compiler. */
function standinBinary(log: (line: string) => void): string | undefined {
  try {
    return buildStandin();
  } catch (error) {
    log(`initramfs: no VMM stand-in, the page server step will skip (${(error as Error).message.split('\n')[0]})`);
    return undefined;
  }
}

function entries(root: string, log: (line: string) => void): Entry[] {
  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} is missing (apt-get install busybox-static)`);
  const node = realpathSync(process.execPath);
  const addon = join(root, 'build/Release/postcopy.node');
  if (!existsSync(addon)) throw new Error(`${addon} is missing: build first (npm install)`);
  const standin = standinBinary(log);
  return [
    { path: 'bin/busybox', source: BUSYBOX, mode: 0o755 },
    { path: 'bin/node', source: node, mode: 0o755 },
    { path: 'init', source: join(root, 'test/vm/init.sh'), mode: 0o755 },
    // busybox too: where Debian's dynamic busybox is /bin/busybox, its libraries come along
    ...sharedLibraries(standin ? [BUSYBOX, node, addon, standin] : [BUSYBOX, node, addon]).map((lib) => ({ path: lib.slice(1), source: realpathSync(lib), mode: 0o755 })),
    ...(standin ? [{ path: join('postcopy', relative(root, standin)), source: standin, mode: 0o755 }] : []),
    ...projectFiles(root).map((path) => ({ path: join('postcopy', path), source: join(root, path), mode: path.endsWith('.node') ? 0o755 : 0o644 })),
  ];
}

/** Reuses the cached image for these inputs or writes it; returns its path. */
export function initramfs(root: string, log: (line: string) => void): string {
  const list = entries(root, log);
  const hash = createHash('sha256').update(`layout ${LAYOUT_VERSION}\n`);
  for (const entry of list) hash.update(`${entry.path} ${entry.mode}\n`).update(readFileSync(entry.source));
  const key = hash.digest('hex').slice(0, 16);
  const path = join(CACHE_DIR, `initramfs-${key}.cpio`);
  if (existsSync(path)) {
    log(`initramfs: cached ${path}`);
    return path;
  }
  const started = Date.now();
  mkdirSync(CACHE_DIR, { recursive: true });
  const partial = `${path}.partial`;
  const cpio = new CpioWriter(partial);
  for (const dir of ['proc', 'sys', 'dev', 'tmp', 'root']) cpio.dir(dir);
  cpio.charDevice('dev/console', 5, 1);
  cpio.symlink('bin/sh', 'busybox');
  for (const entry of list) cpio.file(entry.path, readFileSync(entry.source), entry.mode);
  cpio.close();
  // one image is kept: older ones would only fill the disk
  for (const name of readdirSync(CACHE_DIR)) if (name.startsWith('initramfs-') && join(CACHE_DIR, name) !== partial) rmSync(join(CACHE_DIR, name));
  renameSync(partial, path);
  log(`initramfs: wrote ${relative(process.cwd(), path) || path} (${(statSync(path).size / 2 ** 20).toFixed(0)} MiB, ${list.length} files, ${Date.now() - started} ms)`);
  return path;
}
