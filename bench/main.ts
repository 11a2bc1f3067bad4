// One scenario of the project's side of the bench, in a fresh process (so that no scenario
// inherits another's heap, JIT state or mappings):
//   node dist-test/bench/main.js <scenario> [--mib N]
// prints one JSON line (a result, or { scenario, skipped }) on stdout. bench/cli.ts (behind
// scripts/bench.mjs) runs this once per scenario and run, beside uffd-floor.c, and prints the
// comparison.
// The postcopy scenarios spawn their source as `node dist-test/bench/main.js postcopy-source ...`
// (bench/source.ts), which also prints one JSON line.
import { runScenario } from './project.js';
import { projectScenarioNames, projectSpec } from './scenarios.js';
import { sourceMain } from './source.js';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args[0] === 'postcopy-source') {
    const output = await sourceMain(args.slice(1));
    process.stdout.write(JSON.stringify(output) + '\n');
    process.exit(0); // stdin is still open (it watches for the parent's end)
  }
  let mib = 256;
  let scenario: string | undefined;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--mib') mib = Number(args[++i]);
    else scenario = args[i];
  }
  if (!scenario || !projectSpec(scenario) || !(mib > 0)) {
    process.stderr.write(`usage: node dist-test/bench/main.js <${projectScenarioNames().join('|')}> [--mib N]\n`);
    process.exit(2);
  }
  const result = await runScenario(scenario, mib * 1024 * 1024);
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((error: Error) => {
  process.stderr.write(`${error.stack ?? error.message}\n`);
  process.exit(1);
});
