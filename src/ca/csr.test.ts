import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, sign, webcrypto, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BrokerError } from '../errors.js';
import { MAX_CSR_PEM_BYTES, keyKindOf, parseCsrPem, verifyCsrPem, type KeyKind } from './csr.js';
import { bitString, explicit, integer, nullValue, oid, readDer, sequence, set, toPem, utf8String } from './der.js';

// @peculiar/x509 (tests only) needs the Reflect metadata polyfill loaded before it.
async function loadPeculiar(): Promise<typeof import('@peculiar/x509')> {
  await import('reflect-metadata');
  const x509 = await import('@peculiar/x509');
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  return x509;
}

let tmp: string;
function openssl(args: string[]): void {
  const r = spawnSync('openssl', args, { cwd: tmp, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}
const read = (name: string): string => fs.readFileSync(path.join(tmp, name), 'utf8');

interface Fixture {
  readonly csr: string;
  readonly key: KeyObject;
}
const fx: Record<string, Fixture> = {};

function makeCsr(name: string, newkey: string[], extra: string[] = []): void {
  openssl(['req', '-new', ...newkey, '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', '/CN=workload/O=Example', ...extra]);
  fx[name] = { csr: read(`${name}.csr`), key: createPublicKey(read(`${name}.key`)) };
}
function csrFromKey(name: string, keyFile: string, extra: string[] = []): void {
  openssl(['req', '-new', '-key', keyFile, '-out', `${name}.csr`, '-subj', '/CN=workload', ...extra]);
  fx[name] = { csr: read(`${name}.csr`), key: createPublicKey(read(keyFile)) };
}
const get = (name: string): Fixture => {
  const f = fx[name];
  if (f === undefined) throw new Error(`no fixture ${name}`);
  return f;
};

const pemToDer = (pem: string): Buffer => Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
const derToCsrPem = (der: Uint8Array): string => toPem('CERTIFICATE REQUEST', der);

function expectBrokerError(fn: () => unknown, code: string): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(BrokerError);
  expect((thrown as BrokerError).code).toBe(code);
  expect((thrown as BrokerError).status).toBe(400);
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-csr-'));
  makeCsr('p256', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']);
  makeCsr('p384', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384'], ['-sha384']);
  makeCsr('rsa2048', ['-newkey', 'rsa:2048']);
  makeCsr('ed25519', ['-newkey', 'ed25519']);
  makeCsr('p256sha512', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], ['-sha512']);
  makeCsr('rsa1024', ['-newkey', 'rsa:1024']);
  makeCsr('rsa2047', ['-newkey', 'rsa:2047']);
  makeCsr('p521', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-521']);
  makeCsr('k256', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp256k1']);
  makeCsr('withExts', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], [
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'subjectAltName=DNS:evil.example,URI:spiffe://other.org/admin,IP:10.0.0.1',
    '-addext', 'keyUsage=critical,keyCertSign',
  ]);
  csrFromKey('rsaSha1', 'rsa2048.key', ['-sha1']);
  csrFromKey('rsaMd5', 'rsa2048.key', ['-md5']);
  csrFromKey('rsaPss', 'rsa2048.key', ['-sigopt', 'rsa_padding_mode:pss']);
  csrFromKey('ecSha1', 'p256.key', ['-sha1']);
  openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-pkeyopt', 'rsa_keygen_pubexp:3', '-out', 'e3.key']);
  csrFromKey('rsaE3', 'e3.key');
  openssl(['genpkey', '-genparam', '-algorithm', 'DSA', '-pkeyopt', 'dsa_paramgen_bits:2048', '-out', 'dsa.params']);
  openssl(['genpkey', '-paramfile', 'dsa.params', '-out', 'dsa.key']);
  csrFromKey('dsa', 'dsa.key');
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-pkeyopt', 'ec_param_enc:explicit', '-out', 'explicit.key']);
  csrFromKey('ecExplicit', 'explicit.key');
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('parseCsrPem: accepted CSRs', () => {
  it.each<[string, KeyKind]>([
    ['p256', 'ec-p256'],
    ['p384', 'ec-p384'],
    ['rsa2048', 'rsa'],
    ['ed25519', 'ed25519'],
    ['p256sha512', 'ec-p256'],
  ])('openssl %s CSR yields its key (%s)', (name, kind) => {
    const { csr, key } = get(name);
    const parsed = parseCsrPem(csr);
    expect(parsed.keyKind).toBe(kind);
    expect(parsed.publicKey.type).toBe('public');
    expect(parsed.publicKey.equals(key)).toBe(true);
    expect(parsed.spki.equals(key.export({ type: 'spki', format: 'der' }))).toBe(true);
    // The DER-based classification agrees with OpenSSL's view of a fresh (unmemoised) KeyObject.
    expect(keyKindOf(createPublicKey({ key: parsed.spki, format: 'der', type: 'spki' }))).toBe(kind);
  });

  it('ignores requested CA:true, SANs and key usage: only the key comes out', () => {
    const parsed = parseCsrPem(get('withExts').csr);
    expect(Object.keys(parsed).sort()).toEqual(['keyKind', 'publicKey', 'spki']);
    expect(parsed.publicKey.equals(get('withExts').key)).toBe(true);
  });

  it('parses CSRs made by @peculiar/x509 (ECDSA P-256 and RSA-2048)', async () => {
    const x509 = await loadPeculiar();
    for (const alg of [
      { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' },
      { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
    ]) {
      const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']));
      const req = await x509.Pkcs10CertificateRequestGenerator.create({
        name: 'CN=peculiar, O=Test',
        keys,
        signingAlgorithm: alg,
        extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'x.example' }])],
      });
      const parsed = parseCsrPem(req.toString('pem'));
      const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
      expect(parsed.spki.equals(spki)).toBe(true);
      expect(parsed.keyKind).toBe(alg.name === 'ECDSA' ? 'ec-p256' : 'rsa');
    }
  });

  it('accepts NEW CERTIFICATE REQUEST, CRLF, indentation and surrounding whitespace', () => {
    const der = pemToDer(get('p256').csr);
    const b64 = der.toString('base64');
    const lines = b64.match(/.{1,40}/g) ?? [];
    const pem = `\r\n  -----BEGIN NEW CERTIFICATE REQUEST-----\r\n${lines.map((l) => `   ${l}`).join('\r\n')}\r\n-----END NEW CERTIFICATE REQUEST-----\r\n\n`;
    expect(parseCsrPem(pem).keyKind).toBe('ec-p256');
    expect(parseCsrPem(`-----BEGIN CERTIFICATE REQUEST-----${b64}-----END CERTIFICATE REQUEST-----`).keyKind).toBe('ec-p256');
  });

  it('verifies a CSR signed with Ed25519 through node:crypto directly (built with our DER writer)', () => {
    const { publicKey, privateKey } = generateKeyPairSync('ed25519');
    const cri = sequence(
      integer(0),
      sequence(set(sequence(oid('2.5.4.3'), utf8String('hand-made')))),
      publicKey.export({ type: 'spki', format: 'der' }),
      explicit(0),
    );
    const csr = sequence(cri, sequence(oid('1.3.101.112')), bitString(sign(null, cri, privateKey)));
    expect(parseCsrPem(derToCsrPem(csr)).publicKey.equals(publicKey)).toBe(true);
    // attributes [0] absent is tolerated (some generators omit an empty set)
    const cri2 = sequence(integer(0), sequence(), publicKey.export({ type: 'spki', format: 'der' }));
    const csr2 = sequence(cri2, sequence(oid('1.3.101.112')), bitString(sign(null, cri2, privateKey)));
    expect(parseCsrPem(derToCsrPem(csr2)).keyKind).toBe('ed25519');
  });
});

describe('parseCsrPem: rejections', () => {
  it('rejects a tampered signature and a tampered request body with invalid_csr', () => {
    for (const name of ['p256', 'rsa2048', 'ed25519', 'p384']) {
      const der = pemToDer(get(name).csr);
      const sigTampered = Buffer.from(der);
      sigTampered[sigTampered.length - 1] = sigTampered.at(-1)! ^ 0x01;
      expectBrokerError(() => parseCsrPem(derToCsrPem(sigTampered)), 'invalid_csr');
      // Flip a byte inside the subject CN ("workload"): structure stays valid, signature must not.
      const bodyTampered = Buffer.from(der);
      const at = bodyTampered.indexOf('workload');
      expect(at).toBeGreaterThan(0);
      bodyTampered[at] = 'W'.charCodeAt(0);
      expectBrokerError(() => parseCsrPem(derToCsrPem(bodyTampered)), 'invalid_csr');
    }
  });

  it('rejects a signature by a different key', () => {
    const der = pemToDer(get('p256').csr);
    const root = readDer(der);
    const other = pemToDer(get('p256sha512').csr);
    const otherRoot = readDer(other);
    const spliced = sequence(root.children[0]!.raw, otherRoot.children[1]!.raw, otherRoot.children[2]!.raw);
    expectBrokerError(() => parseCsrPem(derToCsrPem(spliced)), 'invalid_csr');
  });

  it.each(['rsaSha1', 'rsaMd5', 'rsaPss', 'ecSha1'])('rejects disallowed signature algorithm (%s) with invalid_csr', (name) => {
    expectBrokerError(() => parseCsrPem(get(name).csr), 'invalid_csr');
  });

  it('rejects a signature algorithm that does not match the key type', () => {
    const root = readDer(pemToDer(get('p256').csr));
    const wrongAlg = sequence(root.children[0]!.raw, sequence(oid('1.2.840.113549.1.1.11'), nullValue()), root.children[2]!.raw);
    expectBrokerError(() => parseCsrPem(derToCsrPem(wrongAlg)), 'invalid_csr');
    const ecdsaWithNull = sequence(root.children[0]!.raw, sequence(oid('1.2.840.10045.4.3.2'), nullValue()), root.children[2]!.raw);
    expectBrokerError(() => parseCsrPem(derToCsrPem(ecdsaWithNull)), 'invalid_csr');
  });

  it.each(['rsa1024', 'rsa2047', 'p521', 'k256', 'dsa', 'rsaE3'])('rejects a %s key with weak_key', (name) => {
    expectBrokerError(() => parseCsrPem(get(name).csr), 'weak_key');
    expectBrokerError(() => keyKindOf(get(name).key), 'weak_key'); // same verdict from the KeyObject path
  });

  it('keyKindOf rejects X25519, X448, Ed448, RSA-PSS and oversize RSA keys', () => {
    for (const k of [
      generateKeyPairSync('x25519').publicKey,
      generateKeyPairSync('x448').publicKey,
      generateKeyPairSync('ed448').publicKey,
      generateKeyPairSync('rsa-pss', { modulusLength: 2048 }).publicKey,
      generateKeyPairSync('ec', { namedCurve: 'P-224' }).publicKey,
    ]) {
      expectBrokerError(() => keyKindOf(k), 'weak_key');
    }
    expect(keyKindOf(generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey)).toBe('ec-p384');
  });

  it('rejects EC keys with explicit curve parameters or compressed points (non-canonical SPKI)', () => {
    // OpenSSL maps these explicit parameters to P-256, but the SPKI would not be the canonical named-curve form.
    expectBrokerError(() => parseCsrPem(get('ecExplicit').csr), 'invalid_csr');
    expect(() => parseCsrPem(get('ecExplicit').csr)).toThrow(/not canonical/);
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const spki = publicKey.export({ type: 'spki', format: 'der' });
    const point = spki.subarray(spki.length - 65);
    const compressed = Buffer.concat([Buffer.from([0x02 | (point[64]! & 1)]), point.subarray(1, 33)]);
    const compressedSpki = sequence(sequence(oid('1.2.840.10045.2.1'), oid('1.2.840.10045.3.1.7')), bitString(compressed));
    expect(createPublicKey({ key: compressedSpki, format: 'der', type: 'spki' }).equals(publicKey)).toBe(true); // same key
    const cri = sequence(integer(0), sequence(), compressedSpki, explicit(0));
    const csr = sequence(cri, sequence(oid('1.2.840.10045.4.3.2')), bitString(sign('sha256', cri, privateKey)));
    expect(() => parseCsrPem(derToCsrPem(csr))).toThrow(/uncompressed point/);
    // The same CSR with the uncompressed point is fine.
    const cri2 = sequence(integer(0), sequence(), spki, explicit(0));
    const csr2 = sequence(cri2, sequence(oid('1.2.840.10045.4.3.2')), bitString(sign('sha256', cri2, privateKey)));
    expect(parseCsrPem(derToCsrPem(csr2)).publicKey.equals(publicKey)).toBe(true);
  });

  it('rejects an EC point that is not on the curve (invalid_csr) and X25519/Ed448 keys (weak_key)', () => {
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const offCurve = Buffer.from(publicKey.export({ type: 'spki', format: 'der' }));
    offCurve[offCurve.length - 1] = offCurve.at(-1)! ^ 0x01;
    const cri = sequence(integer(0), sequence(), offCurve, explicit(0));
    const csr = sequence(cri, sequence(oid('1.2.840.10045.4.3.2')), bitString(sign('sha256', cri, privateKey)));
    expectBrokerError(() => parseCsrPem(derToCsrPem(csr)), 'invalid_csr');
    expect(() => parseCsrPem(derToCsrPem(csr))).toThrow(/malformed/);
    for (const key of [generateKeyPairSync('x25519').publicKey, generateKeyPairSync('ed448').publicKey]) {
      const spki = key.export({ type: 'spki', format: 'der' });
      const cri2 = sequence(integer(0), sequence(), spki, explicit(0));
      const csr2 = sequence(cri2, sequence(oid('1.3.101.113')), bitString(Buffer.alloc(114, 1)));
      expectBrokerError(() => parseCsrPem(derToCsrPem(csr2)), 'weak_key');
    }
  });

  it('rejects an RSA key whose algorithm parameters are absent instead of NULL', () => {
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const spki = readDer(publicKey.export({ type: 'spki', format: 'der' }));
    const noNull = sequence(sequence(oid('1.2.840.113549.1.1.1')), spki.children[1]!.raw);
    const cri = sequence(integer(0), sequence(), noNull, explicit(0));
    const csr = sequence(cri, sequence(oid('1.2.840.113549.1.1.11'), nullValue()), bitString(sign('sha256', cri, privateKey)));
    expect(() => parseCsrPem(derToCsrPem(csr))).toThrow(/invalid_csr|not canonical|malformed/);
    expectBrokerError(() => parseCsrPem(derToCsrPem(csr)), 'invalid_csr');
  });

  it('rejects truncated DER', () => {
    const der = pemToDer(get('p256').csr);
    for (const cut of [1, 2, 10, der.length >> 1, der.length - 1]) {
      expectBrokerError(() => parseCsrPem(derToCsrPem(der.subarray(0, cut))), 'invalid_csr');
    }
  });

  it('rejects trailing bytes after the CSR', () => {
    const der = pemToDer(get('p256').csr);
    expectBrokerError(() => parseCsrPem(derToCsrPem(Buffer.concat([der, Buffer.from([0])]))), 'invalid_csr');
  });

  it('rejects non-PEM, wrong labels, two blocks, junk around the block and bad base64', () => {
    const pem = get('p256').csr;
    const b64 = pemToDer(pem).toString('base64');
    const cases = [
      '',
      'hello',
      pemToDer(pem).toString('base64'),
      pem.replace(/CERTIFICATE REQUEST/g, 'CERTIFICATE'),
      pem.replace('BEGIN CERTIFICATE REQUEST', 'BEGIN NEW CERTIFICATE REQUEST'), // mismatched labels
      pem + pem,
      `${pem}\n${get('p384').csr}`,
      `garbage\n${pem}`,
      `${pem}trailing`,
      pem.replace('-----\n', '-----\nProc-Type: 4,ENCRYPTED\n\n'),
      `-----BEGIN CERTIFICATE REQUEST-----\n${b64.slice(0, -2)}!!\n-----END CERTIFICATE REQUEST-----\n`,
      `-----BEGIN CERTIFICATE REQUEST-----\n${b64}=\n-----END CERTIFICATE REQUEST-----\n`,
      `-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n`,
    ];
    for (const c of cases) expectBrokerError(() => parseCsrPem(c), 'invalid_csr');
    expectBrokerError(() => parseCsrPem(42 as unknown as string), 'invalid_csr');
  });

  it('rejects non-canonical base64 (non-zero pad bits) that decodes to a valid CSR', () => {
    const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
    const name = Object.keys(fx).find((n) => pemToDer(get(n).csr).length % 3 !== 0 && !['rsa1024', 'rsa2047', 'p521', 'k256', 'dsa', 'rsaE3', 'rsaSha1', 'rsaMd5', 'rsaPss', 'ecSha1'].includes(n));
    expect(name).toBeDefined();
    const der = pemToDer(get(name!).csr);
    const b64 = der.toString('base64');
    const lastData = b64.replace(/=+$/, '').length - 1;
    const tweaked = b64.slice(0, lastData) + ALPHABET[ALPHABET.indexOf(b64[lastData]!) + 1] + b64.slice(lastData + 1);
    expect(Buffer.from(tweaked, 'base64').equals(der)).toBe(true); // Node decodes it to the same bytes...
    const wrap = (body: string): string => `-----BEGIN CERTIFICATE REQUEST-----\n${body}\n-----END CERTIFICATE REQUEST-----\n`;
    expect(parseCsrPem(wrap(b64)).publicKey.equals(get(name!).key)).toBe(true);
    expectBrokerError(() => parseCsrPem(wrap(tweaked)), 'invalid_csr'); // ...but only canonical form is accepted
  });

  it('rejects PEM over the size limit, even when the content is otherwise valid', () => {
    const pem = get('p256').csr;
    expectBrokerError(() => parseCsrPem(pem + ' '.repeat(MAX_CSR_PEM_BYTES)), 'invalid_csr');
    expectBrokerError(() => parseCsrPem('é'.repeat(MAX_CSR_PEM_BYTES / 2 + 1)), 'invalid_csr'); // bytes, not chars
    expectBrokerError(() => parseCsrPem('A'.repeat(10 * 1024 * 1024)), 'invalid_csr');
  });
});

describe('parseCsrPem: fuzzing', () => {
  const onlyBrokerErrors = (fn: () => unknown): void => {
    try {
      fn();
    } catch (e) {
      if (!(e instanceof BrokerError) || (e.code !== 'invalid_csr' && e.code !== 'weak_key') || e.status !== 400) throw e;
    }
  };

  it('arbitrary strings never escape as anything but invalid_csr', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 300 }), fc.string({ unit: 'binary', maxLength: 200 }), fc.base64String({ maxLength: 800 })), (s) => {
        onlyBrokerErrors(() => parseCsrPem(s));
        onlyBrokerErrors(() => parseCsrPem(`-----BEGIN CERTIFICATE REQUEST-----\n${s}\n-----END CERTIFICATE REQUEST-----`));
      }),
      { numRuns: 2000 },
    );
  });

  it('arbitrary mutations of valid CSRs yield the original key or a 400 BrokerError', () => {
    const names = ['p256', 'rsa2048', 'ed25519', 'rsa1024'];
    const ders = names.map((n) => pemToDer(get(n).csr));
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
      fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
    );
    fc.assert(
      fc.property(fc.nat(names.length - 1), fc.array(mutation, { minLength: 1, maxLength: 4 }), (which, muts) => {
        let der = Buffer.from(ders[which]!);
        for (const m of muts) {
          const at = m.at % (der.length + 1);
          if (m.kind === 'flip' && der.length > 0) der[at % der.length] = m.value;
          else if (m.kind === 'cut') der = der.subarray(0, at);
          else if (m.kind === 'insert') der = Buffer.concat([der.subarray(0, at), m.bytes, der.subarray(at)]);
          else if (m.kind === 'delete') der = Buffer.concat([der.subarray(0, at), der.subarray(at + m.n)]);
        }
        try {
          const parsed = parseCsrPem(derToCsrPem(der));
          // Only a no-op mutation can still verify.
          expect(parsed.publicKey.equals(get(names[which]!).key)).toBe(true);
        } catch (e) {
          if (!(e instanceof BrokerError) || (e.code !== 'invalid_csr' && e.code !== 'weak_key')) throw e;
        }
      }),
      { numRuns: 1500 },
    );
  });
});

