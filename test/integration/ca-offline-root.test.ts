/**
 * An upstream / offline root (docs/ca.md, "Offline root"): the broker holds no root key
 * (`ca.rotation` without `rootKeyFile`). `tessera ca prepare` makes the next authority's keys and a CSR;
 * the test acts as the offline root with `openssl` (throwaway keys in a temp folder: the dev root's key
 * and an intermediate under it) and signs it; `tessera ca import` installs it as the prepared authority
 * (bundle sequence + 1) and `tessera ca activate` switches. Issued X.509-SVIDs then verify against the
 * root through the new CA with `openssl verify`. Every bad certificate is refused with a message naming
 * the cause, and nothing changes.
 */
import { execFile } from 'node:child_process';
import { createPublicKey, X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { issuerFromPem, mintCa } from '../../src/ca/x509.js';
import { CLI } from '../helpers/broker-process.js';
import { adminSection, auditEntries, mintAdminCert, type ClientCert } from '../helpers/admin.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { as, AUDITOR, CA_PRINCIPALS, caCli, OPERATOR, type CliResult } from '../helpers/ca-cli.js';
import { cleanRotationTemps, rotatingConfig } from '../helpers/rotation.js';

const run = promisify(execFile);
const work = mkdtempSync(path.join(tmpdir(), 'tessera-ca-offline-'));
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
  cleanRotationTemps();
});

const f = (name: string): string => path.join(work, name);
const openssl = async (...args: string[]): Promise<string> => (await run('openssl', args, { cwd: work })).stdout;

/** What the offline root puts in a signing CA certificate (the runbook's extension file). */
const EXT = `[signing_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = URI:spiffe://example.org
[mid_ca]
basicConstraints = critical, CA:TRUE, pathlen:1
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[not_ca]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
[no_certsign]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, digitalSignature
`;

/** `openssl x509 -req`: signs `csr` with `caCert`/`caKey` using section `ext` of EXT. */
async function sign(csr: string, caCert: string, caKey: string, ext: string, out: string): Promise<string> {
  await openssl('x509', '-req', '-in', csr, '-CA', caCert, '-CAkey', caKey, '-CAcreateserial', '-CAserial', f('serial.srl'), '-days', '30', '-sha256', '-extfile', f('ext.cnf'), '-extensions', ext, '-out', out);
  return readFileSync(out, 'utf8');
}

const cli = (b: TestBroker, c: ClientCert, ...args: string[]): Promise<CliResult> => caCli(work, b, c, ...args);

interface Status { rotation: boolean; sequence: number; pendingSince?: string; authorities: { id: string; state: string; jwtKid: string }[] }

