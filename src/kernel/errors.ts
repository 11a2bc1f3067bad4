// Errors of the kernel layer, shaped like Node's own (the ERR_POSTCOPY_* codes are listed with
// the others in src/base/errors.ts). Every error src/kernel/ throws has a code:
//   EEXIST, EINVAL, EBADF, ...  a syscall failed; also `errno` (negative, as libuv reports it)
//                               and `syscall` ('ioctl(UFFDIO_COPY)'); the message names the range
//   ERR_POSTCOPY_RANGE          a range call refused before any syscall: not inside a range
//                               registered on this userfaultfd in a live Mapping (RangeError)
//   ERR_POSTCOPY_UNSUPPORTED    the kernel does not grant a feature asked for
//   ERR_POSTCOPY_UNMAPPED       a Mapping used after unmap()
//   ERR_POSTCOPY_ADDON          the native addon could not be found (dlopen failures keep
//                               Node's ERR_DLOPEN_FAILED)
//   ERR_INVALID_ARG_TYPE, ERR_INVALID_ARG_VALUE, ERR_OUT_OF_RANGE   bad arguments, as in Node
import { getSystemErrorMap } from 'node:util';

export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

export type CodedError = Error & { code: string };

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

export function coded<E extends Error>(error: E, code: string): E & { code: string } {
  return Object.assign(error, { code });
}

/**
 * Node's argument error for an address (bigint or number) or a length (number) that is not a
 * non-negative integer; undefined when it is one. For cold paths: the addon checks again.
 */
export function argumentError(name: string, value: unknown, isAddress: boolean): CodedError | undefined {
  const integer = typeof value === 'bigint' && isAddress ? value >= 0n : Number.isSafeInteger(value) && (value as number) >= 0;
  if (integer) return undefined;
  if (typeof value === 'number' || (typeof value === 'bigint' && isAddress)) {
    return coded(new RangeError(`The value of "${name}" is out of range. It must be a non-negative integer. Received ${value}`), 'ERR_OUT_OF_RANGE');
  }
  const types = isAddress ? 'bigint or number' : 'number';
  return coded(new TypeError(`The "${name}" argument must be of type ${types}. Received type ${typeof value}`), 'ERR_INVALID_ARG_TYPE');
}
