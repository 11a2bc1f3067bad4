// The destination's postcopy state machine (QEMU's PostcopyState plus PAUSED and FAILED).
// Every command is checked against the state it arrives in: a stream that sends them out of
// order fails the migration with a message naming both.
import { PostcopyError } from '../base/index.js';

export type IncomingState = 'NONE' | 'ADVISE' | 'DISCARD' | 'LISTENING' | 'RUNNING' | 'END' | 'PAUSED' | 'FAILED';

/** What moves the machine: the stream's postcopy commands, and the destination's own events. */
export type IncomingTransition =
  | 'POSTCOPY_ADVISE'
  | 'POSTCOPY_RAM_DISCARD'
  | 'POSTCOPY_LISTEN'
  | 'POSTCOPY_RUN'
  | 'COMPLETE'
  | 'CONNECTION_LOST'
  | 'POSTCOPY_RESUME';

const TRANSITIONS: Record<IncomingTransition, { from: IncomingState[]; to: IncomingState }> = {
  POSTCOPY_ADVISE: { from: ['NONE'], to: 'ADVISE' },
  // the first discard ends precopy; more discards may follow
  POSTCOPY_RAM_DISCARD: { from: ['ADVISE', 'DISCARD'], to: 'DISCARD' },
  POSTCOPY_LISTEN: { from: ['ADVISE', 'DISCARD'], to: 'LISTENING' },
  POSTCOPY_RUN: { from: ['LISTENING'], to: 'RUNNING' },
  COMPLETE: { from: ['RUNNING'], to: 'END' },
  CONNECTION_LOST: { from: ['LISTENING', 'RUNNING'], to: 'PAUSED' },
  // back to the state the connection was lost in (see IncomingStateMachine.apply)
  POSTCOPY_RESUME: { from: ['PAUSED'], to: 'RUNNING' },
};

export class IncomingStateMachine {
  private current: IncomingState = 'NONE';
  /** The state a lost connection paused: RESUME returns there (LISTENING still waits for RUN). */
  private pausedFrom: IncomingState | undefined;
  private readonly listeners: ((from: IncomingState, to: IncomingState) => void)[] = [];
  failure: Error | undefined;

  get state(): IncomingState {
    return this.current;
  }

  /** True once pages must be placed atomically (the destination may be faulting on them). */
  get atomicPlacement(): boolean {
    return this.current === 'LISTENING' || this.current === 'RUNNING' || this.current === 'PAUSED';
  }

  onChange(listener: (from: IncomingState, to: IncomingState) => void): void {
    this.listeners.push(listener);
  }

  /** Applies a transition or throws (ERR_POSTCOPY_STATE) naming the state and the command. */
  apply(transition: IncomingTransition): IncomingState {
    const rule = TRANSITIONS[transition];
    if (!rule.from.includes(this.current)) {
      throw new PostcopyError('ERR_POSTCOPY_STATE', `${transition} is not allowed in state ${this.current} (allowed in ${rule.from.join(', ')})`);
    }
    let to = rule.to;
    if (transition === 'CONNECTION_LOST') this.pausedFrom = this.current;
    if (transition === 'POSTCOPY_RESUME') to = this.pausedFrom ?? to;
    this.set(to);
    return to;
  }

  allows(transition: IncomingTransition): boolean {
    return TRANSITIONS[transition].from.includes(this.current);
  }

  fail(error: Error): void {
    if (this.current === 'FAILED' || this.current === 'END') return;
    this.failure = error;
    this.set('FAILED');
  }

  private set(to: IncomingState): void {
    const from = this.current;
    this.current = to;
    for (const listener of this.listeners) listener(from, to);
  }
}
