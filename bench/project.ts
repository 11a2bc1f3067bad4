// Runs one of the project's scenarios as the table (bench/scenarios.ts) describes it.
import { migrationScenario } from './migration.js';
import { postcopyScenario } from './postcopy.js';
import { restoreScenario } from './restore.js';
import { projectScenarioNames, projectSpec } from './scenarios.js';
import { serveScenario } from './serve.js';
import { snapshotScenario } from './snapshot.js';
import type { Result } from './types.js';
import { faultScenario, placeScenario } from './uffd.js';

export async function runScenario(name: string, length: number): Promise<Result> {
  const spec = projectSpec(name);
  if (!spec) throw new Error(`unknown scenario '${name}' (${projectScenarioNames().join(', ')})`);
  switch (spec.kind) {
    case 'postcopy':
      return postcopyScenario(name, length, spec);
    case 'migration':
      return migrationScenario(name, spec); // its own size: --mib does not apply
    case 'snapshot':
      return snapshotScenario(name, length, spec.claimPages);
    case 'restore':
      return restoreScenario(name, length, spec.mode);
    case 'fault':
      return faultScenario(name, length, spec);
    case 'place':
      return placeScenario(name, length, spec);
    case 'serve':
      return serveScenario(name, length, spec);
  }
}
