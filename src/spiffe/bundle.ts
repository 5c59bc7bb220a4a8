/**
 * The SPIFFE trust bundle (SPIFFE Trust Domain and Bundle spec): a JWKS whose keys carry `use`
 * `x509-svid` (with the root certificate in `x5c`) or `jwt-svid` (with `kid`), plus `spiffe_sequence`
 * and `spiffe_refresh_hint`. Built once at start; the bundle changes only with CA rotation.
 */
import { X509Certificate, type JsonWebKey } from 'node:crypto';

export interface BundleJwk extends JsonWebKey {
  use: 'x509-svid' | 'jwt-svid';
}

export interface SpiffeBundle {
  readonly keys: readonly BundleJwk[];
  readonly spiffe_sequence: number;
  readonly spiffe_refresh_hint: number;
}

export function buildBundle(opts: {
  rootCertsDer: readonly Buffer[];
  jwtKeys: readonly { kid: string; jwk: JsonWebKey }[];
  sequence: number;
  refreshHintSeconds: number;
}): SpiffeBundle {
  const x509Keys: BundleJwk[] = opts.rootCertsDer.map((der) => {
    const jwk = new X509Certificate(der).publicKey.export({ format: 'jwk' });
    return { ...jwk, use: 'x509-svid', x5c: [der.toString('base64')] };
  });
  const jwtKeys: BundleJwk[] = opts.jwtKeys.map(({ kid, jwk }) => ({ ...jwk, kid, use: 'jwt-svid' }));
  return { keys: [...x509Keys, ...jwtKeys], spiffe_sequence: opts.sequence, spiffe_refresh_hint: opts.refreshHintSeconds };
}
