// Every error this package throws on purpose carries a stable `code` from one list, so that
// users and tests match codes, not message text. Errors of a failed system call or of a bad
// argument are shaped like Node's own instead (code 'EEXIST' or 'ERR_OUT_OF_RANGE', with
// errno and syscall): see src/kernel/errors.ts.

export const ERROR_CODES = {
  // wire and engines
  ERR_POSTCOPY_PROTOCOL: 'malformed input (the message names the field and value)',
  ERR_POSTCOPY_STATE: 'a command in a state that does not allow it',
  ERR_POSTCOPY_MISSING_PAGES: 'COMPLETE/EOF, or the end of the stream, with pages missing',
  ERR_POSTCOPY_CHANNEL_CLOSED: 'a connection closed or reset',
  ERR_POSTCOPY_CHANNEL_STALLED: 'a connection silent (no bytes, no close) past its bound',
  ERR_POSTCOPY_NO_PROGRESS: 'requested pages stopped arriving on a live connection',
  ERR_POSTCOPY_RECOVERY_TIMEOUT: 'a broken connection not recovered within its bound',
  ERR_POSTCOPY_REFUSED: 'the destination refused a channel (the reason follows)',
  ERR_POSTCOPY_HANDSHAKE: "a channel's handshake failed or timed out",
  ERR_POSTCOPY_TLS: 'a TLS handshake failed: a certificate not trusted or expired, another key, or a peer without TLS (the reason follows)',
  ERR_POSTCOPY_PEER_FAILED: 'the other side failed (SHUT with a non-zero status)',
  ERR_POSTCOPY_GUEST_ENDED: "the destination's guest ended before every page arrived: nothing more is wanted",
  ERR_POSTCOPY_INTERRUPTED: 'stopped by a signal or by the caller',
  ERR_POSTCOPY_GUEST: 'the guest could not be resumed or stopped',
  ERR_POSTCOPY_ADDRESS: 'an address that is not HOST:PORT, [IPv6]:PORT or unix:PATH',
  ERR_POSTCOPY_CONFIG: 'a setting that cannot work (TCP without a token, a socket in a missing directory)',
  ERR_POSTCOPY_USAGE: 'a command line that cannot be run (the message names the option and value)',
  ERR_POSTCOPY_INTERNAL: 'an invariant of this package does not hold (a bug)',
  // kernel layer
  ERR_POSTCOPY_RANGE: 'a range call refused before any syscall: not inside a registered range of a live Mapping (or of the ranges another process declared)',
  ERR_POSTCOPY_UNSUPPORTED: 'the kernel does not grant a feature asked for',
  ERR_POSTCOPY_UNMAPPED: 'a Mapping used after unmap(), a FileMapping after close()',
  ERR_POSTCOPY_ADDON: 'the native addon could not be found',
  // snapshots and restore
  ERR_SNAPSHOT_FAILED: 'a background snapshot failed (the guest runs on, unprotected)',
  ERR_SNAPSHOT_FORMAT: 'a snapshot file is damaged (the message names the field and offset)',
  ERR_SNAPSHOT_INCOMPLETE: 'a snapshot file is not complete (interrupted, or failed)',
  ERR_RESTORE_FAILED: 'a restore could not read or check a page',
  ERR_RESTORE_TARGET: 'a restore target mapping does not fit its block',
  ERR_WORKING_SET: 'a working-set file is stale, damaged or foreign',
  // the reference guest
  ERR_GUEST_CORRUPTION: 'a reference guest thread found a page corrupt before writing it',
  ERR_GUEST_NOT_VERIFIED: "the reference guest's memory failed verification (the report names the pages)",
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** The one base class of this package's errors: a message and a code from ERROR_CODES. */
export class PostcopyError extends Error {
  constructor(readonly code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PostcopyError';
  }
}

/** Malformed input on the wire or in a file record: fails what read it, naming the field. */
export class ProtocolError extends PostcopyError {
  constructor(message: string) {
    super('ERR_POSTCOPY_PROTOCOL', message);
    this.name = 'ProtocolError';
  }
}

/** The code of any error (ours, Node's, a system error), if it has one. */
export function errorCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** A broken connection: recovery may heal it (the other codes fail the migration). */
export function isConnectionError(error: unknown): boolean {
  const code = errorCode(error);
  return code === 'ERR_POSTCOPY_CHANNEL_CLOSED' || code === 'ERR_POSTCOPY_CHANNEL_STALLED' || code === 'ERR_POSTCOPY_NO_PROGRESS';
}
