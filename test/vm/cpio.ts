// A writer of the newc cpio format (what the kernel unpacks as an initramfs): directories,
// regular files, symlinks and device nodes, written without root (a header is only bytes).
import { closeSync, openSync, writeSync } from 'node:fs';

const S_IFDIR = 0o040000, S_IFREG = 0o100000, S_IFLNK = 0o120000, S_IFCHR = 0o020000;

export class CpioWriter {
  private fd: number;
  private ino = 1;
  private readonly dirs = new Set<string>(['']);

  constructor(path: string) {
    this.fd = openSync(path, 'w');
  }

  /** Parent directories are added on the way; `path` is relative to the root, without a leading slash. */
  dir(path: string, mode = 0o755): void {
    if (this.dirs.has(path)) return;
    this.parents(path);
    this.dirs.add(path);
    this.entry(path, S_IFDIR | mode, Buffer.alloc(0));
  }

  file(path: string, data: Buffer, mode = 0o644): void {
    this.parents(path);
    this.entry(path, S_IFREG | mode, data);
  }

  symlink(path: string, target: string): void {
    this.parents(path);
    this.entry(path, S_IFLNK | 0o777, Buffer.from(target));
  }

  charDevice(path: string, major: number, minor: number, mode = 0o600): void {
    this.parents(path);
    this.entry(path, S_IFCHR | mode, Buffer.alloc(0), major, minor);
  }

  close(): void {
    this.entry('TRAILER!!!', 0, Buffer.alloc(0));
    closeSync(this.fd);
    this.fd = -1;
  }

  private parents(path: string): void {
    const slash = path.lastIndexOf('/');
    if (slash > 0) this.dir(path.slice(0, slash));
  }

  private entry(name: string, mode: number, data: Buffer, rdevMajor = 0, rdevMinor = 0): void {
    const fields = [this.ino++, mode, 0, 0, (mode & S_IFDIR) === S_IFDIR ? 2 : 1, 0, data.length, 0, 0, rdevMajor, rdevMinor, name.length + 1, 0];
    const header = '070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join('');
    const head = Buffer.from(`${header}${name}\0`);
    this.write(head);
    this.write(data);
  }

  private write(bytes: Buffer): void {
    writeSync(this.fd, bytes);
    const pad = (4 - (bytes.length % 4)) % 4;
    if (pad) writeSync(this.fd, Buffer.alloc(pad));
  }
}
