/**
 * The agent: a TesseraClient whose credentials are mirrored into files for workloads that cannot use
 * the SDK. Init-container mode (`once`) fetches, writes and returns; sidecar mode keeps the files
 * current as the client rotates, serves /healthz, and runs the --on-rotate command after each change.
 */
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import { TesseraClient, type JwtSvid, type RotatedEvent, type X509Svid } from '../sdk/client.js';
import { TesseraError } from '../sdk/errors.js';
import type { BackoffOptions } from '../sdk/timing.js';
import { OutputDirectory, type OutputFile } from './files.js';
import { startHealthServer, type HealthReport, type HealthServer } from './health.js';
import { RotateHook } from './hook.js';
import type { AgentLogger } from './log.js';
import type { FileNameLayout } from './config.js';
import { ClientIdentity, jwtKeysOf } from './workload-api/identity.js';
import { startWorkloadApi, type WorkloadApiServer } from './workload-api/server.js';

export interface AgentOptions {
  readonly broker: string;
  readonly bundleFile: string;
  readonly tokenFile: string;
  /** Where the files go; optional for a sidecar that serves the Workload API instead. */
  readonly outDir?: string;
  readonly once: boolean;
  readonly jwtAudiences: readonly string[];
  readonly onRotate?: string;
  /** Loopback port for /healthz; 0 picks a free one; absent: no health endpoint. */
  readonly healthPort?: number;
  /** How long to keep trying for the first SVID before giving up (seconds). */
  readonly deadlineSeconds?: number;
  readonly backoff?: BackoffOptions;
  /** Serve the SPIFFE Workload API and Envoy SDS on this Unix socket (absolute path; sidecar mode). */
  readonly workloadApiSocket?: string;
  /** Open streams on that socket before new ones are refused (ResourceExhausted). */
  readonly workloadApiMaxStreams?: number;
  /** File names: Tessera's (svid.pem, svid.key, bundle.pem; the default) or spiffe-helper's. */
  readonly fileNames?: FileNameLayout;
}

/** The names of the SVID, key and bundle files in each layout; jwt_bundle.json and jwt/ are common. */
export const FILE_NAMES: Readonly<Record<FileNameLayout, { readonly svid: string; readonly key: string; readonly bundle: string }>> = {
  tessera: { svid: 'svid.pem', key: 'svid.key', bundle: 'bundle.pem' },
  'spiffe-helper': { svid: 'svid.pem', key: 'svid_key.pem', bundle: 'svid_bundle.pem' },
};
export const JWT_BUNDLE_FILE = 'jwt_bundle.json';
/** federated/<trust domain>.pem (X.509 authorities) and .jwks.json (JWT keys) of each federated trust domain. */
export const FEDERATED_DIR = 'federated';

/** The agent could not do its job (no SVID by the deadline, files not writable); exit non-zero. */
export class AgentError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentError';
  }
}

/** File name for an audience: safe characters kept, anything else %-encoded (as UTF-8 bytes). */
export function audienceFileName(audience: string): string {
  const encoded = [...Buffer.from(audience, 'utf8')]
    .map((b, i) => {
      const c = String.fromCharCode(b);
      return /[A-Za-z0-9_-]/.test(c) || (c === '.' && i > 0) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
    })
    .join('');
  return `${encoded}.token`;
}

const PUBLISH_RETRY_MS = 2_000;
/** In the output directory: the newest audit checkpoint the agent has seen (public data, 0644). */
export const CHECKPOINT_FILE = '.audit-checkpoint';

export class Agent {
  readonly #opts: AgentOptions;
  readonly #log: AgentLogger;
  readonly #client: TesseraClient;
  readonly #out: OutputDirectory | undefined;
  readonly #identity: ClientIdentity | undefined;
  #workloadApi: WorkloadApiServer | undefined;
  readonly #hook: RotateHook | undefined;
  #x509: X509Svid | undefined;
  readonly #jwts = new Map<string, JwtSvid>();
  #ready = false;
  #stopped = false;
  #publishing: Promise<void> | undefined;
  #publishAgain = false;
  #retryTimer: NodeJS.Timeout | undefined;
  #health: HealthServer | undefined;

