// The HSM rows of `npm run bench` (`--only hsm`): X.509 issuance from a CSR at c=32 with the CA key in a
// SoftHSM2 token (ca.pkcs11) beside the same scenario with the CA key in a PEM file, in one run, as a
// ratio (both brokers up at once, alternating rounds: bench/alternate.mjs); plus the raw signatures/s
// of the token through Pkcs11Signer (its session pool) for scale.
// Needs softhsm2 and opensc's pkcs11-tool; without them the rows are skipped with the reason.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { alternatingRounds } from './alternate.mjs';

const MODULES = ['/usr/lib/softhsm/libsofthsm2.so', '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so', '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so'];
const PIN = '246810';

function run(bin, args, env) {
  const r = spawnSync(bin, args, { encoding: 'utf8', env });
  if (r.status !== 0) throw new Error(`${bin} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** A SoftHSM2 token in `dir` with an EC P-256 key pair "ca" generated in it; its config mapping and env. */
function makeToken(dir, module) {
  mkdirSync(path.join(dir, 'tokens'), { recursive: true });
  const conf = path.join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${path.join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  run('softhsm2-util', ['--init-token', '--free', '--label', 'bench', '--pin', PIN, '--so-pin', '13579111'], env);
  const pinFile = path.join(dir, 'pin');
  writeFileSync(pinFile, `${PIN}\n`, { mode: 0o600 });
  const base = ['--module', module, '--token-label', 'bench', '--login', '--pin', PIN];
  run('pkcs11-tool', [...base, '--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'ca', '--id', '01', '--usage-sign'], env);
  const pub = path.join(dir, 'ca.pub.der');
  run('pkcs11-tool', [...base, '--read-object', '--type', 'pubkey', '--label', 'ca', '--output-file', pub], env);
  return { env, pub, ref: { module, tokenLabel: 'bench', pinFile, keyLabel: 'ca' } };
}

/**
 * @param {object} o
 * @param {string} o.root repository root (dist/ is imported from it)
 * @param {string} o.work scratch directory
 * @param {{ dir: string, bundleFile: string }} o.material the bench's dev material (root.pem/root.key in dir)
 * @param {(dataDir: string) => string} o.writeConfig the bench's broker config (file-key CA) for a data dir
 * @param {(dataDir: string, env: object, devices: unknown[], configFile?: string) => Promise<{ child: import('node:child_process').ChildProcess, url: string }>} o.startBroker
 * @param {(child: import('node:child_process').ChildProcess) => Promise<void>} o.stop
 * @param {(pid: number, opts: object) => Promise<object>} o.measured runLoad with server CPU
 * @param {(url: string) => object} o.csrLoad the X.509-from-CSR request options for a broker URL
 * @param {number} o.seconds per measured run
 * @param {boolean} o.quick one round instead of three
 * @param {(...a: unknown[]) => void} o.log
 * @returns {Promise<{ skipped: string } | { rows: object[], ratio: number, signPerSecond: number, sessions: number }>}
 */
export async function hsmBench(o) {
  const module = MODULES.find((m) => existsSync(m));
  const hasTool = (bin) => spawnSync(bin, ['--help']).error === undefined;
  if (module === undefined || !hasTool('softhsm2-util') || !hasTool('pkcs11-tool')) return { skipped: 'softhsm2 or opensc (pkcs11-tool) is not installed' };
  const { issuerFromPem, mintCa } = await import(path.join(o.root, 'dist/ca/x509.js'));
  const { Pkcs11Signer } = await import(path.join(o.root, 'dist/ca/pkcs11-signer.js'));
  const { createPublicKey } = await import('node:crypto');

  const dir = path.join(o.work, 'hsm');
  const token = makeToken(dir, module);
  const root = issuerFromPem(readFileSync(path.join(o.material.dir, 'root.pem'), 'utf8'), readFileSync(path.join(o.material.dir, 'root.key'), 'utf8'));
  const now = Date.now();
  const caCert = mintCa(
    { commonName: 'Tessera bench HSM CA', trustDomain: 'example.org', subjectPublicKey: createPublicKey({ key: readFileSync(token.pub), format: 'der', type: 'spki' }), notBefore: new Date(now - 60_000), notAfter: new Date(now + 86_400_000), pathLen: 0 },
    root,
  );
  const caCertFile = path.join(dir, 'hsm-ca.pem');
  writeFileSync(caCertFile, caCert.pem);

  // The token's own rate through the signer (4 sessions, 64 callers), in this process.
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF;
  const signer = await Pkcs11Signer.open({ ...token.ref, sessions: 4 });
  const data = Buffer.alloc(400, 1);
  let signs = 0;
  const until = performance.now() + Math.min(o.seconds, 3) * 1000;
  await Promise.all(Array.from({ length: 64 }, async () => {
    while (performance.now() < until) {
      await signer.sign(data);
      signs++;
    }
  }));
  const signPerSecond = Math.round(signs / Math.min(o.seconds, 3));
  signer.close();
  o.log('hsm: Pkcs11Signer sign/s (SoftHSM2, 4 sessions)', signPerSecond);

  // Both brokers up at once, measured in alternating rounds (bench/alternate.mjs).
  const brokers = [];
  const rows = [];
  try {
    for (const [label, key] of [['file', null], ['SoftHSM2 (ca.pkcs11)', token.ref]]) {
      const dataDir = path.join(dir, `data-${key === null ? 'file' : 'hsm'}`);
      let configFile = o.writeConfig(dataDir);
      if (key !== null) {
        const text = readFileSync(configFile, 'utf8').replace(/^ca: \{.*\}$/m, (line) =>
          `ca: ${JSON.stringify({ certFile: caCertFile, pkcs11: key, bundleFile: o.material.bundleFile, jwtKeyFile: /jwtKeyFile: ([^,}]+)/.exec(line)[1].trim() })}`,
        );
        configFile = configFile.replace(/\.yaml$/, '-hsm.yaml');
        writeFileSync(configFile, text);
      }
      brokers.push({ label, ...(await o.startBroker(dataDir, token.env, [], configFile)) });
    }
    // Warm-up (JIT of server and client), then the measured rounds.
    for (const b of brokers) await o.measured(b.child.pid, { ...o.csrLoad(b.url), concurrency: 32, durationMs: 1500 });
    for (const concurrency of [1, 32]) {
      const medians = await alternatingRounds(brokers, o.quick ? 1 : 3, async (b, i) => {
        const r = await o.measured(b.child.pid, { ...o.csrLoad(b.url), concurrency, durationMs: o.seconds * 1000 });
        o.log(`hsm: x509 from CSR, CA key in ${b.label}`, `c=${concurrency} round ${i + 1}`, r);
        return r;
      });
      brokers.forEach((b, k) => rows.push({ scenario: `x509 from CSR (token), CA key in ${b.label}`, concurrency, ...medians[k] }));
    }
  } finally {
    for (const b of brokers) await o.stop(b.child);
  }
  const at32 = (label) => rows.find((r) => r.concurrency === 32 && r.scenario.endsWith(label));
  const ratio = Number((at32('SoftHSM2 (ca.pkcs11)').rps / at32('file').rps).toFixed(2));
  return { rows, ratio, signPerSecond, sessions: 4 };
}
