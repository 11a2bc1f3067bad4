// The Mappings of this thread that are still mapped, held weakly (a Mapping nobody references
// is still collected and freed). Userfaultfd asks here so that its range calls only ever act
// on memory this package mapped, never on V8's heap or anyone else's memory. Internal to
// src/kernel/: index.ts does not export it.
import { RangeIndex } from '../base/index.js';
import type { Mapping } from './mapping.js';

const live = new RangeIndex<WeakRef<Mapping>>();

export function trackMapping(mapping: Mapping): WeakRef<Mapping> {
  const start = mapping.base;
  const end = start + mapping.length;
  // a collected Mapping's range may have been handed out again by the kernel: forget it first
  for (const old of live.overlapping(start, end)) if (!old.deref()) live.remove(old);
  const ref = new WeakRef(mapping);
  live.add(start, end, ref);
  return ref;
}

export function untrackMapping(ref: WeakRef<Mapping>): void {
  live.remove(ref);
}

/** The live Mapping that holds all of [start, start + length), if any. */
export function mappingHolding(start: number, length: number): Mapping | undefined {
  if (typeof length !== 'number') return undefined; // the caller's argument check names it
  const ref = live.find(start, length);
  const mapping = ref?.deref();
  if (ref && !mapping) live.remove(ref);
  return mapping;
}
