// Errors for hot-path statuses (-errno), shaped like the addon's errors and Node's own:
// `code` ('EEXIST'), `errno` (negative, as libuv reports it), `syscall`.
import { getSystemErrorMap } from 'node:util';

export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

const systemErrors = getSystemErrorMap();

/** `status` is a negative errno, as the addon's hot-path calls return it. */
export function errnoError(status: number, syscall: string, detail: string): SystemError {
  const [code, message] = systemErrors.get(status) ?? [`E${-status}`, 'unknown error'];
  const error = new Error(`${code}: ${message}, ${syscall} ${detail}`) as SystemError;
  error.code = code;
  error.errno = status;
  error.syscall = syscall;
  return error;
}

export function hex(address: bigint | number): string {
  return '0x' + address.toString(16);
}
