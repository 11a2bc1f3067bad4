// Background snapshots: the file, the engine that writes it from running memory, restore.
export { BackgroundSnapshot } from './background.js';
export type { SnapshotBlock, SnapshotOptions, SnapshotProgress, SnapshotReport, UnpopulatedMode } from './options.js';
export {
  PARTIAL_SUFFIX,
  SnapshotIncompleteError,
  SnapshotReader,
  SnapshotWriter,
  writeFully,
  type SnapshotBlockInfo,
  type SnapshotStatus,
} from './file.js';
export { verifyPageData, type PageDataCheck } from './verify.js';
export { restoreEager, type EagerRestoreOptions, type EagerRestoreReport } from './restore-eager.js';
export { LazyRestore, type LazyRestoreOptions, type LazyRestoreProgress, type LazyRestoreReport } from './restore-lazy.js';
export { WorkingSet, workingSetPath, type WorkingSetPage } from './working-set.js';
