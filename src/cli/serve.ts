// `postcopy serve`: a userfaultfd page server for VMMs (Firecracker's UFFD memory backend).
// Listens on --socket until SIGINT or SIGTERM, serving every VM that connects from --mem-file
// (Firecracker's memory file) or --snapshot (this package's snapshot file). Each event is one
// line (one JSON object with --json); the last line is the server's report.
import { performance } from 'node:perf_hooks';
import { PostcopyError } from '../base/index.js';
import { formatEndpoint } from '../transport/index.js';
import { PageServer, loadWorkingSet, saveWorkingSet, type PageSourceSpec, type VmInfo, type WorkingSetFile } from '../serve/index.js';
import { choiceOption, endpointOption, intOption, numberOption, readTls, readToken, usage, type CommandArgs, type OptionGroup, type Values } from './options.js';
import { MAX_BULK_CHANNELS } from '../wire/index.js';
import { nextSignal, type CommandEnd } from './output.js';

export const SERVE_OPTIONS: OptionGroup = {
  title: 'serve',
  options: {
    socket: { type: 'string', value: 'PATH', help: 'the Unix socket VMMs connect to (mem_backend backend_path)' },
    'mem-file': { type: 'string', value: 'FILE', help: "Firecracker's memory file: the regions at their offsets, holes read as zeros" },
    snapshot: { type: 'string', value: 'FILE', help: "this package's snapshot file (every checksum checked before serving)" },
    from: { type: 'string', value: 'ADDR', help: 'another host\'s memory file: `postcopy serve-pages --listen ADDR` there\nmigrates each VM\'s regions here (faults first, the rest streamed)' },
    channels: { type: 'string', value: 'N', help: 'with --from: bulk channels for the stream (0-16, default 0)' },
    'recover-seconds': { type: 'string', value: 'S', help: 'with --from: how long a broken connection may take to come back\n(default 30; then the VM is ended)' },
    'on-failure': { type: 'string', value: 'kill|leave', help: 'a VM whose pages can no longer be served (or that is refused) is\nkilled (default) or left as it is' },
    prefetch: { type: 'string', value: 'MODE', help: 'none | sequential | working-set (default): pages nobody asked for\nyet, behind the faults (the working set first when one is given)' },
    'working-set': { type: 'string', value: 'FILE', help: 'prefetch these pages first (recorded for this very memory file;\na stale one is refused)' },
    'record-working-set': { type: 'string', value: 'FILE', help: "save a VM's fault order there when it ends" },
    metrics: { type: 'string', value: 'ADDR', help: 'serve Prometheus metrics over HTTP at HOST:PORT' },
    'stall-seconds': { type: 'string', value: 'S', help: 'faults waiting and no page placed this long: the VM fails (default 10)' },
  },
};

