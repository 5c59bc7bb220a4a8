/**
 * A private SoftHSM2 token for PKCS#11 tests (Debian's softhsm2; opensc's pkcs11-tool makes the keys):
 * its own softhsm2.conf and token folder in a temp dir, never the system's tokens. SoftHSM2 reads
 * SOFTHSM2_CONF when the module is initialised, so `createToken` sets it in this process's
 * environment (vitest runs each file in its own process) and every token of a file shares one folder.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createPublicKey, type KeyObject } from 'node:crypto';
import { expect, it } from 'vitest';
import { inCi } from './redis.js';

const MODULES = ['/usr/lib/softhsm/libsofthsm2.so', '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so', '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so'];

export function softhsmModule(): string | undefined {
  return MODULES.find((m) => existsSync(m));
}

const tool = (bin: string): boolean => spawnSync(bin, ['--help'], { encoding: 'utf8' }).error === undefined;

/** Why PKCS#11 tests cannot run here, or undefined when softhsm2 and pkcs11-tool are installed. */
export function softhsmMissing(): string | undefined {
  if (softhsmModule() === undefined) return 'libsofthsm2.so not found (apt-get install softhsm2)';
  if (!tool('softhsm2-util')) return 'softhsm2-util not found (apt-get install softhsm2)';
  if (!tool('pkcs11-tool')) return 'pkcs11-tool not found (apt-get install opensc)';
  return undefined;
}

/** A test that passes when SoftHSM2 is installed, and fails under CI=true when not. */
export function softhsmRequiredUnderCi(): void {
  const missing = softhsmMissing();
  it(`softhsm2 and pkcs11-tool are installed${inCi ? ' (required: CI=true)' : ' (or these suites are skipped)'}`, () => {
    if (inCi) expect(missing, `CI=true but ${missing ?? ''}`).toBeUndefined();
    else if (missing !== undefined) console.warn(`[softhsm] skipped: ${missing}`);
  });
}

export const USER_PIN = '246810';
const SO_PIN = '13579111';

export type TokenKeyType = 'EC:prime256v1' | 'EC:secp384r1' | 'EC:secp256k1' | 'EC:edwards25519' | 'rsa:2048' | 'rsa:1024';

export interface TestToken {
  readonly module: string;
  readonly label: string;
  readonly dir: string;
  /** chmod 600 file holding USER_PIN. */
  readonly pinFile: string;
  /** The config mapping for a key of this token. */
  pkcs11(keyLabel: string): { module: string; tokenLabel: string; pinFile: string; keyLabel: string };
  /** Generates a key pair IN the token (sensitive, never extractable); returns its public key as pkcs11-tool reads it. */
  generate(keyLabel: string, type: TokenKeyType, opts?: { extractable?: boolean }): KeyObject;
  /** Removes the token folder. */
  remove(): void;
}

let root: string | undefined;

function run(bin: string, args: readonly string[]): string {
  const r = spawnSync(bin, args, { encoding: 'utf8', env: process.env });
  if (r.status !== 0) throw new Error(`${bin} ${args.join(' ')} failed: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** Initialises a fresh token labelled `label` in this file's SoftHSM2 folder. */
export function createToken(label: string): TestToken {
  const module = softhsmModule();
  if (module === undefined) throw new Error('softhsm2 is not installed');
  if (root === undefined) {
    root = mkdtempSync(path.join(tmpdir(), 'tessera-softhsm-'));
    mkdirSync(path.join(root, 'tokens'));
    writeFileSync(path.join(root, 'softhsm2.conf'), `directories.tokendir = ${path.join(root, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    process.env.SOFTHSM2_CONF = path.join(root, 'softhsm2.conf');
  }
  const dir = root;
  run('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', USER_PIN, '--so-pin', SO_PIN]);
  const pinFile = path.join(dir, `${label}.pin`);
  writeFileSync(pinFile, `${USER_PIN}\n`, { mode: 0o600 });
  chmodSync(pinFile, 0o600);
  const base = ['--module', module, '--token-label', label, '--login', '--pin', USER_PIN];
  let nextId = 1;
  return {
    module,
    label,
    dir,
    pinFile,
    pkcs11: (keyLabel) => ({ module, tokenLabel: label, pinFile, keyLabel }),
    generate: (keyLabel, type, opts = {}) => {
      const id = (nextId++).toString(16).padStart(2, '0');
      run('pkcs11-tool', [...base, '--keypairgen', '--key-type', type, '--label', keyLabel, '--id', id, '--usage-sign', ...(opts.extractable ? ['--extractable'] : [])]);
      const der = path.join(dir, `${label}-${keyLabel}.pub.der`);
      if (type === 'EC:secp384r1') {
        // pkcs11-tool cannot export P-384 public keys ("cannot create EVP_PKEY"): its listing shows the point.
        const point = /EC_POINT:\s+04[0-9a-f]{2}(04[0-9a-f]{192})/.exec(run('pkcs11-tool', [...base, '--list-objects', '--type', 'pubkey', '--label', keyLabel]))?.[1];
        if (point === undefined) throw new Error(`no P-384 point listed for ${keyLabel}`);
        const spki = Buffer.concat([Buffer.from('3076301006072a8648ce3d020106052b81040022036200', 'hex'), Buffer.from(point, 'hex')]);
        return createPublicKey({ key: spki, format: 'der', type: 'spki' });
      }
      run('pkcs11-tool', [...base, '--read-object', '--type', 'pubkey', '--label', keyLabel, '--output-file', der]);
      // DER SubjectPublicKeyInfo for EC and RSA; pkcs11-tool writes PEM for Ed25519.
      const raw = readFileSync(der);
      return raw.subarray(0, 5).toString() === '-----' ? createPublicKey(raw.toString('utf8')) : createPublicKey({ key: raw, format: 'der', type: 'spki' });
    },
    remove: () => {
      spawnSync('softhsm2-util', ['--delete-token', '--token', label], { encoding: 'utf8', env: process.env });
    },
  };
}

/** Removes the SoftHSM2 folder of this file (afterAll). */
export function removeTokens(): void {
  if (root !== undefined) rmSync(root, { recursive: true, force: true });
}
