#!/usr/bin/env node
// postcopy command line: thin front ends over the library (the commands: commands.ts).
import { exitNow } from '../kernel/index.js';
import { helpText, runCommandLine } from './commands.js';

// A parent that went away closes our stdout/stderr: what we write is lost, and that is no error.
process.stdout.on('error', () => undefined);
process.stderr.on('error', () => undefined);

const [command, ...args] = process.argv.slice(2);
if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
  process.stdout.write(helpText());
  exitNow(0);
}
// Every exit is exitNow: Node's own exit joins worker threads, and a guest thread blocked on a
// page that will never arrive never joins. exitNow ends every thread at once (no zero page read).
runCommandLine(command, args).then(
  (code) => exitNow(code),
  (error: Error) => exitNow(1, `postcopy: internal error: ${error.stack ?? error.message}`),
);
