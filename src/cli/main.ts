#!/usr/bin/env node
// postcopy command line: thin front ends over the library.
import { demoCommand } from './demo.js';
import { featuresCommand } from './features.js';
import { UsageError } from './options.js';
import { receiveCommand } from './receive.js';
import { sendCommand } from './send.js';

const USAGE = `usage: postcopy <command> [options]

commands:
  demo [options]              migrate a running reference guest between two processes on loopback
  send --connect ADDR [opts]  the source side: run the guest here and migrate it to ADDR
  receive --listen ADDR       the destination side: take a migration, resume and verify the guest
  features [--json]           what this kernel's userfaultfd grants, and what each feature is for

ADDR is HOST:PORT (TCP; needs a shared token: --token-file FILE or POSTCOPY_TOKEN) or unix:PATH.

demo/send options:
  --size SIZE               guest memory, e.g. 256M, 2G (default 256M)
  --blocks N                split it into N blocks of different sizes (default 1)
  --huge                    2 MiB hugetlb blocks
  --threads N               guest threads (default 2)
  --pattern P               sequential | random | hotset | read (default random)
  --precopy-seconds S       precopy before switching to postcopy; 0 = straight to postcopy (default 2)
  --transport tcp|unix      (demo) the channel transport (default tcp)
  --no-preempt              no preempt channel: requested pages queue behind the stream
  --run-seconds S           how long the destination runs the guest after the last page (default 1)
  --dirty-log KIND          pagemap-scan | uffd-wp (default: the best the kernel offers)
  --json                    print the report as one JSON object (last line)
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  switch (command) {
    case 'features':
      return featuresCommand(args);
    case 'demo':
      return demoCommand(args);
    case 'send':
      return sendCommand(args);
    case 'receive':
      return receiveCommand(args);
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

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: Error) => {
    process.stderr.write(`postcopy: ${error.message}\n`);
    if (error instanceof UsageError) process.stderr.write(`(postcopy --help lists the options)\n`);
    // exiting ends every thread at once: a guest thread blocked on a page never resumes on zeros
    process.exit(error instanceof UsageError ? 2 : 1);
  },
);
