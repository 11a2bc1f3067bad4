// What every userfaultfd pager shares (the migration destination, lazy restore, the page
// server): fault service, run placement, precopy writes, huge pages assembled per channel,
// the sure stop after a failure, latency and blocktime.
export { FaultService, type PageRequester } from './fault-service.js';
export { nextMissingPage, openForMissing, type GuestBlock, type HostRange, type PagerBlock, type PrefetchCursor } from './guest-block.js';
export { HugePageAssembler } from './huge-page-assembler.js';
export { PrecopyWriter, type WritableBlock } from './precopy-writer.js';
export { PagePlacer, RunPlacer, blockTarget, type PageBytes, type PlacementTarget, type RunPlacerOptions } from './run-placer.js';
export { Blocktime, LatencyHistogram, blocktimePerThread, latencyReport, type LatencyReport } from './stats.js';
export { endGuestSurely, type FailedGuest } from './sure-stop.js';
