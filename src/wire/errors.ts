// Errors of the wire, transport and both engines. Each carries a stable `code`, so that users
// and tests match codes, not message text:
//   ERR_POSTCOPY_PROTOCOL         malformed input (the message names the field and value)
//   ERR_POSTCOPY_STATE            a command in a state that does not allow it
//   ERR_POSTCOPY_MISSING_PAGES    COMPLETE/EOF, or the end of the stream, with pages missing
//   ERR_POSTCOPY_CHANNEL_CLOSED   a connection closed or reset
//   ERR_POSTCOPY_CHANNEL_STALLED  a connection silent (no bytes, no close) past its bound
//   ERR_POSTCOPY_NO_PROGRESS      requested pages stopped arriving on a live connection
//   ERR_POSTCOPY_RECOVERY_TIMEOUT a broken connection not recovered within its bound
//   ERR_POSTCOPY_REFUSED          the destination refused a channel (the reason follows)
//   ERR_POSTCOPY_HANDSHAKE        a channel's handshake failed or timed out
//   ERR_POSTCOPY_PEER_FAILED      the other side failed (SHUT with a non-zero status)
//   ERR_POSTCOPY_INTERRUPTED      stopped by a signal or by the caller
//   ERR_POSTCOPY_GUEST            the guest could not be resumed or stopped
//   ERR_POSTCOPY_ADDRESS          an address that is not HOST:PORT, [IPv6]:PORT or unix:PATH
//   ERR_POSTCOPY_CONFIG           a setting that cannot work (TCP without a token, a socket
//                                 in a directory that does not exist)
//   ERR_POSTCOPY_INTERNAL         an invariant of this package does not hold (a bug)

export type MigrationErrorCode =
  | 'ERR_POSTCOPY_MISSING_PAGES'
  | 'ERR_POSTCOPY_CHANNEL_CLOSED'
  | 'ERR_POSTCOPY_CHANNEL_STALLED'
  | 'ERR_POSTCOPY_NO_PROGRESS'
  | 'ERR_POSTCOPY_RECOVERY_TIMEOUT'
  | 'ERR_POSTCOPY_REFUSED'
  | 'ERR_POSTCOPY_HANDSHAKE'
  | 'ERR_POSTCOPY_PEER_FAILED'
  | 'ERR_POSTCOPY_INTERRUPTED'
  | 'ERR_POSTCOPY_GUEST'
  | 'ERR_POSTCOPY_ADDRESS'
  | 'ERR_POSTCOPY_CONFIG'
  | 'ERR_POSTCOPY_INTERNAL';

export class MigrationError extends Error {
  constructor(readonly code: MigrationErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MigrationError';
  }
}

/** A broken connection: recovery may heal it (the other codes fail the migration). */
export function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return code === 'ERR_POSTCOPY_CHANNEL_CLOSED' || code === 'ERR_POSTCOPY_CHANNEL_STALLED' || code === 'ERR_POSTCOPY_NO_PROGRESS';
}

export class ProtocolError extends Error {
  readonly code = 'ERR_POSTCOPY_PROTOCOL';

  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

export function isProtocolError(error: unknown): error is ProtocolError {
  return error instanceof ProtocolError;
}

