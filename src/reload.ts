/**
 * Reload without restart (SIGHUP, POST /v1/admin/reload): re-reads the config file and puts the live
 * settings in force — token issuers (JWKS files re-read), the config's registration entries, rate
 * limits, alert rules, log level. A config that does not load is refused and the running one kept.
 * Settings that cannot change in a running broker (listen address, TLS, CA, store, …) are reported as
 * needing a restart, never silently ignored. Requests in flight finish on what they started with:
 * each piece is swapped whole.
 */
import type { AuditEntry } from './audit/entry.js';
import type { AuditLog } from './audit/log.js';
import { createTokenAttestor, type ReplaceableTokenAttestor } from './attest/attestor.js';
import type { AlertEngine } from './audit/alerts.js';
import type { Clock } from './clock.js';
import type { Config } from './config/config.js';
import type { RegistrationPolicy } from './policy/registration.js';
import type { RateLimiter } from './server/limits.js';

/** What a reload may change live (top-level settings, and audit.alerts). */
export const LIVE_SETTINGS = ['issuers', 'registration', 'limits', 'audit.alerts', 'logLevel'] as const;

export interface ReloadReport {
  /** Live settings that changed and are now in force. */
  readonly applied: readonly string[];
  /** Settings that changed in the file but keep their old value until a restart. */
  readonly needsRestart: readonly string[];
}

export interface ReloadTargets {
  readonly tokenAttestor: ReplaceableTokenAttestor;
  readonly policy: RegistrationPolicy;
  readonly limits: RateLimiter;
  readonly alerts: AlertEngine;
  readonly audit: AuditLog;
  readonly clock: Clock;
}

const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

/** Which settings differ between two configs: live ones, and the rest (dotted names, sorted). */
export function configChanges(old: Config, next: Config): ReloadReport {
  const applied: string[] = [];
  const needsRestart: string[] = [];
  const keys = new Set([...Object.keys(old), ...Object.keys(next)]);
  for (const key of keys) {
    const a = (old as unknown as Record<string, unknown>)[key];
    const b = (next as unknown as Record<string, unknown>)[key];
    if (key === 'audit') {
      const auditKeys = new Set([...Object.keys(old.audit), ...Object.keys(next.audit)]);
      for (const k of auditKeys) {
        if (same((old.audit as unknown as Record<string, unknown>)[k], (next.audit as unknown as Record<string, unknown>)[k])) continue;
        (k === 'alerts' ? applied : needsRestart).push(`audit.${k}`);
      }
      continue;
    }
    if (same(a, b)) continue;
    ((LIVE_SETTINGS as readonly string[]).includes(key) ? applied : needsRestart).push(key);
  }
  return { applied: applied.sort(), needsRestart: needsRestart.sort() };
}

export class ConfigReloader {
  #current: Config;
  readonly #listeners: ((config: Config) => void)[] = [];
  #chain: Promise<unknown> = Promise.resolve();

  constructor(
    initial: Config,
    private readonly load: (() => Config) | undefined,
    private readonly targets: ReloadTargets,
  ) {
    this.#current = initial;
  }

  /** The config whose live settings are in force. */
  get current(): Config {
    return this.#current;
  }

  /** Called after each successful reload (the server sets its log level). */
  onReload(listener: (config: Config) => void): void {
    this.#listeners.push(listener);
  }

  /** Re-reads the config and applies it; rejects (with the old config in force) if it does not load. One at a time. */
  reload(): Promise<ReloadReport> {
    const run = this.#chain.then(() => this.#reload());
    this.#chain = run.catch(() => undefined);
    return run;
  }

  async #reload(): Promise<ReloadReport> {
    if (this.load === undefined) throw new Error('this broker was not started from a config it can re-read');
    const next = this.load();
    const report = configChanges(this.#current, next);
    // Everything that can fail first (JWKS files, the webhook CA), then the swaps, which cannot.
    // Issuers whose keys are fetched from the same place keep their last good keys (issuer down at reload).
    const attestor = createTokenAttestor(next, this.targets.clock, this.targets.tokenAttestor);
    this.targets.alerts.reconfigure(next.audit.alerts);
    this.targets.tokenAttestor.replace(attestor);
    this.targets.policy.replaceSeed(next.registration);
    this.targets.limits.configure(next.limits);
    // Only live settings move; the rest keep their running values until a restart.
    this.#current = Object.freeze({
      ...this.#current,
      issuers: next.issuers,
      registration: next.registration,
      limits: next.limits,
      logLevel: next.logLevel,
      audit: Object.freeze({ ...this.#current.audit, alerts: next.audit.alerts }),
    });
    for (const listener of this.#listeners) listener(this.#current);
    return report;
  }

  /**
   * A reload asked for by a signal (SIGHUP): applied or refused, it is one audit entry (actor null,
   * source "signal"); resolves with the report or the error, never rejects.
   */
  async reloadOnSignal(replicaId: string, requestId: string): Promise<ReloadReport | Error> {
    let result: ReloadReport | Error;
    try {
      result = await this.reload();
    } catch (err) {
      result = err instanceof Error ? err : new Error(String(err));
    }
    const entry: AuditEntry = {
      ts: this.targets.clock.now(),
      type: 'admin',
      decision: result instanceof Error ? 'deny' : 'allow',
      actor: null,
      subject: null,
      source: 'signal',
      action: 'config.reload',
      reason: describeReload(result),
      requestId,
      replica: replicaId,
    };
    try {
      await this.targets.audit.append(entry);
    } catch (err) {
      return result instanceof Error ? result : new Error(`reloaded, but the audit log could not record it: ${(err as Error).message}`);
    }
    return result;
  }
}

/** One line for logs and the audit entry. */
export function describeReload(result: ReloadReport | Error): string {
  if (result instanceof Error) return `config not reloaded (the running config is kept): ${result.message}`;
  const applied = result.applied.length > 0 ? result.applied.join(', ') : 'nothing changed';
  return `config reloaded: applied ${applied}${result.needsRestart.length > 0 ? `; needs restart: ${result.needsRestart.join(', ')}` : ''}`;
}
