// Errors of the kernel layer, shaped like Node's own (the ERR_POSTCOPY_* codes are listed with
// the others in src/base/errors.ts). Every error src/kernel/ throws has a code:
//   EEXIST, EINVAL, EBADF, ...  a syscall failed; also `errno` (negative, as libuv reports it)
//                               and `syscall` ('ioctl(UFFDIO_COPY)'); the message names the range
//   ERR_POSTCOPY_RANGE          a range call refused before any syscall: not inside a range
//                               registered on this userfaultfd in a live Mapping (or in a
//                               range another process declared: adoptForeign) (RangeError)
//   ERR_POSTCOPY_UNSUPPORTED    the kernel does not grant a feature asked for
//   ERR_POSTCOPY_UNMAPPED       a Mapping used after unmap(), a FileMapping read after close()
//   ERR_POSTCOPY_ADDON          the native addon could not be found (dlopen failures keep
//                               Node's ERR_DLOPEN_FAILED)
//   ERR_INVALID_ARG_TYPE, ERR_INVALID_ARG_VALUE, ERR_OUT_OF_RANGE   bad arguments, as in Node
import { getSystemErrorMap, inspect } from 'node:util';

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

/** Node's ERR_INVALID_ARG_VALUE: "The argument 'path' must be .... Received '/tmp/x'". */
export function invalidArgument(name: string, reason: string, value: unknown): CodedError {
  return coded(new TypeError(`The argument '${name}' ${reason}. Received ${inspect(value)}`), 'ERR_INVALID_ARG_VALUE');
}

/**
 * Node's argument error for an address (bigint or number) or a length (number) that is not a
 * non-negative integer; undefined when it is one. For cold paths: the addon checks again, and
 * words it the same (native/args.cc), as Node's lib/internal/errors.js does.
 */
export function argumentError(name: string, value: unknown, isAddress: boolean): CodedError | undefined {
  const integer = typeof value === 'bigint' && isAddress ? value >= 0n && value < 2n ** 64n : Number.isSafeInteger(value) && (value as number) >= 0;
  if (integer) return undefined;
  // addNumericalSeparator: 1099511627776 -> 1_099_511_627_776
  const separated = (digits: string): string => {
    let i = digits.length;
    let groups = '';
    for (const start = digits[0] === '-' ? 1 : 0; i >= start + 4; i -= 3) groups = `_${digits.slice(i - 3, i)}${groups}`;
    return digits.slice(0, i) + groups;
  };
  if (typeof value === 'number' || (typeof value === 'bigint' && isAddress)) {
    const received = typeof value === 'bigint'
      ? `${value > 2n ** 32n || value < -(2n ** 32n) ? separated(String(value)) : value}n`
      : Number.isInteger(value) && Math.abs(value) > 2 ** 32 ? separated(String(value)) : Object.is(value, -0) ? '-0' : String(value);
    return coded(new RangeError(`The value of "${name}" is out of range. It must be a non-negative integer. Received ${received}`), 'ERR_OUT_OF_RANGE');
  }
  // determineSpecificType (an object without a named constructor, which Node inspects: "type object")
  const specific = (v: unknown): string => {
    if (v === null || v === undefined) return String(v);
    if (typeof v === 'function') return `function ${String(v.name)}`;
    if (typeof v === 'object') {
      const made: unknown = (v as { constructor?: unknown }).constructor;
      const named = (typeof made === 'function' || (typeof made === 'object' && made !== null)) && 'name' in made;
      return named ? `an instance of ${String(made.name)}` : 'type object';
    }
    if (typeof v === 'string') {
      const shown = v.length > 28 ? `${v.slice(0, 25)}...` : v;
      return `type string (${shown.includes("'") ? JSON.stringify(shown) : `'${shown}'`})`;
    }
    return `type ${typeof v} (${Object.is(v, -0) ? '-0' : String(v)}${typeof v === 'bigint' ? 'n' : ''})`;
  };
  const types = isAddress ? 'one of type bigint or number' : 'of type number';
  return coded(new TypeError(`The "${name}" argument must be ${types}. Received ${specific(value)}`), 'ERR_INVALID_ARG_TYPE');
}
