/** Config-loader tests: a YAML file in a fresh temp folder, and the smallest file-based config that loads. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

/** Writes `yaml` to tessera.yaml in a new temp folder and returns its path. */
export function configFile(yaml: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-config-'));
  const file = path.join(dir, 'tessera.yaml');
  writeFileSync(file, yaml);
  return file;
}

/** Every section a config file must name (paths are not read by loadConfig). */
export const MINIMAL_CONFIG = `
trustDomain: prod.example
tls: { certFile: tls.pem, keyFile: tls.key }
ca: { certFile: ca.pem, keyFile: ca.key, bundleFile: roots.pem, jwtKeyFile: jwt.key }
audit: { signingKeyFile: audit.key }
issuers:
  - issuer: https://oidc.cluster
    jwksUrl: https://oidc.cluster/keys
    audiences: [tessera]
`;
