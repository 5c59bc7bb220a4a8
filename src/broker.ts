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
import { ConfigReloader } from './reload.js';
import { AlertEngine } from './audit/alerts.js';
import { Checkpointer } from './audit/checkpointer.js';
import { AuditDevices } from './audit/devices/devices.js';
import { AuditLog } from './audit/log.js';
import { parseCosignerKey } from './audit/cosignature.js';
import { WitnessCollector } from './audit/witnesses.js';
import type { NoteSigner, NoteVerifier } from './audit/note.js';
import { AuthorityKeys, openAuditSigner, openCertificateAuthority, openJwtSigner, type AuthorityKey } from './ca/keys.js';
import { CertificateAuthority } from './ca/authority.js';
import { CaExpiryWatch } from './ca/expiry.js';
import { activeOf, CaRotation, prepareAt, preparedOf, rootIssuer, rotationRequestId, type LiveAuthorities } from './ca/rotation.js';
import { InlineMinter, type X509Minter } from './ca/minter.js';
import { MinterPool } from './ca/minter-pool.js';
import { IdleInlineMinter } from './ca/idle-inline-minter.js';
import { splitPemCertificates } from './ca/x509.js';
import { JwtSvidSigner } from './ca/jwt-svid.js';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config/config.js';
import { ConfigError, ROTATION_NEEDS_KEK, rotationSealsKeys } from './config/load.js';
import { Issuer } from './issue/issuer.js';
import { BrokerMetrics } from './metrics/metrics.js';
import { instrumentStore } from './metrics/store.js';
import { RegistrationPolicy } from './policy/registration.js';
import { EntryRegistry } from './policy/registry.js';
import { EnvelopeError, KeyRing } from './secrets/envelope.js';
import { SecretsService } from './secrets/service.js';
import { RateLimiter } from './server/limits.js';
import { buildBundle, type SpiffeBundle } from './spiffe/bundle.js';
import { FederationManager } from './spiffe/federation.js';
import type { Relationship } from './spiffe/relationship.js';
import { EmbeddedStore } from './store/embedded.js';
import { connectCheckedRedis } from './store/redis-persistence.js';
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
  /** Audit devices (audit.devices): ship the log to files, syslog and sockets. */
  readonly devices: AuditDevices;
  /** The signing CA as of now (CA rotation switches it; config `ca.rotation`). */
  readonly ca: CertificateAuthority;
  /** Rotates the CA and the JWT key (absent without `ca.rotation`). */
  readonly rotation?: CaRotation;
  /** Where the signing CA stands against its expiry warning windows (/readyz, log warnings, alert). */
  readonly caExpiry: CaExpiryWatch;
  /** Mints X.509-SVIDs: on `config.ca.threads` minting threads, or inline when that is 0. */
  readonly minter: X509Minter;
  readonly jwt: JwtSvidSigner;
  /** Who is calling: service-account tokens and peer certificates (workload and admin). */
  readonly attestors: Attestors;
  readonly policy: RegistrationPolicy;
  /** Registration entries in the store (admin API), polled so every replica follows changes within a second. */
  readonly registry: EntryRegistry;
  readonly issuer: Issuer;
  /** Static secrets, dynamic PostgreSQL credentials and their leases (with the lease sweeper). */
  readonly secrets: SecretsService;
  readonly bundle: SpiffeBundle;
  /** Federated trust domains and their last good bundles (config `federation`, admin API). */
  readonly federation: FederationManager;
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
  /** Re-reads the config file and applies its live settings (SIGHUP, POST /v1/admin/reload). */
  readonly reloader: ConfigReloader;
  close(): Promise<void>;
}

/** With CA rotation, expiry warnings start once the prepare step is this late (docs/ca.md). */
const ROTATION_OVERDUE_MS = 60_000;


export interface CreateBrokerOptions {
  clock?: Clock;
  store?: Store;
  /** How to read the config again on reload (without it, a reload is refused). */
  reloadConfig?: () => Config;
}

