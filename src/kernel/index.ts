// The typed kernel layer: the only user of the native addon.
export { Mapping, attachMapping, threadId, type MappingDescriptor, type MappingOptions } from './mapping.js';
export { RangePlacer, RangeUnprotector, UnsupportedFeatureError, Userfaultfd, type OpenOptions, type WakeOption } from './userfaultfd.js';
export { EventBatch, type EventKind } from './events.js';
export { FileMapping } from './file-mapping.js';
export type { ForeignRange } from './foreign.js';
export { peerCredentials, receiveMessage, setSocketBuffers, shutdownSocket, socketDescriptor, socketPair, type PeerCredentials, type ReceivedMessage } from './socket.js';
export { freeHugePages, hasFeatures, probeFeatures, type FeatureReport } from './features.js';
export {
  COPY_MODE_DONTWAKE,
  COPY_MODE_WP,
  FEATURES,
  FEATURE_SINCE,
  FEATURE_USES,
  MADVISE,
  WRITEPROTECT_MODE_DONTWAKE,
  WRITEPROTECT_MODE_WP,
  ZEROPAGE_MODE_DONTWAKE,
  type Advice,
  type Feature,
  type Ioctl,
  type RegisterMode,
} from './constants.js';
export { PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP, PagemapReader, PagemapScanner } from './pagemap.js';
export { markZeroPages, writeRuns } from './page-io.js';
export { checksumPages, crc32c, crc32cHardware, crc32cSoftware } from './checksum.js';
export { duplicateDescriptor, exitNow } from './process.js';
export { SelfMemory } from './self-memory.js';
export { argumentError, errnoError, type SystemError } from './errors.js';
export type { Address } from './addon.js';
