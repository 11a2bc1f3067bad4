// Child processes a scenario process spawns (the postcopy source, the `postcopy demo` of a
// migration scenario): whatever ends this process (an error, exit, SIGINT/SIGTERM/SIGHUP),
// they die with it.
import type { ChildProcess } from 'node:child_process';

const children = new Set<ChildProcess>();
let hooked = false;

function killChildren(): void {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
}

/** Kills `child` when this process ends, until it has exited by itself. */
export function killOnExit(child: ChildProcess): void {
  if (!hooked) {
    hooked = true;
    process.on('exit', killChildren);
    for (const [signal, number] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]] as const) {
      process.on(signal, () => {
        killChildren();
        process.exit(128 + number);
      });
    }
  }
  children.add(child);
  child.once('close', () => children.delete(child));
}
