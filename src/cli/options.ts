// Command-line options: each command declares them once, in tables that also write the help;
// node:util parseArgs reads them, and every refusal names the option and the value.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { PostcopyError, errorCode } from '../base/index.js';
import { loadTls, parseEndpoint, type Endpoint, type TlsSettings } from '../transport/index.js';

/** A command line that cannot run: exit 2, with the message naming the option and value. */
export function usage(message: string): PostcopyError {
  return new PostcopyError('ERR_POSTCOPY_USAGE', message);
}

export interface OptionSpec {
  type: 'string' | 'boolean';
  /** What the value is, in the help (string options): SIZE, N, S, FILE... */
  value?: string;
  /** One line or more (split by \n) for `postcopy --help`. */
  help: string;
}

/** Options that go together, listed in the help under `title` with the commands that take them. */
export interface OptionGroup {
  title: string;
  options: Record<string, OptionSpec>;
}

export type Values = Record<string, string | boolean | undefined>;

/** What a command is given: its options, its positional arguments (inspect, restore), and --json. */
export interface CommandArgs {
  values: Values;
  positionals: string[];
  json: boolean;
}

/** --json anywhere before `--`: known before parsing, so that a usage error is JSON too. */
export function wantsJson(args: string[]): boolean {
  const end = args.indexOf('--');
  return (end < 0 ? args : args.slice(0, end)).includes('--json');
}

/**
 * Strict parseArgs over the options of `groups`; its TypeErrors become our one-line usage
 * errors. `elsewhere(option)` may say which other commands take an option this one does not.
 */
export function parseCommandLine(args: string[], groups: OptionGroup[], allowPositionals: boolean, elsewhere: (option: string) => string = () => ''): CommandArgs {
  const options: Record<string, OptionSpec> = Object.assign({}, ...groups.map((g) => g.options));
  const config = Object.fromEntries(Object.entries(options).map(([name, spec]) => [name, { type: spec.type }]));
  try {
    const { values, positionals } = parseArgs({ args: dashValuesInline(args, options), options: config, strict: true, allowPositionals });
    return { values: values as Values, positionals, json: values.json === true };
  } catch (error) {
    // parseArgs names the option (or argument) first, in quotes: '--size <value>', '--bogus', 'x'
    const quoted = /'([^']*)'/.exec((error as Error).message)?.[1].split(' ')[0];
    if (quoted === undefined) throw error;
    switch (errorCode(error)) {
      case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
        throw usage(`unknown option ${quoted}${elsewhere(quoted)}`);
      case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
        throw usage(options[quoted.replace(/^--/, '')]?.type === 'boolean' ? `${quoted} takes no value` : `${quoted} needs a value`);
      case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
        throw usage(`unexpected argument '${quoted}'`);
    }
    throw error;
  }
}

/**
 * `--name -1` as `--name=-1`: strict parseArgs refuses a separate value starting with '-' as
 * ambiguous, and then `--precopy-seconds -1` would read as a missing value instead of a bad
 * number. A value starting with '--' stays apart (it is the next option: a missing value).
 */
function dashValuesInline(args: string[], options: Record<string, OptionSpec>): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const [arg, next] = [args[i], args[i + 1]];
    if (arg === '--') return out.concat(args.slice(i));
    const takesValue = arg.startsWith('--') && options[arg.slice(2)]?.type === 'string';
    if (takesValue && next?.startsWith('-') && !next.startsWith('--')) out.push(`${arg}=${args[++i]}`);
    else out.push(arg);
  }
  return out;
}

/** The one FILE of inspect and restore. */
export function oneFile(command: string, files: string[]): string {
  if (files.length === 1) return files[0];
  throw usage(files.length ? `${command} takes one FILE, not ${files.length}: ${files.join(' ')}` : `${command} needs a snapshot FILE: postcopy ${command} FILE [options]`);
}

export function endpointOption(value: string, option: string): Endpoint {
  try {
    return parseEndpoint(value, option);
  } catch (error) {
    throw usage((error as Error).message);
  }
}