export async function createBroker(config: Config, opts: CreateBrokerOptions = {}): Promise<Broker> {
  const clock = opts.clock ?? systemClock;
  // How long relying parties (and federated trust domains) may cache the bundle before fetching it again.
  const bundleRefreshHintSeconds = config.bundleEndpoint.refreshHintSeconds;
  // The CA, JWT-SVID and audit keys: PEM files or keys in a PKCS#11 token (ca/keys.ts picks).
  const keyHolders: (() => void)[] = [];
  const closeKeys = (): void => {
    for (const close of keyHolders.splice(0)) close();
  };
  let configCa: CertificateAuthority;
  let configJwt: JwtSvidSigner;
  let configKeys: { readonly key: AuthorityKey; readonly jwtKey: AuthorityKey };
  let auditSigner: NoteSigner;
  try {
    const openedCa = await openCertificateAuthority(config.ca);
    keyHolders.push(openedCa.close);
    configCa = openedCa.ca;
    const openedJwt = await openJwtSigner(config.ca);
    keyHolders.push(openedJwt.close);
    configJwt = openedJwt.jwt;
    configKeys = { key: openedCa.key, jwtKey: openedJwt.key };
    const openedAudit = await openAuditSigner(config.audit);
    keyHolders.push(openedAudit.close);
    auditSigner = openedAudit.signer;
  } catch (err) {
    closeKeys();
    throw err;
  }
  const tls = { certPem: readFileSync(config.tls.certFile, 'utf8'), keyPem: readFileSync(config.tls.keyFile, 'utf8') };
  // What issuance signs with and the bundle publishes: the config files, or (ca.rotation) the stored state.
  let live: Omit<LiveAuthorities, 'state'> & { readonly state?: LiveAuthorities['state'] } = {
    ca: configCa,
    jwt: configJwt,
    bundle: buildBundle({
      rootCertsDer: configCa.rootCertsDer,
      jwtKeys: [{ kid: configJwt.kid, jwk: configJwt.publicJwk }],
      sequence: 1,
      refreshHintSeconds: bundleRefreshHintSeconds,
    }),
  };
  const metrics = new BrokerMetrics({
    clock,
    caNotAfterMs: configCa.signingCertNotAfter,
    caAuthority: configCa.authorityId,
    ...(config.ca.rotation !== undefined
      ? { caAuthorities: () => (live.state?.authorities ?? []).map((a) => ({ authority: a.id, notAfterMs: a.notAfter })) }
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
  // Redis when configured (shared by replicas), else the embedded store on local disk. Store failures
  // and audit append latency are measured at this one boundary.
  const store = instrumentStore(
    opts.store ??
      (config.store.redis !== undefined
        ? await connectCheckedRedis({ ...config.store.redis, clock }, (message) =>
            process.emitWarning(message, { code: 'TESSERA_REDIS_PERSISTENCE' }),
          )
        : await EmbeddedStore.open(config.store.embedded.dir, { fsync: config.store.embedded.fsync })),
    metrics,
  );
  const audit = await AuditLog.open(store);
  metrics.watchAuditSize(() => audit.size);
  const limits = new RateLimiter(store, config.limits, metrics);
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
  const devices = new AuditDevices({
    devices: config.audit.devices,
    store,
    audit,
    checkpoint: () => checkpoints.latest,
    replicaId: config.replicaId,
    events: {
      delivered: (device, n) => metrics.auditDeviceDelivered(device, n),
      failed: (device) => metrics.auditDeviceFailed(device),
      lagging: (status, cfg) => alerts.deviceLagging(status, cfg),
      error: (err, what) => {
        process.emitWarning(`${what}: ${err instanceof Error ? err.message : String(err)}`, { code: 'TESSERA_AUDIT_DEVICE' });
      },
    },
  });
  metrics.watchAuditDevices(() => devices.status());
  // Lost history (docs/redis.md "Data loss"): one loud line on stderr and an alert; the log stays closed.
  audit.onHistoryLost((err) => {
    process.emitWarning(`${err.message} [known log size ${audit.size}, origin ${config.audit.origin}, replica ${config.replicaId}]`, {
      code: 'TESSERA_AUDIT_HISTORY_LOST',
    });
    alerts.historyLost(err.message, audit.size);
  });
  // Expiry seen coming: a warning on stderr and a fleet-wide alert as each window is entered (at startup too).
  const caExpiry = new CaExpiryWatch({
    authority: configCa.authorityId,
    notAfter: configCa.signingCertNotAfter,
    target: () => ({
      authority: live.ca.authorityId,
      notAfter: live.ca.signingCertNotAfter,
      // With rotation, a next authority is on its way until its prepare step is overdue (a minute past 1/2
      // of the active one's life): only then is there something to warn about.
      successorPrepared:
        live.state !== undefined &&
        (preparedOf(live.state) !== undefined ||
          (config.ca.rotation?.rootKeyFile !== undefined && clock.now() < prepareAt(activeOf(live.state)) + ROTATION_OVERDUE_MS)),
    }),
    windows: config.ca.expiryWarningSeconds,
    clock,
    onWarning: (e, message) => {
      process.emitWarning(message, { code: e.state === 'expired' ? 'TESSERA_CA_EXPIRED' : 'TESSERA_CA_EXPIRING' });
      alerts.caExpiring(message, e.authority, e.notAfter, e.window ?? 0).catch((err: unknown) => warn(err, 'ca-expiring alert'));
    },
  });
  // CA rotation: the stored state decides from here on (the config files seed it on a new store).
  let rotation: CaRotation | undefined;
  if (config.ca.rotation !== undefined) {
    if (ring === undefined && rotationSealsKeys(config.ca)) throw new ConfigError(ROTATION_NEEDS_KEK);
    const readConfigFile = (file: string): string => readFileSync(file, 'utf8');
    let root;
    try {
      // Without it the root is upstream or offline: next authorities come from `ca prepare` / `ca import`.
      const rootKeyFile = config.ca.rotation.rootKeyFile;
      root = rootKeyFile !== undefined ? rootIssuer(configCa.rootsPem, readConfigFile(rootKeyFile)) : undefined;
    } catch (err) {
      throw new ConfigError(`config.ca.rotation.rootKeyFile: ${err instanceof Error ? err.message : String(err)}`);
    }
    rotation = await CaRotation.open(
      {
        store,
        clock,
        ring,
        rootsPem: configCa.rootsPem,
        root,
        trustDomain: config.trustDomain,
        // Next authorities' keys go where the configured ones are: the token, or PEMs sealed in the store.
        keys: new AuthorityKeys({ x509: config.ca.pkcs11, jwt: config.ca.jwtPkcs11 }),
        caTtlMs: config.ca.rotation.caTtlSeconds * 1000,
        pollIntervalMs: config.ca.rotation.pollIntervalMs,
        limits: { maxX509TtlMs: config.svid.x509MaxTtlSeconds * 1000, maxJwtTtlMs: config.svid.jwtMaxTtlSeconds * 1000 },
        owner: `${config.replicaId}:${rotationRequestId()}`,
        refreshHintSeconds: bundleRefreshHintSeconds,
        onChange: (next, previous) => {
          live = next;
          if (next.ca !== previous.ca) minter.setAuthority(next.ca);
          addWorkloadAnchors(next);
          caExpiry.check();
        },
        onStep: async (step, record) => {
          await audit.append({
            ts: clock.now(),
            type: 'ca.rotated',
            decision: 'allow',
            actor: null,
            subject: null,
            action: step.kind,
            keyIds: [record.id, record.jwtKid],
            expiresAt: record.notAfter,
            reason: `CA authority ${record.id} (JWT kid ${record.jwtKid}): ${step.kind === 'prepare' ? 'prepared and published' : step.kind === 'activate' ? 'active' : 'dropped from the bundle'}`,
            requestId: rotationRequestId(),
            replica: config.replicaId,
          });
        },
        onError: (err, what) => process.emitWarning(`${what}: ${err instanceof Error ? err.message : String(err)}`, { code: 'TESSERA_CA' }),
      },
      {
        certPem: readConfigFile(config.ca.certFile),
        intermediatesPem: config.ca.intermediatesFile !== undefined ? readConfigFile(config.ca.intermediatesFile) : '',
        ...configKeys,
      },
    );
    live = rotation.current();
  }
  caExpiry.start();
  // Every CA certificate that issues workload SVIDs (roots, the signing CA, intermediates): mTLS tells
  // workload chains from admin chains by signature against these and the admin CA roots.
  const workloadAnchors = [
    ...configCa.rootCertsDer,
    ...splitPemCertificates(readFileSync(config.ca.certFile, 'utf8'), 'CA certificate'),
    ...(config.ca.intermediatesFile !== undefined ? splitPemCertificates(readFileSync(config.ca.intermediatesFile, 'utf8'), 'intermediates') : []),
  ].map((der) => new X509Certificate(der));
  // Signing CAs made by rotation join them (a resumed TLS session presents no chain to walk).
  const addWorkloadAnchors = (next: Omit<LiveAuthorities, 'state'> & { readonly state?: LiveAuthorities['state'] }): void => {
    for (const a of next.state?.authorities ?? []) {
      // Its own certificate and, for an imported one, the intermediates up to the upstream root.
      for (const der of splitPemCertificates(a.certPem + a.intermediatesPem, 'CA authority')) {
        const cert = new X509Certificate(der);
        if (!workloadAnchors.some((c) => c.raw.equals(cert.raw))) workloadAnchors.push(cert);
      }
    }
  };
  addWorkloadAnchors(live);
  const adminPki = loadAdminPki(config.admin, workloadAnchors);
  const attestors = createAttestors(config, { workload: workloadAnchors, admin: adminPki?.roots ?? [] }, clock);
  const policy = new RegistrationPolicy(config.trustDomain, config.registration, config.svid);
  const registry = new EntryRegistry({
    store,
    policy,
    trustDomain: config.trustDomain,
    clock,
    onError: (err, what) => process.emitWarning(`${what}: ${err instanceof Error ? err.message : String(err)}`, { code: 'TESSERA_REGISTRATION' }),
  });
  await registry.start();
  const fetchWarned = new Map<string, string | undefined>();
  const federation = new FederationManager({
    store,
    clock,
    trustDomain: config.trustDomain,
    configured: config.federation.map((f): Relationship => {
      let bootstrapBundle: string | undefined;
      let caPem: string | undefined;
      try {
        bootstrapBundle = f.bootstrapBundleFile !== undefined ? readFileSync(f.bootstrapBundleFile, 'utf8') : undefined;
        caPem = f.caFile !== undefined ? readFileSync(f.caFile, 'utf8') : undefined;
      } catch (err) {
        throw new ConfigError(`config.federation (${f.trustDomain}): ${(err as Error).message}`);
      }
      return { ...f, bootstrapBundle, caPem, source: 'config' };
    }),
    ownBundle: () => live.bundle,
    owner: `${config.replicaId}:${rotationRequestId()}`,
    onStale: (td, age) => {
      alerts.federationStale(td, age).catch((err: unknown) => warn(err, 'federation-stale alert'));
    },
    onFetch: (td, outcome, err) => {
      metrics.federationFetch(td, outcome);
      // One warning per trust domain and distinct failure (a down endpoint is retried every minRefreshSeconds).
      const message = err instanceof Error ? err.message : undefined;
      if (outcome !== 'failed' || fetchWarned.get(td) === message) {
        if (outcome !== 'failed') fetchWarned.delete(td);
        return;
      }
      fetchWarned.set(td, message);
      process.emitWarning(`federation: bundle of ${td}: ${err instanceof Error ? err.message : String(err)} (the last good bundle stays)`, { code: 'TESSERA_FEDERATION' });
    },
    onError: (err, what) => process.emitWarning(`${what}: ${err instanceof Error ? err.message : String(err)}`, { code: 'TESSERA_FEDERATION' }),
  });
  await federation.start();
  metrics.watchFederation(() => federation.status().map((s) => ({ trustDomain: s.relationship.trustDomain, ageSeconds: s.ageSeconds })));
  const revocations = new Revocations(store, clock);
  const guard = new AccessGuard(revocations, new IssuanceFreeze(store, clock), (identity) => {
    try {
      const ns = policy.workload(identity).namespace;
      return ns === '*' ? undefined : ns;
    } catch {
      return undefined; // not registered: nothing to match (and nothing will be issued to it)
    }
  }, () => devices.assertCaughtUp());
  const adminAuthority = new AdminAuthority(config.admin.principals, store, revocations, clock);
  // Threads sign with their own copy of a local CA key (ca.source); a key in a PKCS#11 token mints
  // inline, its signatures awaited over the token's sessions — with ca.pkcs11 inline from the start, as
  // the authorities rotation makes are in the token too (even while a sealed one from before is active).
  // With threads, a lone issuance still mints on the event loop (ca/idle-inline-minter.ts).
  const minter: X509Minter =
    config.ca.threads === 0 || config.ca.pkcs11 !== undefined || !live.ca.localKey ? new InlineMinter(live.ca) : new IdleInlineMinter(await MinterPool.start(live.ca.source, {
          threads: config.ca.threads,
          onError: (err, what) => process.emitWarning(`${what}: ${err instanceof Error ? err.message : String(err)}`, { code: 'TESSERA_CA' }),
          onThreadFailure: (reason) => metrics.mintThreadFailed(reason),
        }), new InlineMinter(live.ca));
  if (minter instanceof IdleInlineMinter) metrics.watchMintJobs(() => minter.inFlight);
  const issuer = new Issuer({
    minter, jwt: { sign: (req) => live.jwt.sign({ ...req, issuer: config.jwt.issuer }) }, policy, audit, checkpoints, clock, replicaId: config.replicaId, guard,
    ...(witnesses !== undefined && config.audit.requireWitnesses
      ? { witnessGate: { assertWitnessed: () => witnesses.assertWitnessed(config.audit.maxWitnessLagSeconds) } }
      : {}),
  });
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
    generateKey: () => live.ca.generateServerKey('ec-p256'),
  });
  const reloader = new ConfigReloader(config, opts.reloadConfig, { tokenAttestor: attestors.token, policy, limits, alerts, audit, clock });
  devices.start();
  rotation?.start();
  return {
    ...(witnesses !== undefined ? { witnesses } : {}),
    config, clock, store, audit, checkpoints, alerts, devices, caExpiry, minter, attestors, policy, registry, federation, issuer, secrets, tls, metrics, limits,
    get ca() {
      return live.ca;
    },
    get jwt() {
      return live.jwt;
    },
    get bundle() {
      return live.bundle;
    },
    ...(rotation !== undefined ? { rotation } : {}),
    guard, admin: { ...(adminPki !== undefined ? { pki: adminPki } : {}), authority: adminAuthority }, breakGlass, reloader,
    // Alerts first (they may append), then the final checkpoint over everything, then the store.
    close: async () => {
      // The lease sweeper may still append; stop it (and the PostgreSQL pools) first.
      caExpiry.close();
      await rotation?.close();
      await secrets.close();
      await registry.close();
      await federation.close();
      await minter.close();
      await alerts.close();
      await checkpoints.close();
      closeKeys();
      witnesses?.close();
      // Before the store closes (a write in flight gets a few seconds); what is not yet confirmed is
      // shipped again from the stored position by the next start, or by another replica.
      await devices.close();
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
