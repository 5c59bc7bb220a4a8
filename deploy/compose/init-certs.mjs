// One-shot init for docker-compose.yml: creates the shared DEV material (CA, broker TLS, JWT and
// audit signing keys, dev token issuer) in /var/lib/tessera/certs, then hands the files to the
// unprivileged user the brokers run as. Runs as root only because a fresh named volume is
// root-owned. Existing material is kept (ensureDevMaterial only fills in what is missing).
import { chownSync, readdirSync } from 'node:fs';
import path from 'node:path';

const home = process.env.TESSERA_HOME ?? '/app';
const dir = process.env.TESSERA_CERTS_DIR ?? '/var/lib/tessera/certs';
const [uid, gid] = (process.env.TESSERA_RUN_AS ?? '1000:1000').split(':').map(Number);
const { ensureDevMaterial } = await import(path.join(home, 'dist/dev/material.js'));
const material = await ensureDevMaterial(dir, process.env.TESSERA_TRUST_DOMAIN ?? 'example.org');
chownSync(dir, uid, gid);
for (const f of readdirSync(dir)) chownSync(path.join(dir, f), uid, gid);
console.log(`dev material ready in ${material.dir} (owner ${uid}:${gid})`);
