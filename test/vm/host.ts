// `npm run test:vm [-- --kernel 6.1 --kernel 6.12] [--accel kvm|tcg|auto] [--timeout S]
// [--steps features,tests,migration,snapshot,serve]`: boots Debian kernels in QEMU with an initramfs
// of this build and runs the kernel-layer tests, migrations, a snapshot and the page server inside (see
// test/vm/guest.ts). Prints per kernel its version, feature table and test counts; exits 1
// if any kernel's run failed, timed out or reported nothing.
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type Feature } from '../../src/kernel/index.js';
import { initramfs } from './initramfs.js';
import { prepareHost, qemuVersion, type Kernel } from './kernels.js';
import { boot, type Accel, type BootResult } from './qemu.js';
import { RESULT_MARK, type VmResult } from './result.js';

const DEFAULT_KERNELS = ['6.1', '6.12'];
const ROOT = join(__dirname, '..', '..', '..');

function log(line: string): void {
  console.log(`test:vm: ${line}`);
}

/**
 * auto: KVM only when POSTCOPY_VM_ACCEL=kvm says a real one is there. /dev/kvm can exist and
 * still not boot a stock kernel (this machine's is a nested PVM hypervisor), so its presence
 * proves nothing, and TCG works everywhere.
 */
function chooseAccel(asked: string): Accel {
  const accel = asked === 'auto' ? process.env.POSTCOPY_VM_ACCEL ?? 'tcg' : asked;
  if (accel !== 'kvm' && accel !== 'tcg') throw new Error(`--accel must be kvm, tcg or auto, not '${accel}'`);
  return accel;
}

interface KernelRun {
  kernel: Kernel;
  boot: BootResult;
  result?: VmResult;
  failure?: string;
  /** Boots that died before the init started, each with the kernel's own last words. */
  failedBoots: string[];
}

/**
 * A boot that dies before the init's first line never ran a line of ours: under multi-threaded
 * TCG, Debian's 6.12 sometimes oopses on an int3 left by the kernel patching its own text on
 * one vCPU while the other runs it (seen once in CI; 0 of 30 boots here, 15 of them with the
 * host loaded). Such a boot is retried, up to BOOT_ATTEMPTS in all, and reported; a failure
 * after the init started is not.
 */
const BOOT_ATTEMPTS = 3;
/** Console lines that say why a kernel died, kept for the report. */
const KERNEL_DEATH = /Oops:|Kernel panic|BUG:|RIP: /;

async function runKernel(kernel: Kernel, image: string, accel: Accel, timeoutS: number, steps: string | undefined): Promise<KernelRun> {
  const failedBoots: string[] = [];
  for (let attempt = 1; ; attempt++) {
    const { booted, ...run } = await bootOnce(kernel, image, accel, timeoutS, steps, attempt);
    // a boot that did not start the init always failed, and says why
    const died = booted ? undefined : run.failure;
    if (!died || attempt === BOOT_ATTEMPTS) return { ...run, failedBoots };
    failedBoots.push(`boot ${attempt}: ${died}`);
    log(`${kernel.release}: boot ${attempt} died before the init started (${died}); booting again`);
  }
}

