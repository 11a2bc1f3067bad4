// postcopy: userfaultfd-backed postcopy live migration and background snapshots.
export * from './kernel/index.js';
export * from './memory/index.js';
export * from './guest/index.js';
