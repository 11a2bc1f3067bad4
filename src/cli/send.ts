// `postcopy send`: the source. Allocates guest blocks, runs the reference guest on them,
// connects to the destination and migrates: precopy, switchover, postcopy (source-runner.ts).
import { usage, endpointOption, readTls, readToken, type CommandArgs, type OptionGroup } from './options.js';
import { progressPrinter, type CommandEnd } from './output.js';
import { runSource, sourceConfig } from './source-runner.js';

export const SEND_OPTIONS: OptionGroup = {
  title: 'send',
  options: { connect: { type: 'string', value: 'ADDR', help: 'the destination (postcopy receive --listen ADDR)' } },
};

export async function sendCommand({ values: o }: CommandArgs): Promise<CommandEnd> {
  if (typeof o.connect !== 'string') throw usage('send needs --connect HOST:PORT or --connect unix:PATH');
  const endpoint = endpointOption(o.connect, '--connect');
  const token = readToken(o['token-file']);
  if (endpoint.kind === 'tcp' && !token) throw usage('send over TCP needs a token: --token-file FILE or POSTCOPY_TOKEN');
  const { report, sourceWrites } = await runSource(sourceConfig(o), endpoint, { token, tls: readTls(o) }, progressPrinter().progress);
  const out = { ...report, source_writes: sourceWrites };
  return { report: out, human: JSON.stringify(out, null, 2) };
}
