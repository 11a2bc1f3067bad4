// The Mappings of this thread that are still mapped, held weakly (a Mapping nobody references
// is still collected and freed). Userfaultfd asks here so that its range calls only ever act
// on memory this package mapped, never on V8's heap or anyone else's memory. Internal to
// src/kernel/: index.ts does not export it.
import type { Mapping } from './mapping.js';

const live = new Set<WeakRef<Mapping>>();

export function trackMapping(mapping: Mapping): WeakRef<Mapping> {
  const ref = new WeakRef(mapping);
  live.add(ref);
  return ref;
}

export function untrackMapping(ref: WeakRef<Mapping>): void {
  live.delete(ref);
}

/** The live Mapping that holds all of [start, start + length), if any. */
export function mappingHolding(start: number, length: number): Mapping | undefined {
  if (typeof length !== 'number') return undefined; // the caller's argument check names it
  for (const ref of live) {
    const mapping = ref.deref();
    if (!mapping) live.delete(ref);
    else if (start >= mapping.base && start + length <= mapping.base + mapping.length) return mapping;
  }
  return undefined;
}
