// The source of a migration.
export { OutgoingMigration } from './outgoing.js';
export type { OutgoingOptions, OutgoingProgress } from './options.js';
export type { DowntimeParts, OutgoingReport, PrecopyEnd, PrecopyRound } from './report.js';
export { DIRTY_LOG_KINDS, dirtyLogKinds, type DirtyLogKind, type HoldGuest } from './dirty-log.js';
