// What Userfaultfd.adoptForeign needs to know of another process's userfaultfd: the ranges
// that process declared (checked here: they stand where this process's Mappings stand for
// its own userfaultfds), and the features its handshake enabled (the kernel shows them in
// fdinfo).
import { readFileSync } from 'node:fs';
import { RangeIndex, hex } from '../base/index.js';
import { addon } from './addon.js';
import { FEATURES, maskToNames, type Feature } from './constants.js';
import { argumentError, coded } from './errors.js';

/** A range of the other process's memory, registered on its userfaultfd by that process. */
export interface ForeignRange {
  start: number;
  length: number;
}

/** What a registered range lies in: a Mapping of this process, or a declared range (always there). */
export interface Holder {
  readonly mapped: boolean;
}

/**
 * The declared ranges, indexed, each its own holder (a placement must lie inside one of them,
 * as inside one Mapping). Throws ERR_POSTCOPY_RANGE, naming the range, unless every range is
 * page-aligned and non-empty and no two overlap.
 */
export function declaredRanges(ranges: readonly ForeignRange[]): RangeIndex<Holder> {
  if (!Array.isArray(ranges) || ranges.length === 0) throw refusal('at least one range must be declared');
  const page = addon.pageSize;
  const sorted = ranges.map(({ start, length }, i) => {
    const invalid = argumentError(`ranges[${i}].start`, start, false) ?? argumentError(`ranges[${i}].length`, length, false);
    if (invalid) throw invalid;
    if (start % page !== 0 || length % page !== 0 || length === 0) {
      throw refusal(`ranges[${i}] ${hex(start)} length ${length} is not a non-empty run of whole ${page}-byte pages`);
    }
    return { start, end: start + length, i };
  }).sort((a, b) => a.start - b.start);
  for (let k = 1; k < sorted.length; k++) {
    const [a, b] = [sorted[k - 1], sorted[k]];
    if (b.start < a.end) throw refusal(`ranges[${b.i}] at ${hex(b.start)} overlaps ranges[${a.i}] ${hex(a.start)}..${hex(a.end)}`);
  }
  return new RangeIndex(sorted.map(({ start, end }) => ({ start, end, value: { mapped: true } })));
}

function refusal(why: string): RangeError {
  return coded(new RangeError(`adoptForeign refused: ${why}`), 'ERR_POSTCOPY_RANGE');
}

/**
 * The features the owner's UFFDIO_API handshake enabled on the descriptor, from the "API:"
 * line of /proc/self/fdinfo/FD ("API:\taa:80000108:..."; bit 31 is the kernel's own
 * "handshake done" mark). None if the kernel does not say.
 */
export function handshakeFeatures(fd: number): Feature[] {
  const match = /^API:\s*[0-9a-f]+:([0-9a-f]+):/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return match ? maskToNames(BigInt(`0x${match[1]}`), FEATURES) : [];
}
