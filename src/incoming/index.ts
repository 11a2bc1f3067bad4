// The destination of a migration.
export { IncomingMigration } from './incoming.js';
export type { IncomingOptions } from './options.js';
export type { IncomingReport } from './report.js';
export type { IncomingState } from './state.js';