// verifyCsrPem is the issuance hot path (minting threads): it differs from parseCsrPem only in how an
// EC key is imported (WebCrypto raw point instead of JWK), so every input must get the same answer.
describe('verifyCsrPem agrees with parseCsrPem', () => {
  const outcome = (run: () => { spki: Buffer; keyKind: KeyKind }): string => {
    try {
      const r = run();
      return `ok ${r.keyKind} ${r.spki.toString('hex')}`;
    } catch (e) {
      return e instanceof BrokerError ? `${e.status} ${e.code} ${e.message}` : `unexpected ${String(e)}`;
    }
  };
  const outcomeAsync = async (pem: string): Promise<string> => {
    try {
      const r = await verifyCsrPem(pem);
      return `ok ${r.keyKind} ${r.spki.toString('hex')}`;
    } catch (e) {
      return e instanceof BrokerError ? `${e.status} ${e.code} ${e.message}` : `unexpected ${String(e)}`;
    }
  };
  const same = async (pem: string): Promise<string> => {
    const expected = outcome(() => parseCsrPem(pem));
    expect(await outcomeAsync(pem)).toBe(expected);
    return expected;
  };

  it('on every fixture, accepted or refused', async () => {
    const accepted: string[] = [];
    for (const [name, f] of Object.entries(fx)) if ((await same(f.csr)).startsWith('ok ')) accepted.push(name);
    expect(accepted.sort()).toEqual(['p256', 'p256sha512', 'p384', 'rsa2048', 'ed25519', 'withExts'].sort());
    const parsed = await verifyCsrPem(get('p256').csr);
    expect(parsed.publicKey.equals(get('p256').key)).toBe(true);
    expect(keyKindOf(parsed.publicKey)).toBe('ec-p256');
    expect((await verifyCsrPem(get('p384').csr)).publicKey.equals(get('p384').key)).toBe(true);
  });

  it('refuses an EC point off the curve, and a CSR signed by another key', async () => {
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const offCurve = Buffer.from(publicKey.export({ type: 'spki', format: 'der' }));
    offCurve[offCurve.length - 1] = offCurve.at(-1)! ^ 0x01;
    const cri = sequence(integer(0), sequence(), offCurve, explicit(0));
    const csr = derToCsrPem(sequence(cri, sequence(oid('1.2.840.10045.4.3.2')), bitString(sign('sha256', cri, privateKey))));
    expect(await same(csr)).toMatch(/^400 invalid_csr .*malformed/);
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const cri2 = sequence(integer(0), sequence(), publicKey.export({ type: 'spki', format: 'der' }), explicit(0));
    const csr2 = derToCsrPem(sequence(cri2, sequence(oid('1.2.840.10045.4.3.2')), bitString(sign('sha256', cri2, other.privateKey))));
    expect(await same(csr2)).toBe('400 invalid_csr CSR signature does not verify');
  });

  it('refuses a P-256 point whose x is encoded as x + p (on the curve mod p, but a coordinate out of range)', async () => {
    // Partial public-key validation checks the range of the coordinates as well as the curve equation.
    // A point with a small x is found by solving y² = x³ - 3x + b (p ≡ 3 mod 4, so y = rhs^((p+1)/4)).
    const p = 2n ** 256n - 2n ** 224n + 2n ** 192n + 2n ** 96n - 1n;
    const b = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn;
    const modPow = (base: bigint, e: bigint): bigint => {
      let r = 1n;
      for (base %= p; e > 0n; e >>= 1n, base = (base * base) % p) if (e & 1n) r = (r * base) % p;
      return r;
    };
    let x = 1n;
    let y = 0n;
    for (; ; x++) {
      const rhs = (((x * x * x - 3n * x + b) % p) + p) % p;
      y = modPow(rhs, (p + 1n) / 4n);
      if ((y * y) % p === rhs) break;
    }
    const be32 = (n: bigint): Buffer => Buffer.from(n.toString(16).padStart(64, '0'), 'hex');
    const csrFor = (xEncoded: bigint): string => {
      const spki = sequence(sequence(oid('1.2.840.10045.2.1'), oid('1.2.840.10045.3.1.7')), bitString(Buffer.concat([Buffer.from([4]), be32(xEncoded), be32(y)])));
      const cri = sequence(integer(0), sequence(), spki, explicit(0));
      // Nobody knows this point's private key: any P-256 signature will do, it must just not verify.
      const junk = sign('sha256', cri, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
      return derToCsrPem(sequence(cri, sequence(oid('1.2.840.10045.4.3.2')), bitString(junk)));
    };
    // The canonical encoding is a valid key: refused only for its signature.
    expect(await same(csrFor(x))).toBe('400 invalid_csr CSR signature does not verify');
    // x + p names the same point mod p, but the key itself is refused.
    expect(await same(csrFor(x + p))).toMatch(/^400 invalid_csr .*malformed/);
  });

  it('on arbitrary mutations of valid CSRs', async () => {
    const names = ['p256', 'p384', 'rsa2048', 'ed25519'];
    const ders = names.map((n) => pemToDer(get(n).csr));
    await fc.assert(
      fc.asyncProperty(fc.nat(names.length - 1), fc.nat(), fc.integer({ min: 0, max: 255 }), fc.nat(), async (which, at, value, cut) => {
        const der = Buffer.from(ders[which]!);
        der[at % der.length] = value;
        await same(derToCsrPem(der.subarray(0, der.length - (cut % 3 === 0 ? cut % 40 : 0))));
      }),
      { numRuns: 1000 },
    );
  });
});
