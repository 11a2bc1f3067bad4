// Pure memory model: blocks, the list of blocks, bitmaps. No I/O.
export { Bitmap } from './bitmap.js';
export { MAX_PAGE_SIZE, RamBlock, checkIdstr, isPageSizeSummary, isValidPageSize, type RamBlockOptions } from './ramblock.js';
export { RamList } from './ramlist.js';
export { ZERO_PAGE, isZero, isZeroPage } from './zero.js';
