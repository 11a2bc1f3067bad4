// Pure memory model: blocks, the list of blocks, bitmaps. No I/O.
export * from './bitmap.js';
export * from './ramblock.js';
export * from './ramlist.js';
export * from './zero.js';
