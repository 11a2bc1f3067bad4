// `postcopy serve-pages`: the host that has a memory file serves it to page servers on other
// hosts (`postcopy serve --from ADDR`). Each request is one migration of a VM's regions, straight
// to postcopy, recovered after a break like any migration. Runs until SIGINT or SIGTERM, then
// takes no more requests and lets the sessions under way finish (a second signal ends them);
// each event is one line (one JSON object with --json); the last line is its report.
import { performance } from 'node:perf_hooks';
import { PageOrigin } from '../serve/index.js';
import { formatEndpoint } from '../transport/index.js';
import { endpointOption, livenessConfig, numberOption, readTls, readToken, usage, type CommandArgs, type OptionGroup } from './options.js';
import { nextSignal, type CommandEnd } from './output.js';

export const SERVE_PAGES_OPTIONS: OptionGroup = {
  title: 'serve-pages',
  options: {
    'mem-file': { type: 'string', value: 'FILE', help: "Firecracker's memory file: the regions at their offsets, holes read as zeros" },
    listen: { type: 'string', value: 'ADDR', help: 'where page servers ask for pages: HOST:PORT (a token is needed) or unix:PATH' },
    'postcopy-max-mibs': { type: 'string', value: 'N', help: "cap each VM's background stream at N MiB/s (default: none);\nrequested pages are never held back" },
  },
};

export async function servePagesCommand({ values, json }: CommandArgs): Promise<CommandEnd> {
  const started = performance.now();
  const stopped = nextSignal();
  if (typeof values['mem-file'] !== 'string') throw usage('serve-pages needs --mem-file FILE');
  if (typeof values.listen !== 'string') throw usage('serve-pages needs --listen ADDR');
  const endpoint = endpointOption(values.listen, '--listen');
  const token = readToken(values['token-file']);
  if (endpoint.kind === 'tcp' && !token) throw usage('serve-pages over TCP needs a token: --token-file FILE or POSTCOPY_TOKEN');
  const say = (line: string, event: Record<string, unknown>) => (json ? console.log(JSON.stringify(event)) : process.stderr.write(`${line}\n`));
  const postcopyMaxMiBs = numberOption(values['postcopy-max-mibs'], 'postcopy-max-mibs', 0, 0, 1e6) || undefined;
  const tls = readTls(values);
  const origin = new PageOrigin({ memFile: values['mem-file'], endpoint, token, tls, postcopyMaxMiBs, ...livenessConfig(values) });
  const counts = { sessions: 0, served: 0, ended: 0, failed: 0, refused: 0 };
  origin.on('session', (session, request) => {
    counts.sessions++;
    say(`session ${session}: ${request.regions.length} region(s) to ${request.endpoint}`, { event: 'session', session, regions: request.regions, endpoint: request.endpoint, channels: request.channels });
  });
  origin.on('served', (session, report) => {
    counts.served++;
    const sent = report.pages_sent;
    say(`session ${session}: served (${sent.postcopy} pages streamed, ${sent.requested} requested, ${report.recoveries} recoveries)`, { event: 'served', session, pages_sent: sent, recoveries: report.recoveries });
  });
  origin.on('failed', (session, error) => {
    counts.failed++;
    say(`session ${session} failed: ${error.message}`, { event: 'failed', session, reason: error.message });
  });
  origin.on('ended', (session, error) => {
    counts.ended++;
    say(`session ${session}: ${error.message}`, { event: 'ended', session, reason: error.message });
  });
  origin.on('refused', (reason) => {
    counts.refused++;
    say(`refused a request: ${reason}`, { event: 'refused', reason });
  });
  const bound = await origin.listen();
  say(`serving ${values['mem-file']} on ${formatEndpoint(bound)}${tls ? ' (TLS 1.3)' : ''}`, { event: 'listening', endpoint: formatEndpoint(bound), mem_file: values['mem-file'], tls: tls?.kind ?? 'none' });
  const signal = await stopped;
  origin.close();
  let cut = 0;
  if (origin.active) {
    say(`${signal}: no more requests; waiting for ${origin.active} session(s) under way to finish (a second signal ends them)`, { event: 'draining', signal, sessions: origin.active });
    const second = await Promise.race([origin.drained().then(() => undefined), nextSignal()]);
    if (second) cut = origin.active;
  }
  const report = { event: 'stopped', signal, ...counts, cut, served_ms: Math.round(performance.now() - started) };
  const ended = counts.ended ? `, ${counts.ended} ended by their VM` : '';
  return { report, human: `stopped (${signal}): ${counts.served} session(s) served${ended}, ${counts.failed} failed, ${counts.refused} refused${cut ? `, ${cut} cut off by a second signal` : ''}` };
}
