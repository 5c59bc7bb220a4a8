#!/usr/bin/env node
// Generates Tessera's dev material into this folder (only what is missing):
//   root.pem/.key, intermediate.pem/.key, bundle.pem, server.pem/.key (the broker's TLS cert),
//   jwt-signing.key, dev-issuer.key + dev-issuer.jwks.json (the dev token issuer),
//   audit-signing.key + audit.pub (audit checkpoint signing key and its verifier key),
//   admin-ca.pem/.key + admin-dev.pem/.key (the separate admin CA and a dev admin client certificate).
// Keys are written with mode 0600 and are git-ignored. `npm start` runs this for you.
// Usage: node certs-dev/generate.mjs [trust-domain]   (needs `npm run build` first)
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const { ensureDevMaterial } = await import(new URL('../dist/dev/material.js', import.meta.url).href).catch(() => {
  console.error('certs-dev/generate.mjs: dist/ is missing; run `npm ci` or `npm run build` first');
  process.exit(1);
});
const material = await ensureDevMaterial(here, process.argv[2] ?? 'example.org');
console.log(`dev material in ${material.dir}; trust bundle ${material.bundleFile}`);
