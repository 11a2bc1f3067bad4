// Wire format v1 constants. RAM flags, command and return-path numbers follow QEMU where QEMU has
// them (migration/ram.c, savevm.c, migration.c); 0x20 and up are this project's own.
import { hex } from '../base/index.js';


export const MAGIC = 0x50435059; // 'PCPY'
export const VERSION = 1;

/** Frame kinds, source -> destination. */
export const FrameKind = {
  EOF: 0x00,
  RAM: 0x02,
  COMMAND: 0x08,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/** RAM record flags (QEMU's RAM_SAVE_FLAG_*), in the low 12 bits of the record's u64. */
export const RamFlag = {
  FULL: 0x01, // obsolete since 2009: rejected
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40, // not supported: rejected
  HOOK: 0x80, // RDMA only: rejected as unknown
  MULTIFD_FLUSH: 0x200,
} as const;

/** Offsets are target-page aligned, so the low 12 bits of a record's u64 are free for flags. */
export const RAM_FLAGS_MASK = 0xfff;

const FLAG_NAMES: [number, string][] = [
  [RamFlag.FULL, 'FULL'],
  [RamFlag.ZERO, 'ZERO'],
  [RamFlag.MEM_SIZE, 'MEM_SIZE'],
  [RamFlag.PAGE, 'PAGE'],
  [RamFlag.EOS, 'EOS'],
  [RamFlag.CONTINUE, 'CONTINUE'],
  [RamFlag.XBZRLE, 'XBZRLE'],
  [RamFlag.HOOK, 'HOOK'],
  [RamFlag.MULTIFD_FLUSH, 'MULTIFD_FLUSH'],
];

/** 'ZERO|CONTINUE', or the hex of bits that have no name. */
export function ramFlagNames(flags: number): string {
  const names: string[] = [];
  let rest = flags;
  for (const [bit, name] of FLAG_NAMES) {
    if (flags & bit) {
      names.push(name);
      rest &= ~bit;
    }
  }
  if (rest) names.push(hex(rest));
  return names.length ? names.join('|') : 'none';
}

/** Commands (u16), inside COMMAND frames. */
export const Command = {
  OPEN_RETURN_PATH: 1,
  PING: 2,
  POSTCOPY_ADVISE: 3,
  POSTCOPY_LISTEN: 4,
  POSTCOPY_RUN: 5,
  POSTCOPY_RAM_DISCARD: 6,
  POSTCOPY_RESUME: 7,
  PACKAGED: 8,
  RECV_BITMAP: 10,
  HELLO: 0x20,
  COMPLETE: 0x21,
} as const;
export type Command = (typeof Command)[keyof typeof Command];

const COMMAND_NAMES = new Map<number, string>(Object.entries(Command).map(([name, value]) => [value, name]));

export function commandName(cmd: number): string | undefined {
  return COMMAND_NAMES.get(cmd);
}

/** Return path message types (u16), destination -> source. */
export const ReturnPathType = {
  SHUT: 1,
  PONG: 2,
  REQ_PAGES_ID: 3,
  REQ_PAGES: 4,
  RECV_BITMAP: 5,
  RESUME_ACK: 6,
  HELLO_ACK: 0x20,
  REFUSE: 0x21,
  CHALLENGE: 0x22,
} as const;
export type ReturnPathType = (typeof ReturnPathType)[keyof typeof ReturnPathType];

/**
 * A PING whose value has this bit asks for a PONG once everything sent before it is handled,
 * even while the destination's main stream waits at a MULTIFD_FLUSH (the source's round trips).
 * Without it (heartbeats) the PONG says only "alive", and comes at once during that wait, so a
 * long bulk drain does not look like a stalled connection. QEMU answers every PING in order.
 */
export const PING_IN_ORDER = 0x80000000;

/**
 * SHUT's status. QEMU sends 0 (done) or 1 (failed) and takes any other value as failed too;
 * GUEST_ENDED is ours: the destination's guest is gone (its VM stopped), so nothing more is
 * wanted, which is no fault of either side.
 */
export const ShutStatus = { DONE: 0, FAILED: 1, GUEST_ENDED: 2 } as const;

const RP_NAMES = new Map<number, string>(Object.entries(ReturnPathType).map(([name, value]) => [value, name]));

export function returnPathTypeName(type: number): string | undefined {
  return RP_NAMES.get(type);
}

/** Channel roles in HELLO. */
export const Role = {
  MAIN: 0,
  PREEMPT: 1,
  BULK: 2,
} as const;
export type Role = (typeof Role)[keyof typeof Role];

export function roleName(role: number): string | undefined {
  return role === 0 ? 'main' : role === 1 ? 'preempt' : role === 2 ? 'bulk' : undefined;
}

/**
 * HELLO capability bits of the main channel. PREEMPT: a preempt channel joins this migration,
 * so the destination waits for its EOF too before it judges whether pages are missing.
 * Bits 8-15 (BULK_SHIFT) count the bulk channels that join (0: pages go on the main channel).
 */
export const Capability = {
  PREEMPT: 1,
  BULK_SHIFT: 8,
  BULK_MASK: 0xff00,
} as const;

/** Most bulk channels a migration may open. */
export const MAX_BULK_CHANNELS = 16;

/** RESUME_ACK value: the state the destination is in after the resume. */
export const ResumeState = {
  RUNNING: 0,
  /** The connection broke before RUN arrived: the source sends the device state and RUN again. */
  LISTENING: 1,
  /** Every page had arrived already: nothing more to send. */
  END: 2,
} as const;

/** POSTCOPY_RAM_DISCARD payload version (QEMU's postcopy_ram_discard_version). */
export const DISCARD_VERSION = 0;

/** Trails the bitmap of a RECV_BITMAP return-path message (QEMU's RAMBLOCK_RECV_BITMAP_ENDING). */
export const RECV_BITMAP_ENDING = 0x0123456789abcdefn;

/** HELLO auth, CHALLENGE nonce: HMAC-SHA256 sized. */
export const AUTH_BYTES = 32;
export const NONCE_BYTES = 32;

/** Default ceiling on a PACKAGED blob (QEMU's is 16 MiB; device state of big guests needs more). */
export const DEFAULT_MAX_PACKAGED_BYTES = 64 * 1024 * 1024;

export const MAX_IDSTR_BYTES = 255;