export async function serveCommand({ values, json }: CommandArgs): Promise<CommandEnd> {
  const started = performance.now();
  const stopped = nextSignal();
  const source = sourceOf(values);
  const say = (line: string, event: Record<string, unknown>) => (json ? console.log(JSON.stringify(event)) : process.stderr.write(`${line}\n`));
  const workingSet = loadWorkingSetOption(values, source, say);
  const recordTo = typeof values['record-working-set'] === 'string' ? values['record-working-set'] : undefined;
  const server = new PageServer({
    socket: values.socket as string, source, onFailure: choiceOption(values['on-failure'], 'on-failure', ['kill', 'leave'] as const, 'kill'),
    prefetch: choiceOption(values.prefetch, 'prefetch', ['none', 'sequential', 'working-set'] as const, 'working-set'),
    workingSet, recordWorkingSet: recordTo !== undefined, stallSeconds: numberOption(values['stall-seconds'], 'stall-seconds', 10, 0.5, 3600),
  });
  const counts = { vms: 0, refused: 0, ended: {} as Record<string, number> };
  const regionsOf = (info: VmInfo) => info.regions.map((r) => ({ base: r.base, size: r.size, offset: r.offset, page_size: r.pageSize }));
  server.on('vm', (info) => {
    counts.vms++;
    say(`vm ${info.vm} (pid ${info.pid}) connected: ${info.regions.length} region(s)`, { event: 'connected', vm: info.vm, pid: info.pid, regions: regionsOf(info) });
  });
  server.on('first-fault', (info, ms) => say(`vm ${info.vm}: first fault after ${ms.toFixed(1)} ms`, { event: 'first-fault', vm: info.vm, ms }));
  server.on('all-present', (info, ms) => say(`vm ${info.vm}: every page present after ${ms.toFixed(1)} ms`, { event: 'all-present', vm: info.vm, ms }));
  server.on('staged', (info, report) => {
    const { streamed, requested } = report.pages;
    say(`vm ${info.vm}: every page arrived from the origin (${streamed} streamed, ${requested} requested, ${report.recoveries} recoveries)`,
      { event: 'staged', vm: info.vm, pages: report.pages, requests: report.requests, recoveries: report.recoveries, paused_ms: report.paused_ms, latency_us: report.latency_us });
  });
  server.on('refused', (pid, reason) => {
    counts.refused++;
    say(`refused a VMM${pid === undefined ? '' : ` (pid ${pid})`}: ${reason}`, { event: 'refused', pid, reason });
  });
  server.on('ended', (info, reason, outcome) => {
    counts.ended[outcome] = (counts.ended[outcome] ?? 0) + 1;
    say(`vm ${info.vm} (pid ${info.pid}) ${outcome}: ${reason}`, { event: 'ended', vm: info.vm, pid: info.pid, outcome, reason });
  });
  if (recordTo && source.kind === 'file') {
    server.on('working-set', (info, pages) => {
      if (!pages.length) return;
      saveWorkingSet(recordTo, source.path, info.regions, pages);
      say(`vm ${info.vm}: its working set of ${pages.length / 2} pages saved to ${recordTo}`, { event: 'working-set-saved', vm: info.vm, pages: pages.length / 2, file: recordTo });
    });
  }
  await server.listen();
  const metrics = typeof values.metrics === 'string' ? await server.metrics.listen(endpointOption(values.metrics, '--metrics')) : undefined;
  const metricsAt = metrics && formatEndpoint(metrics);
  say(`serving ${describe(source)} on ${values.socket}${metricsAt ? `; metrics at http://${metricsAt}/metrics` : ''}`,
    { event: 'listening', socket: values.socket, source: source.kind === 'remote' ? formatEndpoint(source.from) : source.path, ...(metricsAt ? { metrics: metricsAt } : {}) });
  const signal = await stopped;
  server.close(`the page server stopped (${signal})`);
  const report = { event: 'stopped', signal, vms: counts.vms, refused: counts.refused, ended: counts.ended, served_ms: Math.round(performance.now() - started) };
  return { report, human: `stopped (${signal}): served ${counts.vms} VM(s), refused ${counts.refused}` };
}

function sourceOf(values: Values): PageSourceSpec {
  if (typeof values.socket !== 'string') throw usage('serve needs --socket PATH');
  const given = (['mem-file', 'snapshot', 'from'] as const).filter((option) => typeof values[option] === 'string');
  if (given.length !== 1) throw usage('serve needs exactly one of --mem-file FILE, --snapshot FILE and --from ADDR');
  if (given[0] !== 'from') {
    for (const option of ['channels', 'recover-seconds', 'tls-cert', 'tls-key', 'tls-ca', 'tls-psk']) if (values[option] !== undefined) throw usage(`--${option} goes with --from`);
    return given[0] === 'mem-file' ? { kind: 'file', path: values['mem-file'] as string } : { kind: 'snapshot', path: values.snapshot as string };
  }
  const from = endpointOption(values.from as string, '--from');
  const token = readToken(values['token-file']);
  if (from.kind === 'tcp' && !token) throw usage('serve --from over TCP needs a token: --token-file FILE or POSTCOPY_TOKEN');
  return {
    kind: 'remote', from, token, tls: readTls(values),
    channels: intOption(values.channels, 'channels', 0, 0, MAX_BULK_CHANNELS),
    recoverSeconds: numberOption(values['recover-seconds'], 'recover-seconds', 30, 0, 3600),
  };
}

function describe(source: PageSourceSpec): string {
  return source.kind === 'remote' ? `pages from ${formatEndpoint(source.from)}` : `${source.kind === 'file' ? 'memory file' : 'snapshot'} ${source.path}`;
}

/** --working-set: a stale or damaged one is refused, and the server prefetches without it. */
function loadWorkingSetOption(values: Values, source: PageSourceSpec, say: (line: string, event: Record<string, unknown>) => void): WorkingSetFile | undefined {
  const path = values['working-set'];
  if (typeof path !== 'string') return undefined;
  if (source.kind !== 'file') throw usage('--working-set goes with --mem-file');
  try {
    return loadWorkingSet(path, source.path);
  } catch (error) {
    if ((error as PostcopyError).code !== 'ERR_WORKING_SET') throw error;
    say(`${(error as Error).message}; prefetching without it`, { event: 'working-set-refused', reason: (error as Error).message });
    return undefined;
  }
}
