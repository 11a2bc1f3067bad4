// Every malformed input the decoders see becomes a ProtocolError naming the field and value.

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

export function hex(value: number | bigint): string {
  return '0x' + value.toString(16);
}
