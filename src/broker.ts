/**
 * Wires one broker from a Config: store, audit log, CA, JWT signer, attestors, policy, issuer.
 * The server and the CLI both start from here; tests can build one on temp files.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { BreakGlassService } from './admin/breakglass.js';
import { breakGlassSecrets } from './admin/breakglass-secrets.js';
import { IssuanceFreeze } from './admin/freeze.js';
import { AccessGuard, namespaceOfSpiffeId } from './admin/guard.js';
import { type AdminPki, loadAdminPki } from './admin/pki.js';
import { AdminAuthority } from './admin/principals.js';
import { Revocations } from './admin/revocation.js';
import { type Attestors, createAttestors } from './attest/attestor.js';
import { AlertEngine } from './audit/alerts.js';
import { Checkpointer } from './audit/checkpointer.js';
import { AuditLog } from './audit/log.js';
import { parseCosignerKey } from './audit/cosignature.js';
import { WitnessCollector } from './audit/witnesses.js';
import { loadNoteSigner, type NoteVerifier } from './audit/note.js';
import { CertificateAuthority } from './ca/authority.js';
import { InlineMinter, type X509Minter } from './ca/minter.js';
import { MinterPool } from './ca/minter-pool.js';
import { splitPemCertificates } from './ca/x509.js';
import { JwtSvidSigner } from './ca/jwt-svid.js';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config/config.js';
import { ConfigError } from './config/load.js';
import { Issuer } from './issue/issuer.js';
import { BrokerMetrics } from './metrics/metrics.js';
import { instrumentStore } from './metrics/store.js';
import { RegistrationPolicy } from './policy/registration.js';
import { EnvelopeError, KeyRing } from './secrets/envelope.js';
import { SecretsService } from './secrets/service.js';
import { RateLimiter } from './server/limits.js';
import { buildBundle, type SpiffeBundle } from './spiffe/bundle.js';
import { EmbeddedStore } from './store/embedded.js';
import { RedisStore } from './store/redis.js';
import type { Store } from './store/store.js';

export interface Broker {
  readonly config: Config;
  readonly clock: Clock;
  readonly store: Store;
  readonly audit: AuditLog;
  /** Signs audit checkpoints (background, on demand for receipts, and on close). */
  readonly checkpoints: Checkpointer;
  /** Gathers witness cosignatures on the checkpoints (absent when audit.witnesses is empty). */
  readonly witnesses?: WitnessCollector;
  /** Threshold alert rules watching this replica's audit appends. */
  readonly alerts: AlertEngine;
  readonly ca: CertificateAuthority;
  /** Mints X.509-SVIDs: on `config.ca.threads` minting threads, or inline when that is 0. */
  readonly minter: X509Minter;
  readonly jwt: JwtSvidSigner;
  /** Who is calling: service-account tokens and peer certificates (workload and admin). */
  readonly attestors: Attestors;
  readonly policy: RegistrationPolicy;
  readonly issuer: Issuer;
  /** Static secrets, dynamic PostgreSQL credentials and their leases (with the lease sweeper). */
  readonly secrets: SecretsService;
  readonly bundle: SpiffeBundle;
  readonly tls: { readonly certPem: string; readonly keyPem: string };
  /** Prometheus metrics of this broker (served by metrics/server.ts when config.metrics is enabled). */
  readonly metrics: BrokerMetrics;
  /** Rate limits, counted in the store (server/limits.ts; applied in server/auth.ts). */
  readonly limits: RateLimiter;
  /** Revocations and the issuance freeze: checked in server/auth.ts, by the issuer and for secrets. */
  readonly guard: AccessGuard;
  /** The admin CA (absent when admin.caBundleFile is not set) and who the admins are. */
  readonly admin: { readonly pki?: AdminPki; readonly authority: AdminAuthority };
  readonly breakGlass: BreakGlassService;
  close(): Promise<void>;
}

/** How long relying parties may cache the bundle before fetching it again. */
const BUNDLE_REFRESH_HINT_SECONDS = 300;

export interface CreateBrokerOptions {
  clock?: Clock;
  store?: Store;
}

