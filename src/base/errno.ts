// The errno values the hot path meets, negative, as the addon's status-returning calls
// report them (bytes done >= 0, or -errno). From Node's own table: never written as numbers.
import { constants } from 'node:os';

const { errno } = constants;

export const EEXIST = -errno.EEXIST;
export const EAGAIN = -errno.EAGAIN;
export const EFAULT = -errno.EFAULT;
export const EBADF = -errno.EBADF;
export const ESRCH = -errno.ESRCH;
export const ENOENT = -errno.ENOENT;
export const EINVAL = -errno.EINVAL;
