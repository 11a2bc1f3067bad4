// The native addon's surface, typed. Only src/kernel/ imports this module.
import bindings = require('bindings');

export type Address = bigint | number;

export interface NativeMapping {
  readonly address: bigint;
  readonly length: number;
  readonly pageSize: number;
  readonly fd: number;
  readonly mapped: boolean;
  madvise(offset: number, length: number, advice: number): void;
  punchHole(offset: number, length: number): void;
  view(offset?: number, length?: number): ArrayBuffer;
  unmap(): void;
}

export interface NativeUserfaultfd {
  readonly fd: number;
  readonly via: 'dev' | 'syscall';
  readonly lastCount: number;
  api(features: bigint): { features: bigint; ioctls: bigint };
  register(start: Address, length: number, mode: number): bigint;
  unregister(start: Address, length: number): void;
  close(): void;
  copy(dst: Address, src: ArrayBufferView | ArrayBuffer, length: number, mode?: number, srcOffset?: number): number;
  zeropage(dst: Address, length: number, mode?: number): number;
  writeProtect(start: Address, length: number, mode: number): number;
  wake(start: Address, length: number): number;
  continue(start: Address, length: number, mode?: number): number;
  poison(start: Address, length: number, mode?: number): number;
  move(dst: Address, src: Address, length: number, mode?: number): number;
  startEvents(buffer: Float64Array, callback: (count: number) => void): void;
  stopEvents(): void;
  readEvents(buffer: Float64Array): number;
}

export interface Addon {
  Mapping: {
    new (kind: MappingKind, length: number, name?: string): NativeMapping;
    attach(address: Address, length: number): ArrayBuffer;
  };
  Userfaultfd: new (options: { userModeOnly?: boolean; fd?: number }) => NativeUserfaultfd;
  gettid(): number;
  pagemapScan(fd: number, arg: BigUint64Array, vec: BigUint64Array): number;
  pageSize: number;
}

export type MappingKind = 'anonymous' | 'memfd' | 'hugetlb' | 'memfd-hugetlb';

export const addon: Addon = bindings('postcopy');