describe('CA with an offline root: prepare → sign → import → activate', () => {
  it('installs the root-signed CA only when it is right, publishes it, and issues SVIDs that chain to the root through it', async () => {
    if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build`');
    await run('openssl', ['version']).catch(() => {
      throw new Error('openssl is required for this test (apt-get install -y openssl)');
    });
    const { dir: pkiDir, material } = await devMaterial();
    const rootPem = path.join(pkiDir, 'root.pem');
    const rootKey = path.join(pkiDir, 'root.key');
    writeFileSync(f('ext.cnf'), EXT);
    const { config } = await rotatingConfig(240, await adminSection(CA_PRINCIPALS));
    // The broker does not hold the root's key: nothing prepares by itself.
    const ca = config.ca as Record<string, unknown>;
    ca.rotation = { caTtlSeconds: 300, pollIntervalMs: 200 };
    const b = await startBroker({ config });
    try {
      const op = mintAdminCert(material, OPERATOR);
      const auditor = mintAdminCert(material, AUDITOR);
      const first = b.broker.ca.authorityId;
      const status = async (): Promise<Status> => (await b.call<Status>({ method: 'GET', path: '/v1/admin/ca', ...as(op) })).json;
      const unchanged = async (): Promise<void> => {
        const s = await status();
        expect(s.sequence).toBe(1);
        expect(s.authorities.map((a) => [a.id, a.state])).toEqual([[first, 'active']]);
      };

      // Nothing to import into yet; an auditor may not prepare.
      const early = await b.call({ path: '/v1/admin/ca/import', body: { reason: 'too early', certificatePem: readFileSync(rootPem, 'utf8') }, ...as(op) });
      expect([early.status, early.json.error]).toEqual([409, 'ca_state_conflict']);
      expect(String(early.json.message)).toMatch(/no `tessera ca prepare` is pending/);
      expect((await b.call({ path: '/v1/admin/ca/prepare', body: { reason: 'no' }, ...as(auditor) })).status).toBe(403);

      // prepare: a CSR signed by the new key, asking for a CA; asked again, the same CSR.
      const prepared = await cli(b, op, 'prepare', '--csr-out', f('next.csr'), '--reason', 'CHG-1 next intermediate');
      expect(prepared.code, prepared.stderr).toBe(0);
      expect(prepared.stdout).toContain(`wrote the CSR for the next CA authority to ${f('next.csr')}`);
      const csr = readFileSync(f('next.csr'), 'utf8');
      expect(await openssl('req', '-in', 'next.csr', '-noout', '-verify', '-subject')).toMatch(/O ?= ?Tessera, CN ?= ?Tessera Signing CA/);
      expect(await openssl('req', '-in', 'next.csr', '-noout', '-text')).toMatch(/CA:TRUE, pathlen:0[\s\S]*Certificate Sign, CRL Sign[\s\S]*URI:spiffe:\/\/example.org/);
      const again = await cli(b, op, 'prepare', '--csr-out', f('again.csr'), '--reason', 'lost it');
      expect(again.code).toBe(0);
      expect(again.stdout).toContain('already pending');
      expect(readFileSync(f('again.csr'), 'utf8')).toBe(csr);
      const pendingStatus = await status();
      expect(pendingStatus.pendingSince).toBeDefined();
      await unchanged(); // keys made, nothing published

      // Each wrong certificate: a clear 400 naming the cause, and nothing installed.
      const refuse = async (certPem: string, pattern: RegExp, chainPem?: string): Promise<void> => {
        const r = await b.call({ path: '/v1/admin/ca/import', body: { reason: 'try', certificatePem: certPem, ...(chainPem !== undefined ? { chainPem } : {}) }, ...as(op) });
        expect([r.status, r.json.error], String(r.json.message)).toEqual([400, 'bad_request']);
        expect(String(r.json.message)).toMatch(pattern);
        await unchanged();
      };
      // Another key's CSR, signed by the right root.
      await openssl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('other.key'), '-subj', '/O=Tessera/CN=Other', '-out', f('other.csr'));
      await refuse(await sign(f('other.csr'), rootPem, rootKey, 'signing_ca', f('other.pem')), /does not match the prepared key/);
      await refuse(await sign(f('next.csr'), rootPem, rootKey, 'not_ca', f('notca.pem')), /not a CA: basicConstraints cA/);
      await refuse(await sign(f('next.csr'), rootPem, rootKey, 'no_certsign', f('nocertsign.pem')), /cannot sign certificates: .*keyCertSign/);
      // A root the broker does not trust.
      await openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('foreign.key'), '-subj', '/CN=Foreign Root', '-days', '30', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', f('foreign.pem'));
      await refuse(await sign(f('next.csr'), f('foreign.pem'), f('foreign.key'), 'signing_ca', f('foreign-signed.pem')), /does not chain to a root in ca\.bundleFile/);
      // Expired, not yet valid, too short for the longest SVID (node crypto as the root: openssl 3.0 x509 cannot set past dates).
      const root = issuerFromPem(readFileSync(rootPem, 'utf8'), readFileSync(rootKey, 'utf8'));
      const nextKey = createPublicKey(await openssl('req', '-in', 'next.csr', '-noout', '-pubkey'));
      const dated = (from: number, to: number): string =>
        mintCa({ commonName: 'Tessera Signing CA', trustDomain: 'example.org', subjectPublicKey: nextKey, notBefore: new Date(Date.now() + from), notAfter: new Date(Date.now() + to), pathLen: 0 }, root).pem;
      await refuse(dated(-3_600_000, -60_000), /expired at/);
      await refuse(dated(3_600_000, 7_200_000), /not valid yet/);
      await refuse(dated(-60_000, 2_000), /sooner than the longest X\.509-SVID/);
      await refuse('not a certificate', /expected one PEM CERTIFICATE block/);
      // Through the CLI: exit 1 with the broker's reason.
      const cliRefused = await cli(b, op, 'import', '--cert', f('notca.pem'), '--reason', 'try');
      expect(cliRefused.code).toBe(1);
      expect(cliRefused.stderr).toContain('400 bad_request');
      expect(cliRefused.stderr).toContain('not a CA');
      await unchanged();

      // Through an intermediate of the offline root: without --chain it leads nowhere; with it, the dev
      // root's pathLenConstraint (1) leaves no room for a CA under the intermediate — openssl verify would
      // refuse what it signs, so the broker refuses it.
      await openssl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('mid.key'), '-subj', '/O=Offline/CN=Offline Intermediate', '-out', f('mid.csr'));
      const midPem = await sign(f('mid.csr'), rootPem, rootKey, 'mid_ca', f('mid.pem'));
      const underMid = await sign(f('next.csr'), f('mid.pem'), f('mid.key'), 'signing_ca', f('under-mid.pem'));
      await refuse(underMid, /does not chain to a root/);
      await refuse(underMid, /Tessera Dev Root CA" allows 1 CA certificate\(s\) below it \(pathLenConstraint\) but the path to the SVIDs has 2/, midPem);

      // The right one: the offline root signs the CSR.
      await sign(f('next.csr'), rootPem, rootKey, 'signing_ca', f('next.pem'));
      const imported = await cli(b, op, 'import', '--cert', f('next.pem'), '--reason', 'CHG-1 install');
      expect(imported.code, imported.stderr).toBe(0);
      expect(imported.stdout).toMatch(/^prepared: [0-9a-f]+ .*bundle sequence 2$/m);
      const installed = await status();
      expect(installed.sequence).toBe(2);
      expect(installed.pendingSince).toBeUndefined();
      expect(installed.authorities.map((a) => a.state)).toEqual(['active', 'prepared']);
      const next = installed.authorities[1] as { id: string; jwtKid: string };
      // Published before it signs: the bundle carries its JWT key; the broker still signs with the first.
      const bundle = await b.call<{ spiffe_sequence: number; keys: { use: string; kid?: string }[] }>({ method: 'GET', path: '/v1/bundle' });
      expect(bundle.json.spiffe_sequence).toBe(2);
      expect(bundle.json.keys.filter((k) => k.use === 'jwt-svid').map((k) => k.kid)).toContain(next.jwtKid);
      expect(b.broker.ca.authorityId).toBe(first);
      // Nothing pending any more.
      const twice = await b.call({ path: '/v1/admin/ca/import', body: { reason: 'again', certificatePem: readFileSync(f('next.pem'), 'utf8') }, ...as(op) });
      expect([twice.status, twice.json.error]).toEqual([409, 'ca_state_conflict']);

      const activated = await cli(b, op, 'activate', '--reason', 'CHG-1 switch');
      expect(activated.code, activated.stderr).toBe(0);
      expect(b.broker.ca.authorityId).toBe(next.id);

      // An SVID from the new CA: leaf and the new CA; openssl verifies it to the root.
      const svid = await b.call<{ certificates: string[] }>({ path: '/v1/svid/x509', token: await b.token(), body: { keyType: 'ec-p256' } });
      expect(svid.status).toBe(200);
      expect(svid.json.certificates).toHaveLength(2);
      const [leaf, signer] = svid.json.certificates.map((p) => new X509Certificate(p));
      expect(signer?.raw.equals(new X509Certificate(readFileSync(f('next.pem'))).raw)).toBe(true);
      expect(leaf?.checkIssued(signer as X509Certificate)).toBe(true);
      writeFileSync(f('leaf.pem'), svid.json.certificates[0] as string);
      writeFileSync(f('untrusted.pem'), svid.json.certificates.slice(1).join(''));
      expect((await openssl('verify', '-CAfile', rootPem, '-untrusted', f('untrusted.pem'), f('leaf.pem'))).trim()).toBe(`${f('leaf.pem')}: OK`);

      // Audited: who prepared, imported (and was refused), activated; the rotation steps.
      const entries = (await auditEntries(b)).map((e) => e.entry);
      const admin = (action: string): string[] => entries.filter((e) => e.type === 'admin' && e.action === action).map((e) => `${String(e.actor)} ${e.decision}`);
      expect(admin('ca.prepare')).toEqual([`${AUDITOR} deny`, `${OPERATOR} allow`, `${OPERATOR} allow`]);
      expect(admin('ca.import').filter((d) => d.endsWith('allow'))).toEqual([`${OPERATOR} allow`]);
      expect(admin('ca.import').filter((d) => d.endsWith('deny')).length).toBe(13);
      expect(entries.filter((e) => e.type === 'ca.rotated').map((e) => e.action)).toEqual(['prepare', 'activate']);
    } finally {
      await b.close();
    }
  }, 120_000);
});
