// `postcopy restore FILE`: restores a snapshot of the reference guest into fresh memory (eager:
// every page first; lazy: the guest resumes at once and faults pages in from the file while
// the rest is prefetched), resumes the guest with the threads its device state names, lets it
// run, stops it and verifies every page and the ledger. A file that is not a complete, intact
// snapshot is refused naming why. On a failure the report is printed and the process ends at
// once (main.ts: exitNow), taking any guest thread still blocked in a fault with it.
import { existsSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Mapping } from '../kernel/index.js';
import {
  LazyRestore, SnapshotReader, WorkingSet, restoreEager, workingSetPath,
  type LazyRestoreProgress,
} from '../snapshot/index.js';
import { usage, oneFile, type CommandArgs, type OptionGroup } from './options.js';
import { peakRssMiB, progressPrinter, type CommandEnd } from './output.js';
import { notVerified, parseDeviceState, runSeconds, verifyGuests } from './reference-guest.js';
import { errorCode, PostcopyError, round, TARGET_PAGE_SIZE } from '../base/index.js';
import { Guest, type GuestMemory } from '../testing/index.js';

export const RESTORE_OPTIONS: OptionGroup = {
  title: 'restore',
  options: {
    eager: { type: 'boolean', help: 'read every page into fresh memory, then resume the guest (default)' },
    lazy: { type: 'boolean', help: 'resume the guest at once: faults are served from the file while the\nrest is prefetched, first the working set FILE.ws if there is one' },
    'record-working-set': { type: 'boolean', help: '(lazy) save the pages the guest faulted on, in order, as FILE.ws;\nnothing is prefetched until the guest has run --run-seconds' },
  },
};

interface RestoreConfig {
  file: string;
  lazy: boolean;
  record: boolean;
  runSeconds: number;
}

function restoreConfig({ values: o, positionals }: CommandArgs): RestoreConfig {
  const file = oneFile('restore', positionals);
  if (o.lazy && o.eager) throw usage('--lazy and --eager exclude each other');
  const lazy = o.lazy === true;
  if (o['record-working-set'] && !lazy) throw usage('--record-working-set records the faults of a lazy restore: add --lazy');
  return { file, lazy, record: o['record-working-set'] === true, runSeconds: runSeconds(o) };
}

/** What both restores share: the open file, fresh memory per block, the guests to resume and verify. */
interface RestoreRun {
  config: RestoreConfig;
  reader: SnapshotReader;
  memory: Mapping[];
  guestThreads: number;
  guests: Map<string, Guest>;
  note: (line: string) => void;
  resumeGuests(): Promise<unknown>;
  /** Runs and verifies the resumed guests; the report. */
  finish(restore: Record<string, unknown>, workingSet: Record<string, unknown>): Promise<Record<string, unknown>>;
}

export async function restoreCommand(args: CommandArgs): Promise<CommandEnd> {
  const config = restoreConfig(args);
  const { file, lazy } = config;
  const { note } = progressPrinter();
  const started = performance.now();

  const reader = SnapshotReader.open(file); // refuses an incomplete or damaged file, naming why
  const device = parseDeviceState(reader);
  const guestThreads = device.blocks.reduce((sum, b) => sum + (b.guest ? b.threads : 0), 0);
  const memory = reader.blocks.map((b) => new Mapping(b.usedLength, { huge: b.pageSize > TARGET_PAGE_SIZE, name: b.idstr }));
  const guestMemory = (idstr: string): GuestMemory => ({ kind: 'mapping', ...memory[reader.blocks.findIndex((b) => b.idstr === idstr)].descriptor });
  const openedMs = performance.now() - started;
  note(`${file}: ${reader.blocks.length} block(s), ${(memory.reduce((s, m) => s + m.length, 0) / 2 ** 20).toFixed(0)} MiB, ${guestThreads} guest thread(s); ${lazy ? 'lazy' : 'eager'} restore`);

  const guests = new Map<string, Guest>();
  const resuming: Promise<Guest | Error>[] = [];
  const run: RestoreRun = {
    config, reader, memory, guestThreads, guests, note,
    resumeGuests: () => {
      for (const b of device.blocks.filter((b) => b.guest)) {
        resuming.push(Guest.resumeFrom({ memory: guestMemory(b.idstr) }).then((g) => {
          guests.set(b.idstr, g);
          return g;
        }, (error: Error) => new Error(`resuming the guest on block '${b.idstr}' failed: ${error.message}`)));
      }
      return Promise.all(resuming);
    },
    finish: async (restore, workingSet) => {
      const resumedMs = performance.now() - started;
      const verification = await verifyGuests(device, guests, resuming, config.runSeconds);
      return { ...verification, mode: lazy ? 'lazy' : 'eager', file, restore, working_set: workingSet,
        timings: { open_ms: round(openedMs), restored_ms: round(resumedMs), total_ms: round(performance.now() - started) } };
    },
  };
  const end = lazy ? await restoreLazily(run) : await restoreEagerly(run);
  // a failed lazy restore may leave a guest thread blocked in a fault: the exit ends it
  if (end.error) return end;
  reader.close();
  const report = { ...end.report, peak_rss_mb: peakRssMiB() };
  return { report, human: JSON.stringify(report, null, 2), error: notVerified(report) };
}

