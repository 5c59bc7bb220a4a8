/** Key/CSR/verify helpers that shell out to the real openssl CLI, so tests never grade our code with itself. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export function openssl(args: readonly string[], input?: string): { status: number; stdout: string; stderr: string } {
  const r = spawnSync('openssl', args, { input, encoding: 'utf8' });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export type KeySpec = 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-1024' | 'ed25519' | 'ec-p521';

/** A fresh key (PEM) and a CSR for it, both made by openssl. The CSR asks for things the broker must ignore. */
export function opensslKeyAndCsr(spec: KeySpec, subj = '/CN=evil/O=Attacker'): { keyPem: string; csrPem: string; dir: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-csr-'));
  const key = path.join(dir, 'key.pem');
  const csr = path.join(dir, 'csr.pem');
  const genArgs: Record<KeySpec, string[]> = {
    'ec-p256': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'],
    'ec-p384': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384'],
    'ec-p521': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-521'],
    'rsa-2048': ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
    'rsa-1024': ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024'],
    ed25519: ['-algorithm', 'ED25519'],
  };
  const g = openssl(['genpkey', ...genArgs[spec], '-out', key]);
  if (g.status !== 0) throw new Error(g.stderr);
  const r = openssl([
    'req', '-new', '-key', key, '-out', csr, '-subj', subj,
    '-addext', 'subjectAltName=URI:spiffe://evil.org/ns/kube-system/sa/admin,DNS:evil.example.com',
    '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:5',
  ]);
  if (r.status !== 0) throw new Error(r.stderr);
  return { keyPem: readFileSync(key, 'utf8'), csrPem: readFileSync(csr, 'utf8'), dir };
}

/** `openssl verify` of a leaf against a root bundle with the given intermediates. */
export function opensslVerify(rootsPem: string, chainPem: readonly string[], purpose?: 'sslclient' | 'sslserver'): { ok: boolean; output: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-verify-'));
  const roots = path.join(dir, 'roots.pem');
  const inter = path.join(dir, 'inter.pem');
  const leaf = path.join(dir, 'leaf.pem');
  writeFileSync(roots, rootsPem);
  writeFileSync(inter, chainPem.slice(1).join(''));
  writeFileSync(leaf, chainPem[0] ?? '');
  const r = openssl(['verify', '-CAfile', roots, '-untrusted', inter, ...(purpose ? ['-purpose', purpose] : []), leaf]);
  return { ok: r.status === 0 && r.stdout.includes(': OK'), output: r.stdout + r.stderr };
}

export function opensslText(certPem: string): string {
  const r = openssl(['x509', '-noout', '-text'], certPem);
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout;
}