export async function createBroker(config: Config, opts: CreateBrokerOptions = {}): Promise<Broker> {
  const clock = opts.clock ?? systemClock;
  const ca = CertificateAuthority.fromFiles({
    certFile: config.ca.certFile,
    keyFile: config.ca.keyFile,
    rootsFile: config.ca.bundleFile,
    ...(config.ca.intermediatesFile !== undefined ? { intermediatesFile: config.ca.intermediatesFile } : {}),
  });
  const jwt = await JwtSvidSigner.fromFile(config.ca.jwtKeyFile);
  const tls = { certPem: readFileSync(config.tls.certFile, 'utf8'), keyPem: readFileSync(config.tls.keyFile, 'utf8') };
  const metrics = new BrokerMetrics({ clock, caNotAfterMs: ca.signingCertNotAfter });
  // Redis when configured (shared by replicas), else the embedded store on local disk. Store failures
  // and audit append latency are measured at this one boundary.
  const store = instrumentStore(
    opts.store ??
      (config.store.redis !== undefined
        ? await RedisStore.connect({ ...config.store.redis, clock })
        : await EmbeddedStore.open(config.store.embedded.dir, { fsync: config.store.embedded.fsync })),
    metrics,
  );
  const audit = await AuditLog.open(store);
  metrics.watchAuditSize(() => audit.size);
  const limits = new RateLimiter(store, config.limits, metrics);
  const auditSigner = loadNoteSigner(config.audit.signingKeyFile, config.audit.origin);
  const warn = (err: unknown, what: string): void => {
    process.emitWarning(`${what}: ${err instanceof Error ? err.message : String(err)}`, { code: 'TESSERA_AUDIT' });
  };
  const checkpoints = await Checkpointer.start({
    store,
    audit,
    signer: auditSigner,
    intervalMs: config.audit.checkpointIntervalMs,
    receiptGapMs: config.audit.receiptCheckpointGapMs,
    replicaId: config.replicaId,
    clock,
    onError: warn,
  });
  const witnesses = await startWitnesses(config, { store, audit, checkpoints, clock, metrics, signerKey: auditSigner.verifier });
  const alerts = new AlertEngine({
    store,
    append: (entry) => audit.append(entry),
    config: config.audit.alerts,
    origin: config.audit.origin,
    replicaId: config.replicaId,
    clock,
    onError: warn,
  });
  audit.onAppend((entry, receipt) => alerts.observe(entry, receipt));
  // Lost history (docs/redis.md "Data loss"): one loud line on stderr and an alert; the log stays closed.
  audit.onHistoryLost((err) => {
    process.emitWarning(`${err.message} [known log size ${audit.size}, origin ${config.audit.origin}, replica ${config.replicaId}]`, {
      code: 'TESSERA_AUDIT_HISTORY_LOST',
    });
    alerts.historyLost(err.message, audit.size);
  });
  // Every CA certificate that issues workload SVIDs (roots, the signing CA, intermediates): mTLS tells
  // workload chains from admin chains by signature against these and the admin CA roots.
  const workloadAnchors = [
    ...ca.rootCertsDer,
    ...splitPemCertificates(readFileSync(config.ca.certFile, 'utf8'), 'CA certificate'),
    ...(config.ca.intermediatesFile !== undefined ? splitPemCertificates(readFileSync(config.ca.intermediatesFile, 'utf8'), 'intermediates') : []),
  ].map((der) => new X509Certificate(der));
  const adminPki = loadAdminPki(config.admin, workloadAnchors);
  const attestors = createAttestors(config, { workload: workloadAnchors, admin: adminPki?.roots ?? [] }, clock);
  const policy = new RegistrationPolicy(config.trustDomain, config.registration, config.svid);
  const revocations = new Revocations(store, clock);
  const guard = new AccessGuard(revocations, new IssuanceFreeze(store, clock), (identity) => {
    try {
      const ns = policy.workload(identity).namespace;
      return ns === '*' ? undefined : ns;
    } catch {
      return undefined; // not registered: nothing to match (and nothing will be issued to it)
    }
  });
  const adminAuthority = new AdminAuthority(config.admin.principals, store, revocations, clock);
  // Threads sign with their own copy of the local CA key (ca.source); a remote CA Signer would mint inline.
  const minter: X509Minter =
    config.ca.threads === 0 ? new InlineMinter(ca) : await MinterPool.start(ca.source, {
          threads: config.ca.threads,
          onError: (err, what) => process.emitWarning(`${what}: ${err instanceof Error ? err.message : String(err)}`, { code: 'TESSERA_CA' }),
          onThreadFailure: (reason) => metrics.mintThreadFailed(reason),
        });
  if (minter instanceof MinterPool) metrics.watchMintJobs(() => minter.inFlight);
  const issuer = new Issuer({
    minter, jwt, policy, audit, checkpoints, clock, replicaId: config.replicaId, guard,
    ...(witnesses !== undefined && config.audit.requireWitnesses
      ? { witnessGate: { assertWitnessed: () => witnesses.assertWitnessed(config.audit.maxWitnessLagSeconds) } }
      : {}),
  });
  let ring: KeyRing | undefined;
  if (config.secrets.kekFile !== undefined) {
    try {
      ring = KeyRing.fromFiles(config.secrets.kekFile, config.secrets.oldKekFiles);
    } catch (err) {
      if (err instanceof EnvelopeError) throw new ConfigError(`config.secrets: ${err.message}`);
      throw err;
    }
  }
  const secrets = new SecretsService({
    config: config.secrets,
    store,
    clock,
    audit,
    checkpoint: (r) => checkpoints.receipt(r),
    policy,
    // The admin revocation list (SPIFFE ID, or its /ns/<ns>/ namespace) decides for secrets too.
    revocations: {
      isRevoked: async (spiffeId: string) =>
        (await revocations.find({ spiffeIds: [spiffeId], namespaces: [namespaceOfSpiffeId(spiffeId)] })) !== undefined,
    },
    replicaId: config.replicaId,
    ...(ring !== undefined ? { ring } : {}),
    onRevokeFailure: (_lease, permanent) => metrics.leaseRevokeFailed(permanent ? 'permanent' : 'transient'),
  });
  secrets.start();
  const breakGlass = new BreakGlassService({
    config: config.breakGlass,
    trustDomain: config.trustDomain,
    store,
    audit,
    checkpoints,
    clock,
    replicaId: config.replicaId,
    ...(adminPki?.signer !== undefined ? { adminCa: adminPki.signer } : {}),
    secrets: breakGlassSecrets(secrets),
    generateKey: () => ca.generateServerKey('ec-p256'),
  });
  const bundle = buildBundle({
    rootCertsDer: ca.rootCertsDer,
    jwtKeys: [{ kid: jwt.kid, jwk: jwt.publicJwk }],
    sequence: 1,
    refreshHintSeconds: BUNDLE_REFRESH_HINT_SECONDS,
  });
  return {
    ...(witnesses !== undefined ? { witnesses } : {}),
    config, clock, store, audit, checkpoints, alerts, ca, minter, jwt, attestors, policy, issuer, secrets, bundle, tls, metrics, limits,
    guard, admin: { ...(adminPki !== undefined ? { pki: adminPki } : {}), authority: adminAuthority }, breakGlass,
    // Alerts first (they may append), then the final checkpoint over everything, then the store.
    close: async () => {
      // The lease sweeper may still append; stop it (and the PostgreSQL pools) first.
      await secrets.close();
      await minter.close();
      await alerts.close();
      await checkpoints.close();
      witnesses?.close();
      await store.close();
    },
  };
}

