export * from './fault-service.js';
export * from './incoming.js';
export * from './placement.js';
export * from './state.js';
export * from './stats.js';
export * from './temp-page.js';
