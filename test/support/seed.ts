// Seeds of the seeded loops. `npm test` runs each loop on a fixed seed, so that CI does not
// fail at random on a rare draw; `npm run soak` and `VAR=random` draw new ones, and a seed
// from a failure replays it (`VAR=N`).

/** The seed in `variable` (a number, or 'random' for a fresh one), else `fixed`, else a fresh one. */
export function loopSeed(variable: string, fixed?: number): number {
  const value = process.env[variable];
  if (value !== undefined && value !== 'random') {
    const seed = Number(value);
    if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`${variable}=${value}: a seed is a non-negative integer, or 'random'`);
    return seed;
  }
  return value === undefined && fixed !== undefined ? fixed : Math.floor(Math.random() * 2 ** 31);
}
