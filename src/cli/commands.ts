// Every command once: what it takes (its option groups, which also write `postcopy --help`),
// and how it runs. main.ts parses a command line against this table and nothing else, so an
// option cannot be parsed without being in the help.
import { demoCommand, DEMO_OPTIONS } from './demo.js';
import { featuresCommand } from './features.js';
import { inspectCommand } from './inspect.js';
import { LIVENESS_OPTIONS, OUTPUT_OPTIONS, TLS_OPTIONS, TOKEN_OPTIONS, parseCommandLine, wantsJson, usage, type CommandArgs, type OptionGroup } from './options.js';
import { runCommand, type CommandEnd } from './output.js';
import { receiveCommand, RECEIVE_OPTIONS } from './receive.js';
import { GUEST_OPTIONS, RUN_OPTIONS } from './reference-guest.js';
import { restoreCommand, RESTORE_OPTIONS } from './restore.js';
import { sendCommand, SEND_OPTIONS } from './send.js';
import { serveCommand, SERVE_OPTIONS } from './serve.js';
import { servePagesCommand, SERVE_PAGES_OPTIONS } from './serve-pages.js';
import { snapshotCommand, SNAPSHOT_OPTIONS } from './snapshot.js';
import { MIGRATION_OPTIONS } from './source-runner.js';

export interface Command {
  name: string;
  /** The command line in the help's list of commands, and what it does. */
  synopsis: string;
  summary: string;
  groups: OptionGroup[];
  /** Takes positional arguments (inspect and restore: FILE). */
  positionals?: boolean;
  /** Fields of the object its --json output ends with (receive: its last line is an event). */
  jsonBase?: Record<string, unknown>;
  run(args: CommandArgs): CommandEnd | Promise<CommandEnd>;
}

export const COMMANDS: Command[] = [
  {
    name: 'demo', synopsis: 'demo [options]', summary: 'migrate a running reference guest between two processes on loopback',
    groups: [GUEST_OPTIONS, MIGRATION_OPTIONS, DEMO_OPTIONS, RUN_OPTIONS, LIVENESS_OPTIONS, OUTPUT_OPTIONS], run: demoCommand,
  },
  {
    name: 'send', synopsis: 'send --connect ADDR [opts]', summary: 'the source side: run the guest here and migrate it to ADDR',
    groups: [GUEST_OPTIONS, MIGRATION_OPTIONS, SEND_OPTIONS, TOKEN_OPTIONS, TLS_OPTIONS, LIVENESS_OPTIONS, OUTPUT_OPTIONS], run: sendCommand,
  },
  {
    name: 'receive', synopsis: 'receive --listen ADDR', summary: 'the destination side: take a migration, resume and verify the guest',
    groups: [RECEIVE_OPTIONS, TOKEN_OPTIONS, TLS_OPTIONS, RUN_OPTIONS, LIVENESS_OPTIONS, OUTPUT_OPTIONS], run: receiveCommand, jsonBase: { event: 'report' },
  },
  {
    name: 'features', synopsis: 'features [--json]', summary: "what this kernel's userfaultfd grants, and what each feature is for",
    groups: [OUTPUT_OPTIONS], run: featuresCommand,
  },
  {
    name: 'snapshot', synopsis: 'snapshot --out FILE [opts]', summary: "snapshot a running reference guest's memory into FILE while it writes",
    groups: [GUEST_OPTIONS, SNAPSHOT_OPTIONS, OUTPUT_OPTIONS], run: snapshotCommand,
  },
  {
    name: 'inspect', synopsis: 'inspect FILE [--json]', summary: 'a snapshot file: blocks, pages present, whether it is complete and intact',
    groups: [OUTPUT_OPTIONS], positionals: true, run: inspectCommand,
  },
  {
    name: 'serve', synopsis: 'serve --socket PATH [opts]', summary: "serve VMs' pages to their VMM (Firecracker's userfaultfd backend)",
    groups: [SERVE_OPTIONS, TOKEN_OPTIONS, TLS_OPTIONS, OUTPUT_OPTIONS], run: serveCommand, jsonBase: { event: 'stopped' },
  },
  {
    name: 'serve-pages', synopsis: 'serve-pages --listen ADDR', summary: 'serve a memory file to page servers on other hosts (serve --from)',
    groups: [SERVE_PAGES_OPTIONS, TOKEN_OPTIONS, TLS_OPTIONS, LIVENESS_OPTIONS, OUTPUT_OPTIONS], run: servePagesCommand, jsonBase: { event: 'stopped' },
  },
  {
    name: 'restore', synopsis: 'restore FILE [options]', summary: 'restore a snapshot of the reference guest, resume it, verify it',
    groups: [RESTORE_OPTIONS, RUN_OPTIONS, OUTPUT_OPTIONS], positionals: true, run: restoreCommand,
  },
];

/** Runs `postcopy NAME ARGS`: parsed against the command's groups, ended by runCommand. */
export function runCommandLine(name: string, args: string[]): Promise<number> {
  const command = COMMANDS.find((c) => c.name === name);
  return runCommand(wantsJson(args), () => {
    if (!command) throw usage(`unknown command '${name}'`);
    return command.run(parseCommandLine(args, command.groups, command.positionals === true, (option) => takenBy(option, command)));
  }, command?.jsonBase);
}

/** ' (send takes it)': the commands that take an option this one does not. */
function takenBy(option: string, command: Command): string {
  const name = option.replace(/^--/, '');
  const others = COMMANDS.filter((c) => c !== command && c.groups.some((g) => name in g.options)).map((c) => c.name);
  return others.length ? ` (${others.join(', ')} ${others.length === 1 ? 'takes' : 'take'} it)` : '';
}

/** `postcopy --help`: the commands, then each option group with the commands that take it. */
export function helpText(): string {
  const list = COMMANDS.map((c) => `  ${c.synopsis.padEnd(28)}${c.summary}`);
  const groups = [...new Set(COMMANDS.flatMap((c) => c.groups))];
  const width = Math.max(...groups.flatMap((g) => Object.entries(g.options).map(([name, spec]) => flag(name, spec.value).length))) + 4;
  const sections = groups.map((g) => {
    const users = COMMANDS.filter((c) => c.groups.includes(g)).map((c) => c.name);
    const heading = users.length === 1 && users[0] === g.title ? `${g.title} options:`
      : `${g.title} options (${users.length === COMMANDS.length ? 'every command' : users.join(', ')}):`;
    const lines = Object.entries(g.options).flatMap(([name, spec]) => spec.help.split('\n').map((text, i) =>
      `  ${(i ? '' : flag(name, spec.value)).padEnd(width)}${text}`));
    return [heading, ...lines].join('\n');
  });
  return [
    'usage: postcopy <command> [options]', '', 'commands:', ...list, '',
    'ADDR is HOST:PORT (TCP; needs a shared token: --token-file FILE or POSTCOPY_TOKEN) or unix:PATH.', '',
    sections.join('\n\n'), '',
  ].join('\n');
}

function flag(name: string, value: string | undefined): string {
  return value ? `--${name} ${value}` : `--${name}`;
}