  constructor(opts: AgentOptions, log: AgentLogger) {
    this.#opts = opts;
    this.#log = log;
    this.#out = opts.outDir !== undefined ? new OutputDirectory(path.resolve(opts.outDir)) : undefined;
    this.#hook = opts.onRotate !== undefined ? new RotateHook(opts.onRotate, log) : undefined;
    // The newest audit checkpoint seen is kept beside the files (no --out: in memory, for this run only).
    const outDir = this.#out?.dir;
    const checkpointFile = outDir !== undefined ? path.join(outDir, CHECKPOINT_FILE) : undefined;
    let initial: string | undefined;
    try {
      initial = checkpointFile !== undefined ? readFileSync(checkpointFile, 'utf8') : undefined;
    } catch {
      initial = undefined; // first run: nothing seen yet
    }
    this.#client = new TesseraClient({
      auditCheckpoint: {
        ...(initial !== undefined && initial !== '' ? { initial } : {}),
        // The first receipt arrives before the first publish creates the directory.
        ...(outDir !== undefined && checkpointFile !== undefined
          ? {
              save: async (note: string) => {
                await mkdir(outDir, { recursive: true });
                await writeFileAtomic(checkpointFile, note, 0o644);
              },
            }
          : {}),
      },
      broker: opts.broker,
      bundleFile: opts.bundleFile,
      tokenFile: opts.tokenFile,
      jwtAudiences: opts.jwtAudiences,
      keepProcessAlive: true,
      ...(opts.backoff !== undefined ? { backoff: opts.backoff } : {}),
    });
    this.#identity = opts.workloadApiSocket !== undefined && !opts.once ? new ClientIdentity(this.#client, log) : undefined;
    this.#client.on('rotated', (e) => this.#onRotated(e));
    this.#client.on('auditInconsistent', (err) => {
      this.#log.error(
        { code: err.code, error: err.message, heldCheckpointSize: this.#client.status().auditCheckpointSize, checkpointFile },
        'the audit log was rolled back or forked: a receipt does not extend the newest checkpoint this agent saw',
      );
    });
    this.#client.on('error', (err) => {
      const msg = this.#ready ? 'renewal failed; will retry' : 'could not obtain credentials yet; will retry';
      this.#log.warn({ code: err.code, error: err.message, ...this.#expiry() }, msg);
    });
  }

  /** The Workload API server, once started with one. */
  get workloadApi(): WorkloadApiServer | undefined {
    return this.#workloadApi;
  }

  /** Health endpoint port, once started with one. */
  get healthPort(): number | undefined {
    return this.#health?.port;
  }

  /** Init-container mode: first SVID (and JWTs) within the deadline, write them, run the hook, done. */
  async runOnce(): Promise<void> {
    const deadlineSeconds = this.#opts.deadlineSeconds ?? 60;
    this.#log.info({ broker: this.#opts.broker, out: this.#out?.dir, deadlineSeconds }, 'fetching credentials (once)');
    try {
      await this.#client.start({ deadlineMs: deadlineSeconds * 1000 });
      this.#ready = true;
      await this.#publish();
      await this.#hook?.idle();
      await this.#client.auditChecked();
      const bad = this.#client.status().auditInconsistency;
      if (bad !== undefined) throw new AgentError(`the audit log is inconsistent with a checkpoint this agent saw before: ${bad.message}`);
    } catch (err) {
      throw err instanceof AgentError ? err : new AgentError(this.#explain(err), { cause: err });
    } finally {
      this.#client.close();
    }
  }

  /** Sidecar mode: keeps the files current until stop(). Resolves once the first set is written. */
  async start(): Promise<void> {
    this.#log.info({ broker: this.#opts.broker, out: this.#out?.dir, jwtAudiences: this.#opts.jwtAudiences }, 'starting sidecar');
    if (this.#opts.healthPort !== undefined) {
      this.#health = await startHealthServer(this.#opts.healthPort, () => this.health());
      this.#log.info({ url: `http://127.0.0.1:${this.#health.port}/healthz` }, 'health endpoint listening');
    }
    // Listening before the first SVID: clients get PermissionDenied (and retry) instead of no socket.
    if (this.#identity !== undefined && this.#opts.workloadApiSocket !== undefined) {
      try {
        this.#workloadApi = await startWorkloadApi(
          this.#identity,
          { socketPath: this.#opts.workloadApiSocket, ...(this.#opts.workloadApiMaxStreams !== undefined ? { maxStreams: this.#opts.workloadApiMaxStreams } : {}) },
          this.#log,
        );
      } catch (err) {
        throw new AgentError(`cannot serve the Workload API on ${this.#opts.workloadApiSocket}: ${(err as Error).message}`, { cause: err });
      }
    }
    const deadline = this.#opts.deadlineSeconds;
    try {
      await this.#client.start(deadline !== undefined ? { deadlineMs: deadline * 1000 } : {});
    } catch (err) {
      if (this.#stopped) return;
      throw new AgentError(this.#explain(err), { cause: err });
    }
    if (this.#stopped) return;
    this.#ready = true;
    await this.#publishQueued();
  }

  /** SIGHUP: renew now (re-reading the token file when the token is needed) instead of at the next timer. */
  refreshNow(): void {
    if (this.#stopped) return;
    this.#log.info({ signal: 'SIGHUP' }, 'renewing now');
    this.#client.refreshNow();
  }

  /** Stops timers and the health endpoint; waits for a publish or hook in progress. Files stay. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#client.close();
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    await this.#publishing?.catch(() => undefined);
    await this.#hook?.idle();
    await this.#health?.close();
    this.#identity?.close();
    await this.#workloadApi?.close();
  }

  health(): HealthReport {
    const s = this.#client.status();
    const valid = s.expiresAt !== undefined && s.expiresAt.getTime() > Date.now();
    const status = !this.#ready ? 'starting' : valid ? 'ok' : 'expired';
    return {
      healthy: valid && this.#ready,
      body: {
        status,
        ...(s.spiffeId !== undefined ? { spiffeId: s.spiffeId, serial: s.serial } : {}),
        ...(s.expiresAt !== undefined ? { expiresAt: s.expiresAt.toISOString(), secondsToExpiry: s.secondsToExpiry } : {}),
        ...(s.lastRotation !== undefined ? { lastRotation: s.lastRotation.toISOString() } : {}),
        consecutiveFailures: s.consecutiveFailures,
        ...(s.auditCheckpointSize !== undefined ? { auditCheckpointSize: s.auditCheckpointSize } : {}),
        // The agent's metric for a rolled-back or forked audit log: how many receipts showed one.
        auditInconsistencies: s.auditInconsistency?.count ?? 0,
        ...(s.lastError !== undefined ? { lastError: { code: s.lastError.code, message: s.lastError.message, at: s.lastError.at.toISOString() } } : {}),
      },
    };
  }

  #explain(err: unknown): string {
    const e = err instanceof Error ? err : new Error(String(err));
    const code = e instanceof TesseraError ? ` [${e.code}]` : '';
    return `${e.message}${code}`;
  }

  #expiry(): Record<string, unknown> {
    const s = this.#client.status();
    return s.secondsToExpiry !== undefined ? { secondsToExpiry: s.secondsToExpiry } : {};
  }

  #onRotated(e: RotatedEvent): void {
    if (e.kind === 'x509') {
      this.#x509 = e.svid;
      try {
        this.#identity?.installX509(e.svid);
      } catch (err) {
        this.#log.error({ error: (err as Error).message }, 'cannot serve the new SVID on the Workload API');
      }
      const { spiffeId, serial, expiresAt } = e.svid;
      const fields = { spiffeId, serial, expiresAt: expiresAt.toISOString(), via: e.via, ...(e.bundleChanged ? { bundleChanged: true } : {}) };
      this.#log.info(fields, 'X.509-SVID obtained');
    } else {
      for (const aud of e.svid.audience) if (this.#opts.jwtAudiences.includes(aud)) this.#jwts.set(aud, e.svid);
      this.#log.info({ audience: e.svid.audience, expiresAt: e.svid.expiresAt.toISOString(), via: e.via }, 'JWT-SVID obtained');
    }
    if (this.#ready && !this.#opts.once) void this.#publishQueued();
  }

  /** Serialises publishes; a request during one publish leads to exactly one more with the latest state. */
  #publishQueued(): Promise<void> {
    if (this.#publishing !== undefined) {
      this.#publishAgain = true;
      return this.#publishing;
    }
    this.#publishing = (async () => {
      try {
        do {
          this.#publishAgain = false;
          await this.#publish();
        } while (this.#publishAgain && !this.#stopped);
      } catch (err) {
        this.#log.error({ error: (err as Error).message, out: this.#out?.dir }, 'could not write the output files; retrying');
        if (!this.#stopped) {
          this.#retryTimer = setTimeout(() => void this.#publishQueued(), PUBLISH_RETRY_MS);
        }
      } finally {
        this.#publishing = undefined;
      }
    })();
    return this.#publishing;
  }

  /** The trust domain's JWT-SVID keys as a JWK Set: the Workload API's copy, else fetched now. */
  async #jwtBundleJson(): Promise<Buffer> {
    const served = this.#identity?.jwtBundles();
    const td = this.#identity?.x509()?.trustDomainId;
    const own = td !== undefined ? served?.get(td) : undefined;
    if (own !== undefined) return own.json;
    try {
      return Buffer.from(JSON.stringify({ keys: jwtKeysOf(await this.#client.spiffeBundle()) }));
    } catch (err) {
      throw new AgentError(`cannot fetch the JWT bundle: ${this.#explain(err)}`, { cause: err });
    }
  }

  async #publish(): Promise<void> {
    const svid = this.#x509;
    if (svid === undefined) throw new AgentError('no X.509-SVID to write');
    if (this.#out === undefined) return; // Workload API only: nothing to write
    const names = FILE_NAMES[this.#opts.fileNames ?? 'tessera'];
    const files: OutputFile[] = [
      { path: names.svid, data: svid.chainPem, mode: 0o644 },
      { path: names.key, data: svid.privateKeyPem, mode: 0o600 },
      { path: names.bundle, data: this.#client.bundle(), mode: 0o644 },
      { path: JWT_BUNDLE_FILE, data: await this.#jwtBundleJson(), mode: 0o644 },
      // Federated trust domains (the entry's federatesWith), one file per trust domain, never mixed into the
      // own bundle: a consumer trusts federated/<td>.pem only for peers of <td>.
      ...svid.federatedBundles.flatMap((b) => [
        { path: `${FEDERATED_DIR}/${b.trustDomain}.pem`, data: b.bundlePem, mode: 0o644 },
        { path: `${FEDERATED_DIR}/${b.trustDomain}.jwks.json`, data: JSON.stringify({ keys: jwtKeysOf({ keys: b.jwtKeys }) }), mode: 0o644 },
      ]),
    ];
    for (const aud of this.#opts.jwtAudiences) {
      const jwt = this.#jwts.get(aud);
      if (jwt !== undefined) files.push({ path: `jwt/${audienceFileName(aud)}`, data: jwt.token, mode: 0o600 });
    }
    let generation: string;
    try {
      generation = await this.#out.publish(files);
    } catch (err) {
      throw new AgentError(`cannot write ${this.#out.dir}: ${(err as Error).message}`, { cause: err });
    }
    this.#log.info({ out: this.#out.dir, generation, serial: svid.serial, files: files.map((f) => f.path) }, 'files written');
    if (this.#hook !== undefined) {
      void this.#hook.trigger({ TESSERA_OUT_DIR: this.#out.dir, TESSERA_SPIFFE_ID: svid.spiffeId, TESSERA_SVID_SERIAL: svid.serial });
    }
  }
}
