// Background snapshots: the file, the engine that writes it from running memory, restore.
export * from './file.js';
export * from './background.js';
export * from './verify.js';
