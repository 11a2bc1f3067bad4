// The native addon's surface, typed. Only src/kernel/ imports this module.
import bindings = require('bindings');

export type Address = bigint | number;

export interface NativeMapping {
  readonly address: bigint;
  readonly length: number;
  readonly pageSize: number;
  readonly fd: number;
  madvise(offset: number, length: number, advice: number): void;
  /** (offset, length) pairs; one process_madvise per 1024 ranges where the kernel allows. Returns the syscalls made. */
  madviseRanges(ranges: Float64Array, advice: number): number;
  punchHole(offset: number, length: number): void;
  view(offset?: number, length?: number): ArrayBuffer;
  unmap(): void;
}

export interface NativeUserfaultfd {
  readonly fd: number;
  readonly via: 'dev' | 'syscall';
  api(features: bigint): { features: bigint; ioctls: bigint };
  register(start: Address, length: number, mode: number): bigint;
  unregister(start: Address, length: number): void;
  close(): void;
  startEvents(buffer: Float64Array, callback: (count: number) => void): void;
  stopEvents(): void;
  readEvents(buffer: Float64Array): number;
}

/** A whole file mapped PROT_READ, MAP_SHARED; no view over it is ever made. */
export interface NativeFileMapping {
  /** 0n once unmapped. */
  readonly address: bigint;
  /** (start, end) pairs where the file has data; past maxRanges - 1 pairs, the rest is one. */
  dataRanges(maxRanges: number): Float64Array;
  unmap(): void;
}

/** The placement ioctls: bytes done (>= 0) or -errno; they take the descriptor, not the object. */
export interface NativePlacement {
  copy(fd: number, dst: Address, src: ArrayBufferView | ArrayBuffer, length: number, mode?: number, srcOffset?: number): number;
  /** UFFDIO_COPY from an address of this process (inside a live FileMapping: checked by the caller). */
  copyFrom(fd: number, dst: Address, srcAddress: Address, length: number, mode?: number): number;
  zeropage(fd: number, dst: Address, length: number, mode?: number): number;
  writeProtect(fd: number, start: Address, length: number, mode: number): number;
  wake(fd: number, start: Address, length: number): number;
  continue(fd: number, start: Address, length: number, mode?: number): number;
  poison(fd: number, start: Address, length: number, mode?: number): number;
  move(fd: number, dst: Address, src: Address, length: number, mode?: number): number;
  /** Bytes the last call completed before it returned an error. */
  lastCount(): number;
}

export interface Addon {
  placement: NativePlacement;
  Mapping: {
    new (kind: MappingKind, length: number, name?: string): NativeMapping;
    attach(address: Address, length: number): ArrayBuffer;
  };
  Userfaultfd: new (options: { userModeOnly?: boolean; fd?: number }) => NativeUserfaultfd;
  FileMapping: new (fd: number, length: number) => NativeFileMapping;
  /** bytes: >= 0 (0 at end of stream), or -EAGAIN when nothing is there yet. */
  receiveMessage(fd: number, buffer: ArrayBufferView | ArrayBuffer, maxDescriptors: number): { bytes: number; descriptors: number[]; truncated: boolean };
  peerCredentials(fd: number): { pid: number; uid: number; gid: number };
  socketPair(): [number, number];
  shutdownSocket(fd: number): void;
  setSocketBuffers(fd: number, sendBytes: number, receiveBytes: number): { send: number; receive: number };
  gettid(): number;
  exitNow(code: number): never;
  duplicateDescriptor(fd: number): number;
  pagemapScan(fd: number, arg: BigUint64Array, vec: BigUint64Array): number;
  crc32c(bytes: Uint8Array, seed?: number, software?: boolean): number;
  checksumPages(bytes: Uint8Array, pageSize: number, firstIndex: number): number;
  crc32cHardware: boolean;
  markZeroPages(memory: Uint8Array, offsets: Float64Array, pageSize: number, zero: Uint8Array): number;
  writeRuns(fd: number, header: Uint8Array, memory: Uint8Array, runs: Float64Array, timeoutMs: number): number;
  pageSize: number;
}

export type MappingKind = 'anonymous' | 'memfd' | 'hugetlb' | 'memfd-hugetlb';

function load(): Addon {
  try {
    return bindings('postcopy');
  } catch (cause) {
    // bindings' "Could not locate the bindings file" has no code; dlopen's own failure does
    const code = (cause as { code?: string }).code ?? 'ERR_POSTCOPY_ADDON';
    const error = new Error(`the postcopy native addon could not be loaded (build it with "npx node-gyp rebuild"): ${(cause as Error).message}`, { cause });
    throw Object.assign(error, { code });
  }
}

export const addon: Addon = load();
