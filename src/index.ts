// postcopy: userfaultfd-backed postcopy live migration and background snapshots, as a VMM
// embeds them: guest memory and the userfaultfd, both ends of a migration and their
// channels, background snapshots and restores, and the errors they fail with. Each layer has
// its own subpath too (postcopy/kernel, /memory, /wire, /transport, /pager, /incoming,
// /outgoing, /snapshot, /serve); the reference guest and the fault injector are postcopy/testing.
export { ERROR_CODES, PostcopyError, ProtocolError, type ErrorCode } from './base/index.js';
export {
  Mapping,
  Userfaultfd,
  attachMapping,
  exitNow,
  freeHugePages,
  hasFeatures,
  probeFeatures,
  threadId,
  type Feature,
  type FeatureReport,
  type MappingOptions,
} from './kernel/index.js';
export { Bitmap, RamBlock, RamList } from './memory/index.js';
export { IncomingMigration, type IncomingOptions, type IncomingReport, type IncomingState } from './incoming/index.js';
export { OutgoingMigration, type OutgoingOptions, type OutgoingProgress, type OutgoingReport } from './outgoing/index.js';
export {
  IncomingListener,
  connectChannel,
  formatEndpoint,
  parseEndpoint,
  type AcceptedChannel,
  type ChannelRole,
  type ConnectedChannel,
  type Endpoint,
} from './transport/index.js';
export type { GuestBlock } from './pager/index.js';
export {
  BackgroundSnapshot,
  LazyRestore,
  SnapshotReader,
  WorkingSet,
  restoreEager,
  workingSetPath,
  type EagerRestoreReport,
  type LazyRestoreReport,
  type SnapshotOptions,
  type SnapshotReport,
} from './snapshot/index.js';
export { PageServer, type PageServerOptions, type VmInfo } from './serve/index.js';
