export * from './dirty-log.js';
export * from './outgoing.js';
