/**
 * Wires one broker from a Config: store, audit log, CA, JWT signer, attestors, policy, issuer.
 * The server and the CLI both start from here; tests can build one on temp files.
 */
import { readFileSync } from 'node:fs';
import { ServiceAccountTokenAttestor } from './attest/k8s-token.js';
import { MtlsAttestor } from './attest/mtls.js';
import { AuditLog } from './audit/log.js';
import { CertificateAuthority } from './ca/authority.js';
import { JwtSvidSigner } from './ca/jwt-svid.js';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config/config.js';
import { Issuer } from './issue/issuer.js';
import { RegistrationPolicy } from './policy/registration.js';
import { buildBundle, type SpiffeBundle } from './spiffe/bundle.js';
import { EmbeddedStore } from './store/embedded.js';
import type { Store } from './store/store.js';

export interface Broker {
  readonly config: Config;
  readonly clock: Clock;
  readonly store: Store;
  readonly audit: AuditLog;
  readonly ca: CertificateAuthority;
  readonly jwt: JwtSvidSigner;
  readonly tokens: ServiceAccountTokenAttestor;
  readonly mtls: MtlsAttestor;
  readonly policy: RegistrationPolicy;
  readonly issuer: Issuer;
  readonly bundle: SpiffeBundle;
  readonly tls: { readonly certPem: string; readonly keyPem: string };
  close(): Promise<void>;
}

/** How long relying parties may cache the bundle before fetching it again. */
const BUNDLE_REFRESH_HINT_SECONDS = 300;

export async function createBroker(config: Config, opts: { clock?: Clock; store?: Store } = {}): Promise<Broker> {
  const clock = opts.clock ?? systemClock;
  const ca = CertificateAuthority.fromFiles({
    certFile: config.ca.certFile,
    keyFile: config.ca.keyFile,
    rootsFile: config.ca.bundleFile,
    ...(config.ca.intermediatesFile !== undefined ? { intermediatesFile: config.ca.intermediatesFile } : {}),
  });
  const jwt = await JwtSvidSigner.fromFile(config.ca.jwtKeyFile);
  const tls = { certPem: readFileSync(config.tls.certFile, 'utf8'), keyPem: readFileSync(config.tls.keyFile, 'utf8') };
  const store = opts.store ?? (await EmbeddedStore.open(config.store.embedded.dir, { fsync: config.store.embedded.fsync }));
  const audit = await AuditLog.open(store);
  const tokens = new ServiceAccountTokenAttestor({ trustDomain: config.trustDomain, issuers: config.issuers, clock });
  const mtls = new MtlsAttestor(config.trustDomain);
  const policy = new RegistrationPolicy(config.trustDomain, config.registration, config.svid);
  const issuer = new Issuer({ ca, jwt, policy, audit, clock, replicaId: config.replicaId });
  const bundle = buildBundle({
    rootCertsDer: ca.rootCertsDer,
    jwtKeys: [{ kid: jwt.kid, jwk: jwt.publicJwk }],
    sequence: 1,
    refreshHintSeconds: BUNDLE_REFRESH_HINT_SECONDS,
  });
  return {
    config, clock, store, audit, ca, jwt, tokens, mtls, policy, issuer, bundle, tls,
    close: () => store.close(),
  };
}
