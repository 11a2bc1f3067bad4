// How numbers appear in messages and reports, the same in every layer.

/** `0x` and the hexadecimal digits: addresses, offsets, lengths and codes in messages. */
export function hex(value: bigint | number): string {
  return '0x' + value.toString(16);
}

/** `value` rounded to `digits` decimals (reports: milliseconds, rates). */
export function round(value: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
