// The test VM's initramfs: busybox, the node binary and the shared libraries it and the addon
// need (ldd, the dynamic loader included), the built project (dist-test/src, dist-test/test, the addon,
// package.json, the runtime node_modules) and test/vm/init.sh as /init. Written uncompressed
// (103 MiB; measured under TCG on 6.12, the init starts 6.8 s after QEMU, 6.9 s with gzip -1
// at 42 MiB: no gain, and no compression step) and cached under ~/.cache/postcopy-vm,
// keyed by a hash of every input, so a run whose inputs have not changed reuses it.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, relative } from 'node:path';
import { CpioWriter } from './cpio.js';

/** Packages the built project loads at run time (the addon through `bindings`). */
const RUNTIME_MODULES = ['bindings', 'file-uri-to-path'];
const BUSYBOX = '/bin/busybox';
/** Bumped when the layout changes, so that older cached images are not reused. */
const LAYOUT_VERSION = 1;

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
    const out = execFileSync('ldd', [binary], { encoding: 'utf8' });
    for (const match of out.matchAll(/(?:=>\s*)?(\/\S+)\s+\(0x/g)) libs.add(match[1]);
  }
  return [...libs].sort();
}

function entries(root: string): Entry[] {
  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} is missing (apt-get install busybox-static)`);
  const node = realpathSync(process.execPath);
  const addon = join(root, 'build/Release/postcopy.node');
  if (!existsSync(addon)) throw new Error(`${addon} is missing: build first (npm install)`);
  const list: Entry[] = [
    { path: 'bin/busybox', source: BUSYBOX, mode: 0o755 },
    { path: 'bin/node', source: node, mode: 0o755 },
    { path: 'init', source: join(root, 'test/vm/init.sh'), mode: 0o755 },
    ...sharedLibraries([node, addon]).map((lib) => ({ path: lib.slice(1), source: realpathSync(lib), mode: 0o755 })),
  ];
  const project = (path: string, mode = 0o644) => list.push({ path: join('postcopy', path), source: join(root, path), mode });
  for (const path of filesUnder(root, 'dist-test', (name) => name.endsWith('.js'))) {
    if (path.startsWith('dist-test/src/') || path.startsWith('dist-test/test/')) project(path);
  }
  project('build/Release/postcopy.node', 0o755);
  project('package.json');
  for (const module of RUNTIME_MODULES) for (const path of filesUnder(root, join('node_modules', module))) project(path);
  return list;
}

/** Reuses the cached image for these inputs or writes it; returns its path. */
export function initramfs(root: string, log: (line: string) => void): string {
  const list = entries(root);
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
