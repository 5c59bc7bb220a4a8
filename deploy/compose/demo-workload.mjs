// Demo workload for docker-compose.yml: acts as the pod `shop/web`. Every few seconds it presents a
// (dev) service-account token to one of the broker replicas in turn and asks for an X.509-SVID or a
// JWT-SVID, then prints what it got and where the audit log put it. Both replicas append to the same
// log in Redis, so the audit indexes from tessera-a and tessera-b interleave in one sequence.
import { readFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';

const home = process.env.TESSERA_HOME ?? '/app';
const certs = process.env.TESSERA_CERTS_DIR ?? '/var/lib/tessera/certs';
const brokers = (process.env.BROKERS ?? 'https://tessera-a:8443,https://tessera-b:8443').split(',');
const everyMs = Number(process.env.INTERVAL_MS ?? 3000);
const ca = readFileSync(path.join(certs, 'bundle.pem'), 'utf8');
const { mintDevToken } = await import(path.join(home, 'dist/dev/token-issuer.js'));

function post(base, route, token, body) {
  return new Promise((resolve, reject) => {
    const url = new URL(route, base);
    const req = https.request(
      url,
      {
        method: 'POST',
        ca,
        // The DEV broker certificate names `localhost`: verify it under that name (Node checks the
        // certificate against `servername`) while connecting to the replica's compose hostname.
        // With real certificates that name the replicas, drop this line.
        servername: 'localhost',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        timeout: 5000,
      },
      (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode, json: JSON.parse(text || '{}') }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

let i = 0;
for (;;) {
  const broker = brokers[i % brokers.length];
  const jwt = i % 3 === 2;
  try {
    const token = await mintDevToken({ keyFile: path.join(certs, 'dev-issuer.key'), namespace: 'shop', serviceAccount: 'web' });
    const r = await post(broker, jwt ? '/v1/svid/jwt' : '/v1/svid/x509', token, jwt ? { audience: ['payments'] } : { keyType: 'ec-p256' });
    if (r.status === 200) {
      const what = jwt ? `JWT-SVID jti ${r.json.jti}` : `X.509-SVID serial ${r.json.serial}`;
      console.log(`${broker} issued ${what} to ${r.json.spiffeId}; audit index ${r.json.audit.index} of ${r.json.audit.treeSize}`);
    } else {
      console.log(`${broker} refused: ${r.status} ${r.json.error ?? ''} ${r.json.message ?? ''}`);
    }
  } catch (err) {
    console.log(`${broker} unreachable: ${err.message}`);
  }
  i++;
  await new Promise((r) => setTimeout(r, everyMs));
}