export function parseSize(text: string, option: string): number {
  const match = /^(\d+(?:\.\d+)?)([KMGT]i?B?|B)?$/i.exec(text.trim());
  if (!match) throw usage(`${option} '${text}' is not a size (e.g. 256M, 2G)`);
  const units: Record<string, number> = { '': 1, B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };
  const bytes = Number(match[1]) * units[(match[2] ?? '').charAt(0).toUpperCase()];
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw usage(`${option} '${text}' is not a positive whole number of bytes`);
  return bytes;
}

export function intOption(value: string | boolean | undefined, option: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (typeof value !== 'string' || !Number.isInteger(n) || n < min || n > max) {
    throw usage(`--${option} '${value}' must be a whole number from ${min} to ${max}`);
  }
  return n;
}

export function numberOption(value: string | boolean | undefined, option: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (typeof value !== 'string' || !Number.isFinite(n) || n < min || n > max) {
    throw usage(`--${option} '${value}' must be a number from ${min} to ${max}`);
  }
  return n;
}

export function choiceOption<T extends string>(value: string | boolean | undefined, option: string, choices: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !choices.includes(value as T)) {
    throw usage(`--${option} '${value}' must be one of ${choices.join(', ')}`);
  }
  return value as T;
}

export const OUTPUT_OPTIONS: OptionGroup = {
  title: 'output',
  options: {
    json: { type: 'boolean', help: 'end with one JSON object on the last stdout line: the report, or on a\nfailure {..., error, error_code} (receive: one object per event before it)' },
  },
};

export const LIVENESS_OPTIONS: OptionGroup = {
  title: 'liveness',
  options: {
    'recover-seconds': { type: 'string', value: 'S', help: 'how long a connection broken in postcopy may take to come back\n(default 30; 0 = a break fails the migration)' },
    'stall-seconds': { type: 'string', value: 'S', help: 'a connection with no bytes for this long is broken (default 5)' },
  },
};

/** --recover-seconds and --stall-seconds, shared by demo, send and receive. */
export function livenessConfig(o: Values): { recoverSeconds: number; stallSeconds: number } {
  return {
    recoverSeconds: numberOption(o['recover-seconds'], 'recover-seconds', 30, 0, 3600),
    stallSeconds: numberOption(o['stall-seconds'], 'stall-seconds', 5, 0.5, 3600),
  };
}

export const TOKEN_OPTIONS: OptionGroup = {
  title: 'token',
  options: { 'token-file': { type: 'string', value: 'FILE', help: 'the shared token for TCP (else POSTCOPY_TOKEN)' } },
};

export const TLS_OPTIONS: OptionGroup = {
  title: 'tls',
  options: {
    'tls-cert': { type: 'string', value: 'FILE', help: "TLS 1.3 on every channel: this side's certificate (PEM); both sides\nneed --tls-cert, --tls-key and --tls-ca, and the token still" },
    'tls-key': { type: 'string', value: 'FILE', help: 'the key of --tls-cert (PEM)' },
    'tls-ca': { type: 'string', value: 'FILE', help: "the authority that signs the peer's certificate (PEM)" },
    'tls-psk': { type: 'string', value: 'FILE', help: 'TLS 1.3 with a key both sides hold instead of certificates: hex\ndigits in FILE (openssl rand -hex 32)' },
  },
};

/** TLS settings from --tls-cert, --tls-key and --tls-ca, or --tls-psk; undefined without them (plaintext). */
export function readTls(o: Values): TlsSettings | undefined {
  const file = (name: string) => (typeof o[`tls-${name}`] === 'string' ? (o[`tls-${name}`] as string) : undefined);
  return loadTls({ cert: file('cert'), key: file('key'), ca: file('ca'), psk: file('psk') });
}

/** The token from --token-file, else from POSTCOPY_TOKEN. */
export function readToken(tokenFile: string | boolean | undefined): string | undefined {
  if (typeof tokenFile === 'string') {
    const token = readFileSync(tokenFile, 'utf8').trim();
    if (!token) throw usage(`--token-file ${tokenFile} is empty`);
    return token;
  }
  return process.env.POSTCOPY_TOKEN || undefined;
}
