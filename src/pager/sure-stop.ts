// After a failed migration no page will arrive, and a guest thread must never be woken onto a
// zero page: closing the userfaultfd would do exactly that. So the descriptor closes only
// once the guest is stopped, and a guest that cannot be stopped (a thread blocked in a fault
// cannot be ended from JavaScript) is declared stuck: `stuck` ends those threads, by default
// by ending the process (exitNow). See docs/architecture.md, "Ending for sure".
import { TARGET_PAGE_SIZE } from '../base/index.js';
import type { Userfaultfd } from '../kernel/index.js';
import type { GuestBlock } from './guest-block.js';

export interface FailedGuest {
  uffd: Userfaultfd;
  blocks: Iterable<GuestBlock>;
  /** Whether the blocks are registered (LISTEN happened): before that nothing can fault. */
  registered: boolean;
  /** Host pages guest threads are blocked on right now. */
  waiting: number;
  /** Stops reading fault events (the service keeps reading until then: a new fault is stuck too). */
  stopFaults: () => void;
  stopGuest?: () => Promise<void>;
  stopTimeoutMs: number;
  stuck: (message: string) => never;
}

/**
 * Descriptors left open on purpose after a failure without POISON and without stopGuest: held
 * here for the life of the process, so that collecting their owner never closes them.
 */
const keptOpen = new Set<Userfaultfd>();

/**
 * With `stopGuest`: wait for it (at most `stopTimeoutMs`), then close. Without it the engine has
 * no guest to wait for: threads blocked now are stuck; otherwise the missing pages are poisoned
 * (a later access gets SIGBUS, never zeros) where the kernel can (UFFDIO_POISON, 6.6+) and the
 * descriptor closes, else it stays open for the life of the process (a later access blocks for
 * ever rather than read zeros: pass `stopGuest`).
 */
export function endGuestSurely(guest: FailedGuest, why: string): void {
  const { uffd } = guest;
  if (!guest.registered) {
    guest.stopFaults();
    uffd.close();
    return;
  }
  if (!guest.stopGuest) {
    if (guest.waiting) return guest.stuck(`${why} while guest threads wait for pages that will never arrive, and no stopGuest was given`);
    guest.stopFaults();
    if (poisonMissing(uffd, guest.blocks)) uffd.close();
    else keptOpen.add(uffd); // closed later, even by garbage collection, it would wake a later access onto zeros
    return;
  }
  const timer = setTimeout(() => guest.stuck(`${why} and the guest did not stop within ${guest.stopTimeoutMs} ms`), guest.stopTimeoutMs);
  guest.stopGuest().then(() => {
    clearTimeout(timer);
    guest.stopFaults();
    uffd.close();
  }, (error: Error) => guest.stuck(`${why} and stopping the guest failed: ${error.message}`));
}

/** Marks every page not received as poisoned; false where the kernel cannot. */
function poisonMissing(uffd: Userfaultfd, blocks: Iterable<GuestBlock>): boolean {
  if (!uffd.features.has('POISON')) return false;
  try {
    for (const block of blocks) {
      if (!block.host!.mapped) continue; // nothing can fault there any more
      const map = block.receivedMap;
      for (let page = map.findNextZero(0); page < map.size; ) {
        const end = map.findNextSet(page); // bits go by whole host pages: ranges are host-aligned
        uffd.poison(block.host!.base + page * TARGET_PAGE_SIZE, (end - page) * TARGET_PAGE_SIZE);
        page = end < map.size ? map.findNextZero(end) : map.size;
      }
    }
    return true;
  } catch {
    return false; // e.g. the range went away meanwhile: keep the descriptor open instead
  }
}