/**
 * The witness collector when audit.witnesses is set: every checkpoint goes to the witnesses; a witness that
 * saw a longer or different log (rollback, fork) is a warning on stderr and a metric, every time it says so.
 */
async function startWitnesses(
  config: Config,
  d: { store: Store; audit: AuditLog; checkpoints: Checkpointer; clock: Clock; metrics: BrokerMetrics; signerKey: NoteVerifier },
): Promise<WitnessCollector | undefined> {
  const list = config.audit.witnesses;
  if (list.length === 0) return undefined;
  const last = new Map<string, string>();
  const collector = new WitnessCollector({
    store: d.store,
    audit: d.audit,
    logKey: d.signerKey,
    witnesses: list.map((w) => ({ name: w.name, url: w.url, key: parseCosignerKey(w.key) })),
    quorum: config.audit.witnessQuorum,
    timeoutMs: config.audit.witnessTimeoutMs,
    // Fresh cosignatures well within the lag requireWitnesses allows.
    refreshMs: Math.max(1000, Math.floor((config.audit.maxWitnessLagSeconds * 1000) / 3)),
    replicaId: config.replicaId,
    clock: d.clock,
    latest: () => d.checkpoints.latest,
    onEvent: (e) => {
      d.metrics.witnessCall(e.witness, e.outcome);
      const loud = e.outcome === 'conflict' || e.outcome === 'inconsistent';
      // Rollbacks and forks every time; other failures once until the witness answers again.
      if (loud || (e.outcome !== 'cosigned' && last.get(e.witness) !== e.outcome)) {
        process.emitWarning(e.message, { code: loud ? 'TESSERA_AUDIT_WITNESS_CONFLICT' : 'TESSERA_AUDIT_WITNESS' });
      }
      last.set(e.witness, e.outcome);
    },
  });
  await collector.start();
  d.checkpoints.witnessWith(collector);
  return collector;
}