async function restoreEagerly(run: RestoreRun): Promise<CommandEnd> {
  const restore = await restoreEager(run.reader, run.memory);
  run.note(`restored ${(restore.bytes_read / 2 ** 20).toFixed(0)} MiB in ${restore.seconds} s (${restore.gb_per_s} GB/s), ${restore.zero_pages} zero pages${restore.checksum_verified ? ', checksums verified' : ''}`);
  void run.resumeGuests();
  return { report: await run.finish({ ...restore }, { used: 0, recorded: 0 }) };
}

async function restoreLazily(run: RestoreRun): Promise<CommandEnd> {
  const { config, reader, note } = run;
  const ws = loadWorkingSet(config.file, reader, note);
  const restore = LazyRestore.start(reader, run.memory, {
    guestThreads: run.guestThreads,
    workingSet: ws.set,
    recordWorkingSet: config.record,
    // recording: only the guest's own faults place pages for its first run, so that the set is its order
    prefetch: !config.record,
    // a thread blocked in a fault cannot be terminated: then the guest is stuck and the process ends
    stopGuest: async () => {
      await Promise.all([...run.guests.values()].map((g) => g.terminate()));
    },
  });
  restore.on('progress', (p: LazyRestoreProgress) => note(formatProgress(p)));
  const resumed = run.resumeGuests();
  if (config.record) {
    void resumed.then(() => setTimeout(() => {
      note(`recorded ${restore.recordedWorkingSet().pages.length} pages of working set; prefetching the rest`);
      restore.startPrefetch();
    }, config.runSeconds * 1000));
  }
  try {
    await restore.finished;
  } catch (error) {
    const failure = errorCode(error) ? error as Error : new PostcopyError('ERR_RESTORE_FAILED', (error as Error).message, { cause: error });
    return { report: { ...restore.report(), mode: 'lazy', file: config.file, verified: false }, error: failure };
  }
  const lazyReport = restore.report();
  note(`every page present after ${lazyReport.all_present_ms} ms: ${lazyReport.pages.by_fault} by fault, ${lazyReport.pages.by_prefetch} prefetched; ${lazyReport.faults} faults, p50 <= ${lazyReport.latency_us.p50} us, p99 <= ${lazyReport.latency_us.p99} us, blocktime ${lazyReport.blocktime_ms} ms`);
  const recorded = config.record ? restore.recordedWorkingSet() : undefined;
  if (recorded) {
    recorded.save(workingSetPath(config.file), reader);
    note(`working set of ${recorded.pages.length} pages saved to ${workingSetPath(config.file)}`);
  }
  return { report: await run.finish({ ...lazyReport }, { used: lazyReport.working_set.used, recorded: recorded?.pages.length ?? 0, ...(ws.refused ? { refused: ws.refused } : {}) }) };
}

/** FILE.ws if there is one: a stale or damaged one is not used, and the report says why. */
function loadWorkingSet(file: string, reader: SnapshotReader, note: (line: string) => void): { set?: WorkingSet; refused?: string } {
  const path = workingSetPath(file);
  if (!existsSync(path)) return {};
  try {
    const set = WorkingSet.load(path, reader);
    note(`prefetching the working set of ${set.pages.length} pages first (${path})`);
    return { set };
  } catch (error) {
    if (errorCode(error) !== 'ERR_WORKING_SET') throw error;
    note(`${(error as Error).message}; restoring without it`);
    return { refused: (error as Error).message };
  }
}

function formatProgress(p: LazyRestoreProgress): string {
  return `[lazy] ${p.placed_pages}/${p.total_pages} pages present (${Math.floor((100 * p.placed_pages) / p.total_pages)}%), ${p.faults} faults, ${p.elapsed_ms} ms`;
}
