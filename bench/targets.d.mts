// Types of bench/targets.mjs for its test (test/bench/targets.test.ts).
export interface RoundTrips {
  readonly issuances: number;
  readonly byCommand: Readonly<Record<string, number>>;
}
export function redisRoundTrips(roundTrips: RoundTrips | undefined): { perIssuance: number; occasional: number; issuances: number } | undefined;
export interface Target {
  readonly id: string;
  readonly target: string;
  readonly unit: string;
  readonly measured: number | undefined;
  readonly note?: string;
  readonly met: boolean | null;
}
export function issue19Targets(result: object): Target[];
export function printTargets(targets: readonly Target[]): void;
