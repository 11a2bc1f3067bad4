// Background snapshots: the file, the engine that writes it from running memory, restore.
export * from './file.js';
export * from './background.js';
export * from './options.js';
export * from './verify.js';
export * from './restore-targets.js';
export * from './restore-eager.js';
export * from './restore-lazy.js';
export * from './working-set.js';
