// `postcopy send`: the source. Allocates guest blocks, runs the reference guest on them,
// connects to the destination and migrates: precopy, switchover, postcopy (source-runner.ts).
import { usage, endpointOption, parseOptions, readToken } from './options.js';
import { progressPrinter } from './output.js';
import { SOURCE_OPTIONS, runSource, sourceConfig } from './source-runner.js';

export async function sendCommand(args: string[]): Promise<number> {
  const o = parseOptions(args, SOURCE_OPTIONS);
  if (typeof o.connect !== 'string') throw usage('send needs --connect HOST:PORT or --connect unix:PATH');
  const endpoint = endpointOption(o.connect, '--connect');
  const token = readToken(o['token-file']);
  if (endpoint.kind === 'tcp' && !token) throw usage('send over TCP needs a token: --token-file FILE or POSTCOPY_TOKEN');
  const config = sourceConfig(o);
  const json = o.json === true;
  const { report, sourceWrites } = await runSource(config, endpoint, token, progressPrinter().progress);
  console.log(json ? JSON.stringify({ ...report, source_writes: sourceWrites }) : JSON.stringify({ ...report, source_writes: sourceWrites }, null, 2));
  return 0;
}
