/**
 * Hostile CSRs against a live broker. A CSR that cannot be trusted (bad signature, weak or unsupported
 * key, broken DER, not a CSR at all) is refused with a 4xx and a denial entry; a CSR that asks for
 * more than it may (CA:true, path length, extra SANs, another trust domain, odd extensions) is
 * accepted only for its key: the issued certificate carries exactly what the broker decided, checked
 * with `openssl x509 -text` and @peculiar/x509.
 */
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { openssl, opensslKeyAndCsr, opensslText, opensslVerify } from '../helpers/openssl.js';
import { allowCount, denialOf, expectError } from './helpers.js';

let b: TestBroker;
let token: string;
beforeAll(async () => {
  b = await startBroker();
  token = await b.token();
});
afterAll(async () => {
  await b?.close();
});

/** A key and CSR made by openssl with the given genpkey arguments and CSR extensions. */
function csrWith(genArgs: readonly string[], addext: readonly string[] = [], subj = '/CN=evil/O=Attacker'): { csrPem: string; keyPem: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-hostile-csr-'));
  try {
    const key = path.join(dir, 'key.pem');
    const csr = path.join(dir, 'csr.pem');
    const g = openssl(['genpkey', ...genArgs, '-out', key]);
    if (g.status !== 0) throw new Error(g.stderr);
    const r = openssl(['req', '-new', '-key', key, '-out', csr, '-subj', subj, ...addext.flatMap((e) => ['-addext', e])]);
    if (r.status !== 0) throw new Error(r.stderr);
    return { csrPem: readFileSync(csr, 'utf8'), keyPem: readFileSync(key, 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const P256 = ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'];

const pemBody = (pem: string): Buffer => Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
const toPem = (label: string, der: Buffer): string => `-----BEGIN ${label}-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END ${label}-----\n`;

async function issue(csr: string): Promise<Awaited<ReturnType<TestBroker['call']>>> {
  return b.call({ path: '/v1/svid/x509', token, body: { csr } });
}

async function refuse(csr: string, status: number, codes: readonly string[]): Promise<void> {
  const before = await allowCount(b);
  const res = await issue(csr);
  expect(res.status, res.text).toBe(status);
  expect(codes, res.text).toContain((res.json as { error: string }).error);
  expect(res.json).toEqual({ error: expect.any(String), message: expect.any(String) });
  if (status !== 400 || (res.json as { error: string }).error !== 'bad_request') {
    // Refused by the broker after authentication: audited.
    const denial = await denialOf(b, res);
    expect(denial.actor).toBe('spiffe://example.org/ns/shop/sa/web');
    expect(JSON.stringify(denial)).not.toContain('BEGIN');
  }
  expect(await allowCount(b)).toBe(before);
}

/** The exact extension set and names the broker puts in every X.509-SVID leaf. */
async function expectOnlyWhatTheBrokerDecided(certPem: string, csrKeyPem: string): Promise<void> {
  const leaf = new X509Certificate(certPem);
  expect(leaf.ca).toBe(false);
  expect(leaf.subjectAltName).toBe('URI:spiffe://example.org/ns/shop/sa/web, DNS:web.shop.svc');
  expect(leaf.subject).toBe('O=Tessera');
  expect(leaf.publicKey.export({ type: 'spki', format: 'der' })).toEqual(createPublicKey(createPrivateKey(csrKeyPem)).export({ type: 'spki', format: 'der' }));

  const text = opensslText(certPem);
  expect(text).not.toMatch(/evil|Attacker|pathlen|Certificate Sign|CRL Sign|Code Signing|Name Constraints|Policies|1\.2\.3\.4/i);
  expect(text).toMatch(/CA:FALSE/);
  await import('reflect-metadata');
  const x509 = await import('@peculiar/x509');
  const cert = new x509.X509Certificate(certPem);
  expect(cert.extensions.map((e) => e.type).sort()).toEqual(
    ['2.5.29.14', '2.5.29.15', '2.5.29.17', '2.5.29.19', '2.5.29.35', '2.5.29.37'].sort(),
  );
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  expect(bc?.ca).toBe(false);
  expect(bc?.pathLength).toBeUndefined();
  expect(bc?.critical).toBe(true);
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  expect(san?.names.items.map((n) => `${n.type}:${n.value}`)).toEqual(['url:spiffe://example.org/ns/shop/sa/web', 'dns:web.shop.svc']);
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  expect(ku !== null && (ku.usages & x509.KeyUsageFlags.keyCertSign)).toBe(0);
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  expect([...(eku?.usages ?? [])].map(String).sort()).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
}

describe('CSRs that ask for more than they may: accepted for the key only', () => {
  const greedy: [string, readonly string[]][] = [
    ['CA:true with a path length, another trust domain’s SPIFFE ID and a DNS SAN', [
      'subjectAltName=URI:spiffe://evil.org/ns/kube-system/sa/admin,DNS:evil.example.com',
      'basicConstraints=critical,CA:TRUE,pathlen:5',
    ]],
    ['several URI SANs (ours and others), IP and e-mail SANs', [
      'subjectAltName=URI:spiffe://example.org/ns/kube-system/sa/admin,URI:spiffe://example.org/ns/shop/sa/web,URI:https://evil.example,IP:10.0.0.1,email:evil@evil.example,DNS:*.example.org',
    ]],
    ['keyCertSign, CRL signing, code signing, name constraints, policies and a private extension', [
      'keyUsage=critical,keyCertSign,cRLSign,digitalSignature',
      'extendedKeyUsage=codeSigning,OCSPSigning',
      'nameConstraints=critical,permitted;DNS:evil.example',
      'certificatePolicies=1.2.3.4',
      '1.2.3.4.5=ASN1:UTF8String:evil',
    ]],
  ];

  it.each(greedy)('%s', async (_name, addext) => {
    const { csrPem, keyPem } = csrWith(P256, addext);
    const res = await issue(csrPem);
    expect(res.status, res.text).toBe(200);
    const body = res.json as { certificates: string[]; serial: string };
    await expectOnlyWhatTheBrokerDecided(body.certificates[0] as string, keyPem);
    expect(opensslVerify(b.ca, body.certificates, 'sslclient').ok).toBe(true);
  });
});

describe('CSRs that cannot be trusted → 4xx, a denial entry, nothing issued', () => {
  it('a broken signature', async () => {
    const { csrPem } = opensslKeyAndCsr('ec-p256');
    const der = pemBody(csrPem);
    der[der.length - 5] = (der[der.length - 5] as number) ^ 0x01;
    await refuse(toPem('CERTIFICATE REQUEST', der), 400, ['invalid_csr']);
  });

  it('a CSR whose key was swapped for another (signature by a different key)', async () => {
    const a = pemBody(opensslKeyAndCsr('ec-p256').csrPem);
    const other = createPublicKey(createPrivateKey(opensslKeyAndCsr('ec-p256').keyPem)).export({ type: 'spki', format: 'der' });
    const mine = a.indexOf(other.subarray(0, 27)); // the SPKI prefix is the same for every P-256 key
    expect(mine).toBeGreaterThan(0);
    other.copy(a, mine);
    await refuse(toPem('CERTIFICATE REQUEST', a), 400, ['invalid_csr']);
  });

  it('RSA-1024', async () => {
    await refuse(opensslKeyAndCsr('rsa-1024').csrPem, 400, ['weak_key']);
  });

  const unsupported: [string, readonly string[]][] = [
    ['P-521', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-521']],
    ['secp256k1', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:secp256k1']],
    ['brainpoolP256r1', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:brainpoolP256r1']],
    ['Ed448', ['-algorithm', 'ED448']],
    ['RSA-2048 with public exponent 3', ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-pkeyopt', 'rsa_keygen_pubexp:3']],
  ];
  it.each(unsupported)('an unsupported key: %s', async (_name, genArgs) => {
    await refuse(csrWith(genArgs).csrPem, 400, ['invalid_csr', 'weak_key']);
  });

  it('a CSR signed with SHA-1', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-hostile-csr-'));
    try {
      const key = path.join(dir, 'key.pem');
      expect(openssl(['genpkey', ...P256, '-out', key]).status).toBe(0);
      const r = openssl(['req', '-new', '-sha1', '-key', key, '-subj', '/CN=old']);
      expect(r.status, r.stderr).toBe(0);
      await refuse(r.stdout, 400, ['invalid_csr']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('truncated DER (every cut point of one CSR, sampled)', async () => {
    const der = pemBody(opensslKeyAndCsr('ec-p256').csrPem);
    for (const cut of [1, 2, 10, Math.floor(der.length / 2), der.length - 1]) {
      await refuse(toPem('CERTIFICATE REQUEST', der.subarray(0, cut)), 400, ['invalid_csr']);
    }
  });

  it('trailing bytes after the DER, and a CSR inside a longer length', async () => {
    const der = pemBody(opensslKeyAndCsr('ec-p256').csrPem);
    await refuse(toPem('CERTIFICATE REQUEST', Buffer.concat([der, Buffer.from([0, 0])])), 400, ['invalid_csr']);
  });

  it('not a CSR: plain text, a certificate, a private key, two CSRs, binary, wrong label', async () => {
    const { csrPem, keyPem } = opensslKeyAndCsr('ec-p256');
    const texts = [
      'hello',
      '-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n',
      b.ca,
      keyPem,
      csrPem + csrPem,
      pemBody(csrPem).toString('latin1'),
      csrPem.replaceAll('CERTIFICATE REQUEST', 'X509 CRL'),
      csrPem.replace('-----END CERTIFICATE REQUEST-----', ''),
    ];
    for (const text of texts) {
      const before = (await allowCount(b));
      const res = await issue(text);
      expect([400], res.text).toContain(res.status);
      expect(['invalid_csr', 'bad_request']).toContain((res.json as { error: string }).error);
      // Whatever was sent is never echoed back.
      expect(res.text).not.toContain('PRIVATE KEY');
      expect(await allowCount(b)).toBe(before);
    }
  });

  it('a huge PEM is refused by the schema before anything is parsed; a near-limit one by the parser', async () => {
    const huge = `-----BEGIN CERTIFICATE REQUEST-----\n${'A'.repeat(40_000)}\n-----END CERTIFICATE REQUEST-----\n`;
    expectError(await issue(huge), 400, 'bad_request');
    const big = `-----BEGIN CERTIFICATE REQUEST-----\n${'MIIB'.repeat(3_900).replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE REQUEST-----\n`;
    expect(big.length).toBeLessThan(16_384);
    await refuse(big, 400, ['invalid_csr']);
  });
});
