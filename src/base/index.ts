// The foundation every layer may import: errors and their codes, number formatting, errno
// values, sizes, the address-range index. It imports nothing of this package.
export { ERROR_CODES, PostcopyError, ProtocolError, errorCode, isConnectionError, type ErrorCode } from './errors.js';
export { hex, round } from './format.js';
export { EAGAIN, EBADF, EEXIST, EFAULT, EINVAL, ENOENT, ESRCH } from './errno.js';
export { HUGE_PAGE_SIZE, MiB, TARGET_PAGE_SIZE } from './units.js';
export { RangeIndex } from './range-index.js';
