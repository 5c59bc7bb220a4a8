/**
 * Counts store failures and times audit appends without touching the store implementations: a Proxy
 * that wraps the Store interface's methods (wrappers made once per method, not per call) and passes
 * everything else through to the real store, so implementation-specific members keep working.
 */
import { performance } from 'node:perf_hooks';
import { BrokerError } from '../errors.js';
import type { Store } from '../store/store.js';
import { STORE_OPS } from './metrics.js';

export interface StoreObserver {
  storeError(op: string): void;
  auditAppended(elapsedMs: number): void;
}

const OPS: ReadonlySet<PropertyKey> = new Set<PropertyKey>(STORE_OPS);

/** A caller's bad argument (a 4xx BrokerError) is not a store failure. */
function isStoreFailure(err: unknown): boolean {
  return !(err instanceof BrokerError && err.status < 500);
}

type AnyFn = (...args: unknown[]) => unknown;

export function instrumentStore<S extends Store>(store: S, observer: StoreObserver): S {
  const wrapped = new Map<PropertyKey, AnyFn>();

  // The method is looked up at call time, so a store that swaps its methods keeps working.
  const call = (op: string, args: unknown[]): unknown => (Reflect.get(store, op, store) as AnyFn).apply(store, args);
  const wrap = (op: string): AnyFn => {
    const failed = (err: unknown): never => {
      if (isStoreFailure(err)) observer.storeError(op);
      throw err;
    };
    if (op === 'appendAuditEntries') {
      return (...args) => {
        const started = performance.now();
        let result: Promise<unknown>;
        try {
          result = call(op, args) as Promise<unknown>;
        } catch (err) {
          return failed(err);
        }
        return result.then((index) => {
          observer.auditAppended(performance.now() - started);
          return index;
        }, failed);
      };
    }
    return (...args) => {
      let result: unknown;
      try {
        result = call(op, args);
      } catch (err) {
        return failed(err);
      }
      return result instanceof Promise ? result.catch(failed) : result;
    };
  };

  return new Proxy(store, {
    get(target, prop) {
      const cached = wrapped.get(prop);
      if (cached !== undefined) return cached;
      // The real store is the receiver: its methods and getters may use private fields.
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      if (!OPS.has(prop)) return (value as AnyFn).bind(target);
      const out = wrap(prop as string);
      wrapped.set(prop, out);
      return out;
    },
  });
}
