// Command-line options: parsed and validated with messages that name the option and value.

import { readFileSync } from 'node:fs';
import { PostcopyError } from '../base/index.js';
import { parseEndpoint, type Endpoint } from '../transport/index.js';

/** A command line that cannot run: exit 2, with the message naming the option and value. */
export function usage(message: string): PostcopyError {
  return new PostcopyError('ERR_POSTCOPY_USAGE', message);
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

export interface Spec {
  [name: string]: 'string' | 'boolean';
}

/** Parses `--name value` / `--name=value` / `--flag` per spec; rejects anything unknown. */
export function parseOptions(args: string[], spec: Spec): Record<string, string | boolean | undefined> {
  const out: Record<string, string | boolean | undefined> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (!arg.startsWith('--')) throw usage(`unexpected argument '${arg}'`);
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    const type = spec[name];
    if (!type) throw usage(`unknown option --${name}`);
    if (type === 'boolean') {
      if (eq > 0) throw usage(`--${name} takes no value`);
      out[name] = true;
    } else {
      const value = eq > 0 ? arg.slice(eq + 1) : args[++i];
      if (value === undefined || value.startsWith('--')) throw usage(`--${name} needs a value`);
      out[name] = value;
    }
  }
  return out;
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

/** --recover-seconds and --stall-seconds, shared by demo, send and receive. */
export function livenessConfig(o: Record<string, string | boolean | undefined>): { recoverSeconds: number; stallSeconds: number } {
  return {
    recoverSeconds: numberOption(o['recover-seconds'], 'recover-seconds', 30, 0, 3600),
    stallSeconds: numberOption(o['stall-seconds'], 'stall-seconds', 5, 0.5, 3600),
  };
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
