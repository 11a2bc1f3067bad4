// Which authenticated channels may join the destination: one migration per destination; a
// main channel again only to recover, or to replace one presumed dead in postcopy; preempt
// and bulk channels only after their main channel, each once, bulk ones as announced.
import { Role, type HelloFields } from '../wire/index.js';
import type { IncomingState } from './state.js';

export interface AdmissionView {
  session: string | undefined;
  state: IncomingState;
  failure: Error | undefined;
  mainAlive: boolean;
  preemptAlive: boolean;
  expectBulk: number;
  hasBulk(index: number): boolean;
}

/** Why a channel may not join, or undefined when it may. */
export function admissionRefusal(hello: HelloFields, view: AdmissionView): string | undefined {
  const { session, state } = view;
  if (session !== undefined && hello.sessionId !== session) return `destination is busy with migration '${session}'`;
  if (state === 'FAILED') return `migration '${hello.sessionId}' has failed: ${view.failure?.message}`;
  if (hello.role === Role.MAIN) {
    // a live main channel may be replaced only where the source can recover (it saw it die)
    const recoverable = state === 'LISTENING' || state === 'RUNNING' || state === 'END';
    return view.mainAlive && !recoverable ? `migration '${hello.sessionId}' already has a main channel (state ${state})` : undefined;
  }
  if (!view.mainAlive) return 'the main channel must connect first';
  if (hello.role === Role.BULK) {
    if (hello.index >= view.expectBulk) return `bulk channel ${hello.index}: the main channel announced ${view.expectBulk} bulk channel(s)`;
    return view.hasBulk(hello.index) ? `migration '${hello.sessionId}' already has bulk channel ${hello.index}` : undefined;
  }
  return view.preemptAlive ? `migration '${hello.sessionId}' already has a preempt channel` : undefined;
}
