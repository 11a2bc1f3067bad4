// What the stream decoder yields: frames, RAM records and commands as plain events, each
// naming its block (whatever the caller resolves an idstr to: see blocks.ts).
import type { BlockShape } from './blocks.js';
import type { Command, Role } from './constants.js';

export interface MemSizeBlock {
  idstr: string;
  usedLength: number;
  pageSize: number;
}

/** A discarded range in bytes within the block: [start, length]. */
export type ByteRange = [start: number, length: number];

export interface HelloFields {
  sessionId: string;
  role: Role;
  /** Channel index: 0 for main and preempt, N for bulk channel N. */
  index: number;
  capabilities: number;
  /** 32 bytes: helloAuth(...) or zeros when there is no token. */
  auth: Uint8Array;
}

export type CommandEvent<B> =
  | { type: 'command'; cmd: typeof Command.OPEN_RETURN_PATH }
  | { type: 'command'; cmd: typeof Command.PING; value: number }
  | { type: 'command'; cmd: typeof Command.POSTCOPY_ADVISE; pageSizeSummary: number; targetPageSize: number }
  | { type: 'command'; cmd: typeof Command.POSTCOPY_LISTEN }
  | { type: 'command'; cmd: typeof Command.POSTCOPY_RUN }
  | { type: 'command'; cmd: typeof Command.POSTCOPY_RAM_DISCARD; block: B; idstr: string; ranges: ByteRange[] }
  | { type: 'command'; cmd: typeof Command.POSTCOPY_RESUME }
  | { type: 'command'; cmd: typeof Command.PACKAGED; data: Uint8Array }
  | { type: 'command'; cmd: typeof Command.RECV_BITMAP; block: B; idstr: string }
  | ({ type: 'command'; cmd: typeof Command.HELLO } & HelloFields)
  | { type: 'command'; cmd: typeof Command.COMPLETE };

export type StreamEvent<B = BlockShape> =
  | { type: 'header'; version: number }
  | { type: 'ram-page'; block: B; idstr: string; offset: number; data: Uint8Array }
  | { type: 'ram-zero'; block: B; idstr: string; offset: number }
  | { type: 'mem-size'; total: number; blocks: MemSizeBlock[] }
  | { type: 'ram-eos' }
  | { type: 'multifd-flush' }
  | CommandEvent<B>
  | { type: 'eof' };
