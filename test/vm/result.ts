// What the test VM reports to the host: one line on the serial console, RESULT_MARK then a
// VmResult as JSON (written by test/vm/guest.ts, read by test/vm/host.ts).
import type { FeatureReport } from '../../src/kernel/index.js';

export const RESULT_MARK = 'POSTCOPY-VM-RESULT ';

/** The kernel-layer tests: each detects what the kernel lacks and skips, saying why. */
export const KERNEL_TESTS = ['kernel/ioctls', 'kernel/writeprotect', 'kernel/faults', 'kernel/pagemap', 'kernel/kernel-safety', 'wire/memory', 'kernel/dirty-log'];
/**
 * Tests left out in the VM (they skip with a reason starting "left out"): eight threads faulting
 * together take 10-18 s each under TCG, and the 1- and 2-thread runs cover the same kernel paths.
 */
export const VM_TEST_ENV = { POSTCOPY_TEST_MAX_THREADS: '2' };

export interface TestCounts {
  tests: number;
  pass: number;
  fail: number;
  /** Skipped by the kernel test itself (a feature missing), not counting `notRun`. */
  skipped: number;
  /** Left out on purpose in the VM (too slow under TCG): see VM_TEST_ENV. */
  notRun: number;
  /** Skipped tests and the reason each printed. */
  skips: { name: string; reason: string }[];
}

export interface StepResult {
  name: string;
  ok: boolean;
  ms: number;
  /** What the step found (the dirty log used, the populate mode, the counts) or why it failed or was skipped. */
  detail: string;
  /** Not run: what this VM lacks is in `detail`. */
  skipped?: boolean;
  tests?: TestCounts;
}

export interface VmResult {
  kernel: string;
  features: FeatureReport;
  steps: StepResult[];
  ok: boolean;
}

export function tapCounts(tap: string): TestCounts {
  const count = (name: string) => Number(new RegExp(`^# ${name} (\\d+)$`, 'm').exec(tap)?.[1] ?? 0);
  const all = [...tap.matchAll(/^\s*ok \d+ - (.*?) # SKIP ?(.*)$/gm)].map((m) => ({ name: m[1], reason: m[2] }));
  const skips = all.filter((s) => !s.reason.startsWith('left out'));
  const notRun = all.length - skips.length;
  return { tests: count('tests') - notRun, pass: count('pass'), fail: count('fail'), skipped: count('skipped') - notRun, notRun, skips };
}
