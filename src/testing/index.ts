// postcopy/testing: what tests of a migration need beside the engines: the reference guest
// (a workload whose every page can be verified) and its verifier, the fault-injecting proxy,
// and seeded randomness for reproducible plans.
export * from '../guest/index.js';
export { ChaosProxy, type ChaosProxyOptions, type ChaosStats, type ChaosDirection, type CutStyle, type FaultSpread, type PlannedFault, type AppliedFault } from './chaos-proxy.js';
export { seededRandom } from './seeded-random.js';
