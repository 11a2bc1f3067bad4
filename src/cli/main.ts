#!/usr/bin/env node
// postcopy command line: thin front ends over the library.
import { featuresCommand } from './features.js';

const USAGE = `usage: postcopy <command> [options]

commands:
  features [--json]   what this kernel's userfaultfd grants, and what each feature is for
`;

function main(argv: string[]): number {
  const [command, ...args] = argv;
  switch (command) {
    case 'features':
      return featuresCommand(args);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return 0;
    default:
      process.stderr.write(`postcopy: unknown command '${command}'\n\n${USAGE}`);
      return 2;
  }
}

process.exitCode = main(process.argv.slice(2));
