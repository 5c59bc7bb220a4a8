/** One clock for every timestamp the broker writes: UTC milliseconds. Injected so tests can move time. */
export interface Clock {
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };
