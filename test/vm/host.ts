// `npm run test:vm [-- --kernel 6.1 --kernel 6.12] [--accel kvm|tcg|auto] [--timeout S]
// [--steps features,tests,migration,snapshot]`: boots Debian kernels in QEMU with an initramfs
// of this build and runs the kernel-layer tests, migrations and a snapshot inside (see
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
}

async function runKernel(kernel: Kernel, image: string, accel: Accel, timeoutS: number, steps: string | undefined): Promise<KernelRun> {
  log(`booting ${kernel.release} (${accel})`);
  let result: VmResult | undefined;
  let badResult: string | undefined;
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
      } else if (line.trim()) console.log(tag + line);
    },
  });
  const failure = bootResult.killed ? `killed: ${bootResult.killed}`
    : badResult ?? (!result ? `no ${RESULT_MARK.trim()} line (qemu exit ${bootResult.exitCode})`
      : !result.ok ? `failed: ${result.steps.filter((s) => !s.ok).map((s) => s.name).join(', ')}` : undefined);
  return { kernel, boot: bootResult, result, failure };
}

function summary(run: KernelRun): string[] {
  const { kernel, boot: b, result } = run;
  const seconds = (ms: number | undefined) => (ms === undefined ? '?' : (ms / 1000).toFixed(1));
  const lines = [`kernel ${result?.kernel ?? kernel.release}: ${run.failure ? `FAILED (${run.failure})` : 'passed'}`,
    `  time          boot ${seconds(b.bootMs)} s, tests ${seconds(b.bootMs === undefined ? undefined : b.totalMs - b.bootMs)} s, total ${seconds(b.totalMs)} s`];
  if (!result) return lines;
  const f = result.features;
  if (!f.available) lines.push(`  userfaultfd   not available: ${f.reason}`);
  else {
    const names = (granted: boolean) => (Object.keys(f.features) as Feature[]).filter((k) => f.features[k] === granted).join(' ') || 'none';
    lines.push(`  features      yes: ${names(true)}`, `                no: ${names(false)}`);
    lines.push(`                range ioctls: ${f.rangeIoctls.join(' ')}`);
  }
  for (const step of result.steps) {
    lines.push(`  ${step.ok ? 'ok    ' : 'FAILED'}  ${step.name}: ${step.detail} (${seconds(step.ms)} s)`);
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
