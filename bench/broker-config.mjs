// The config file every bench broker starts from: dev material of example.org, the dev token issuer,
// one registration entry for namespace `bench`, and no rate limits (one identity drives every request;
// the limiter would measure itself). Written as plain YAML lines so that an older checkout (bench/ab.mjs)
// reads it too.

/**
 * @param {object} o
 * @param {{ dir: string, issuerJwksFile: string, auditKeyFile: string }} o.material   ensureDevMaterial's result
 * @param {string} o.replicaId
 * @param {string} o.store      the `store:` value (YAML flow or JSON)
 * @param {object} [o.audit]    the `audit:` section (default: the dev audit key only)
 * @param {string[]} [o.extra]  further top-level lines
 * @returns {string}
 */
export function benchBrokerConfig({ material, replicaId, store, audit, extra = [] }) {
  const pki = material.dir;
  return [
    'trustDomain: example.org',
    `replicaId: ${replicaId}`,
    'logLevel: warn',
    'listen: { host: 127.0.0.1, port: 0 }',
    `tls: { certFile: ${pki}/server.pem, keyFile: ${pki}/server.key }`,
    `ca: { certFile: ${pki}/intermediate.pem, keyFile: ${pki}/intermediate.key, bundleFile: ${pki}/bundle.pem, jwtKeyFile: ${pki}/jwt-signing.key }`,
    'issuers:',
    '  - issuer: https://kubernetes.default.svc.cluster.local',
    `    jwksFile: ${material.issuerJwksFile}`,
    '    audiences: [tessera]',
    'registration:',
    '  - selector: { namespace: bench, serviceAccount: "*" }',
    '    jwtAudiences: [payments]',
    `store: ${store}`,
    `audit: ${JSON.stringify(audit ?? { signingKeyFile: material.auditKeyFile })}`,
    'limits: { enabled: false }',
    ...extra,
    '',
  ].join('\n');
}