/** One boot; `booted` once the init has said anything (its START marker anywhere in a line, or a result line). */
async function bootOnce(kernel: Kernel, image: string, accel: Accel, timeoutS: number, steps: string | undefined, attempt: number): Promise<Omit<KernelRun, 'failedBoots'> & { booted: boolean }> {
  log(`booting ${kernel.release} (${accel})${attempt > 1 ? `, attempt ${attempt} of ${BOOT_ATTEMPTS}` : ''}`);
  let result: VmResult | undefined;
  let badResult: string | undefined;
  const lastWords: string[] = [];
  const tag = `[${kernel.series}] `;
  const bootResult = await boot({
    image: kernel.image, initramfs: image, accel, memoryMiB: 3072, cpus: 2,
    append: steps ? [`postcopy.steps=${steps}`] : [],
    bootTimeoutMs: 120_000, timeoutMs: timeoutS * 1000,
    onLine: (line) => {
      if (line.startsWith(RESULT_MARK)) {
        try {
          result = JSON.parse(line.slice(RESULT_MARK.length)) as VmResult;
        } catch (error) {
          badResult = `unreadable result line: ${(error as Error).message}`;
        }
      } else if (line.trim()) {
        if (KERNEL_DEATH.test(line) && lastWords.length < 3) lastWords.push(line.replace(/^\[\s*[\d.]+\]\s*/, ''));
        console.log(tag + line);
      }
    },
  });
  const died = lastWords.length ? `; the kernel said: ${lastWords.join(' | ')}` : '';
  const failure = bootResult.killed ? `killed: ${bootResult.killed}${died}`
    : badResult ?? (!result ? `no ${RESULT_MARK.trim()} line (qemu exit ${bootResult.exitCode})${died}`
      : !result.ok ? `failed: ${result.steps.filter((s) => !s.ok).map((s) => s.name).join(', ')}` : undefined);
  const booted = bootResult.bootMs !== undefined || result !== undefined || badResult !== undefined;
  return { kernel, boot: bootResult, result, failure, booted };
}

function summary(run: KernelRun): string[] {
  const { kernel, boot: b, result } = run;
  const seconds = (ms: number | undefined) => (ms === undefined ? '?' : (ms / 1000).toFixed(1));
  const lines = [`kernel ${result?.kernel ?? kernel.release}: ${run.failure ? `FAILED (${run.failure})` : 'passed'}`,
    `  time          boot ${seconds(b.bootMs)} s, tests ${seconds(b.bootMs === undefined ? undefined : b.totalMs - b.bootMs)} s, total ${seconds(b.totalMs)} s`];
  for (const failed of run.failedBoots) lines.push(`  boot retried  ${failed}`);
  if (!result) return lines;
  const f = result.features;
  if (!f.available) lines.push(`  userfaultfd   not available: ${f.reason}`);
  else {
    const names = (granted: boolean) => (Object.keys(f.features) as Feature[]).filter((k) => f.features[k] === granted).join(' ') || 'none';
    lines.push(`  features      yes: ${names(true)}`, `                no: ${names(false)}`);
    lines.push(`                range ioctls: ${f.rangeIoctls.join(' ')}`);
  }
  for (const step of result.steps) {
    lines.push(`  ${step.skipped ? 'skip  ' : step.ok ? 'ok    ' : 'FAILED'}  ${step.name}: ${step.detail} (${seconds(step.ms)} s)`);
    for (const skip of step.tests?.skips ?? []) lines.push(`            skipped: ${skip.name}: ${skip.reason}`);
  }
  return lines;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      kernel: { type: 'string', multiple: true },
      accel: { type: 'string', default: 'auto' },
      timeout: { type: 'string', default: '600' },
      steps: { type: 'string' },
    },
  });
  const series = values.kernel?.length ? values.kernel : DEFAULT_KERNELS;
  const accel = chooseAccel(values.accel!);
  const timeoutS = Number(values.timeout);
  if (!(timeoutS > 0)) throw new Error(`--timeout must be seconds > 0, not '${values.timeout}'`);
  const kernels = prepareHost(series, log);
  log(`${qemuVersion()}; kernels ${kernels.map((k) => k.release).join(', ')}`);
  const image = initramfs(ROOT, log);
  const runs: KernelRun[] = [];
  for (const kernel of kernels) runs.push(await runKernel(kernel, image, accel, timeoutS, values.steps));
  console.log('');
  for (const run of runs) console.log(summary(run).join('\n'));
  return runs.every((r) => !r.failure) ? 0 : 1;
}

main().then((code) => process.exit(code), (error: Error) => {
  console.error(`test:vm: ${error.message}`);
  process.exit(1);
});
