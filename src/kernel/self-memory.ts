// Writing into this process's own memory through /proc/self/mem. The kernel then faults the
// target pages in itself, one system call per run of pages, where a store from JavaScript takes
// one page fault per fresh 4 KiB page; on a virtual machine that shadows page tables such a
// fault can cost ten times the copy (bench/README.md, "Measurements behind the defaults").
// The first access from user space later pays its fault as a placed page would.
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { hex } from '../base/index.js';

export class SelfMemory {
  private fd: number;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** /proc/self/mem open for writing, or undefined where procfs is not there (then store directly). */
  static open(): SelfMemory | undefined {
    try {
      return new SelfMemory(openSync('/proc/self/mem', 'r+'));
    } catch {
      return undefined;
    }
  }

  /** Copies `length` bytes of `src` from `srcOffset` to `address` (a mapped, writable range of this process). */
  write(address: number, src: Uint8Array, srcOffset: number, length: number): void {
    for (let done = 0; done < length; ) done += writeSync(this.fd, src, srcOffset + done, length - done, address + done);
  }

  /** Reads `length` bytes at `address` into `dst` (never-touched anonymous memory reads as zeros without being allocated). */
  read(address: number, dst: Uint8Array, dstOffset: number, length: number): void {
    for (let done = 0; done < length; ) {
      const n = readSync(this.fd, dst, dstOffset + done, length - done, address + done);
      if (n === 0) throw new Error(`read of /proc/self/mem at ${hex((address + done))} returned nothing`);
      done += n;
    }
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
