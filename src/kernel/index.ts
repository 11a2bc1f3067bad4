// The typed kernel layer: the only user of the native addon.
export * from './constants.js';
export * from './errors.js';
export * from './events.js';
export * from './features.js';
export * from './mapping.js';
export * from './userfaultfd.js';
export type { Address } from './addon.js';
export * from './pagemap.js';
export * from './process.js';
export * from './self-memory.js';
