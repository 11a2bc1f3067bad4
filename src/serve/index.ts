// The page server for VMMs: Firecracker's userfaultfd handler protocol, many VMs, one server.
export { PageServer, type PageServerOptions, type VmInfo } from './server.js';
export { parseRegions, memoryFileLength, type GuestRegion } from './regions.js';
export { loadWorkingSet, saveWorkingSet, type WorkingSetFile } from './working-set.js';
export type { FileSourceSpec, PageSourceSpec, PrefetchMode } from './protocol.js';
export type { OnFailure } from './vm.js';
export { PageOrigin, type PageOriginOptions } from './page-origin.js';
export type { RemoteSourceOptions } from './remote-staging.js';
