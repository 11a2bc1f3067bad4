#!/usr/bin/env node
// postcopy command line: thin front ends over the library.
import { exitNow } from '../kernel/index.js';
import { demoCommand } from './demo.js';
import { featuresCommand } from './features.js';
import { inspectCommand } from './inspect.js';
import { UsageError } from './options.js';
import { receiveCommand } from './receive.js';
import { restoreCommand } from './restore.js';
import { sendCommand } from './send.js';
import { snapshotCommand } from './snapshot.js';

const USAGE = `usage: postcopy <command> [options]

commands:
  demo [options]              migrate a running reference guest between two processes on loopback
  send --connect ADDR [opts]  the source side: run the guest here and migrate it to ADDR
  receive --listen ADDR       the destination side: take a migration, resume and verify the guest
  features [--json]           what this kernel's userfaultfd grants, and what each feature is for
  snapshot --out FILE [opts]  snapshot a running reference guest's memory into FILE while it writes
  inspect FILE [--json]       a snapshot file: blocks, pages present, whether it is complete and intact
  restore FILE [options]      restore a snapshot of the reference guest, resume it, verify it

ADDR is HOST:PORT (TCP; needs a shared token: --token-file FILE or POSTCOPY_TOKEN) or unix:PATH.

demo/send options:
  --size SIZE               guest memory, e.g. 256M, 2G (default 256M)
  --blocks N                split it into N blocks of different sizes (default 1)
  --huge                    2 MiB hugetlb blocks
  --threads N               guest threads (default 2)
  --pattern P               sequential | random | hotset | read (default random)
  --fill N                  passes writing every page before the guest runs (default 1, 0 for
                            read): 0 leaves memory untouched until the guest writes it
  --precopy-seconds S       precopy before switching to postcopy; 0 = straight to postcopy (default 2)
  --postcopy-max-mibs N     cap the postcopy background stream at N MiB/s (default 0: no cap);
                            requested pages are never held back
  --transport tcp|unix      (demo) the channel transport (default tcp)
  --no-preempt              no preempt channel: requested pages queue behind the stream
  --channels N              bulk channels (0-16, default 0): precopy and the background stream
                            go on N more connections, each fed and drained by its own thread
  --run-seconds S           how long the destination runs the guest after the last page (default 1)
  --dirty-log KIND          pagemap-scan | uffd-wp | soft-dirty (default: the best the kernel
                            offers, in that order; soft-dirty parks the guest for each sync)
  --chaos SEED              (demo) both channels go through a fault-injecting proxy that cuts
                            them at points chosen from SEED during postcopy; the migration must
                            recover and verify (the report counts the recoveries)
  --json                    print the report as one JSON object (last line)

snapshot options (also --size, --blocks, --huge, --threads, --pattern, --fill, --json as above):
  --out FILE                the snapshot file (written as FILE.partial, renamed when complete)
  --shared                  memfd (MAP_SHARED) guest memory instead of private anonymous memory
  --warmup-seconds S        how long the guest runs before the snapshot (default 0.5)
  --unpopulated MODE        never-touched pages: kernel (WP_UNPOPULATED) | populate | auto (default)
  --no-checksums            no page-data checksums in the trailer (header, bitmaps and device
                            state are always checked)

liveness options (demo, send, receive):
  --recover-seconds S       how long a connection broken in postcopy may take to come back
                            (default 30; 0 = a break fails the migration)
  --stall-seconds S         a connection with no bytes for this long is broken (default 5)

receive options:
  --listen ADDR             where to listen
  --token-file FILE         the shared token (or POSTCOPY_TOKEN)
  --run-seconds S           how long to run the guest after the last page (default 1)
  --exit-on-stdin-eof       fail and exit when stdin closes (for a supervising process)
  --json                    one JSON object per event, the report last

restore options:
  --eager                   read every page into fresh memory, then resume the guest (default)
  --lazy                    resume the guest at once: faults are served from the file while the
                            rest is prefetched, first the working set FILE.ws if there is one
  --record-working-set      (lazy) save the pages the guest faulted on, in order, as FILE.ws;
                            nothing is prefetched until the guest has run S seconds
  --run-seconds S           how long to run the guest once every page is present (default 1)
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
    case 'snapshot':
      return snapshotCommand(args);
    case 'inspect':
      return inspectCommand(args);
    case 'restore':
      return restoreCommand(args);
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

// A parent that went away closes our stdout/stderr: what we write is lost, and that is no error.
process.stdout.on('error', () => undefined);
process.stderr.on('error', () => undefined);

// Every exit is exitNow: Node's own exit joins worker threads, and a guest thread blocked on a
// page that will never arrive never joins. exitNow ends every thread at once (no zero page read).
main(process.argv.slice(2)).then(
  (code) => exitNow(code),
  (error: Error) => {
    const hint = error instanceof UsageError ? '\n(postcopy --help lists the options)' : '';
    exitNow(error instanceof UsageError ? 2 : 1, `postcopy: ${error.message}${hint}`);
  },
);
process.on('uncaughtException', (error) => exitNow(1, `postcopy: internal error: ${error.stack ?? error.message}`));
