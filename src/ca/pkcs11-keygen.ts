/**
 * EC P-256 key pairs made INSIDE a PKCS#11 token, for the authorities CA rotation prepares (rotation.ts,
 * through keys.ts): the private key is generated sensitive and never extractable, so it never exists
 * outside the token.
 *
 * Crash-safe and idempotent: the caller names the pair after the step it is for (a deterministic
 * label), and `generateOrReuseKeyPair` first looks for that label. A broker killed between making the
 * pair and writing the CA state restarts into the same step, finds the pair and uses it, instead of
 * leaving an orphan and making a second one. Half a pair (a crash inside C_GenerateKeyPair on a token
 * that stores the halves one by one) cannot have been certified or used: it is destroyed and made again.
 * The pair found is checked by Pkcs11Signer.open like any configured key (sensitive, not extractable,
 * may sign, the two halves belong together by a probe signature), and must be EC P-256, what this
 * module makes.
 */
import { createHash } from 'node:crypto';
import type Pkcs11Module from 'pkcs11js';
import {
  describe,
  findObjects,
  findSlot,
  loadBinding,
  loadModule,
  login,
  Pkcs11KeyError,
  Pkcs11Signer,
  readPinFile,
  unloadModule,
  type Pkcs11KeyRef,
} from './pkcs11-signer.js';

/** DER OID of prime256v1 (CKA_EC_PARAMS of a P-256 key). */
const P256_PARAMS = Buffer.from('06082a8648ce3d030107', 'hex');

interface Session {
  readonly lib: Pkcs11Module.PKCS11;
  readonly p11: typeof Pkcs11Module;
  readonly session: Buffer;
}

/** Runs `fn` in a logged-in read-write session of `ref`'s token, then closes it and releases the module. */
async function withSession<T>(ref: Pkcs11KeyRef, fn: (s: Session) => Promise<T> | T): Promise<T> {
  const pin = readPinFile(ref.pinFile);
  const p11 = await loadBinding();
  const { lib } = loadModule(ref.module);
  let session: Buffer | undefined;
  try {
    session = lib.C_OpenSession(findSlot(lib, ref), p11.CKF_SERIAL_SESSION | p11.CKF_RW_SESSION);
    login(lib, session, ref, pin);
    return await fn({ lib, p11, session });
  } catch (err) {
    if (err instanceof Pkcs11KeyError) throw err;
    throw new Pkcs11KeyError(`key "${ref.keyLabel}" in token "${ref.tokenLabel}": ${describe(err)}`);
  } finally {
    if (session !== undefined) {
      try {
        lib.C_CloseSession(session);
      } catch {
        // closing is best effort; the module release below ends it anyway
      }
    }
    unloadModule(ref.module);
  }
}

/** The private and public key objects labelled `ref.keyLabel`. */
function pairObjects({ lib, p11, session }: Session, label: string): { privateKeys: Buffer[]; publicKeys: Buffer[] } {
  return { privateKeys: findObjects(lib, session, p11.CKO_PRIVATE_KEY, label), publicKeys: findObjects(lib, session, p11.CKO_PUBLIC_KEY, label) };
}

/** CKA_ID of a generated pair: derived from its label, so both halves and a retry agree. */
const pairId = (label: string): Buffer => createHash('sha256').update(label, 'utf8').digest().subarray(0, 20);

async function generatePair({ lib, p11, session }: Session, label: string): Promise<void> {
  const id = pairId(label);
  await lib.C_GenerateKeyPairAsync(
    session,
    { mechanism: p11.CKM_EC_KEY_PAIR_GEN },
    [
      { type: p11.CKA_CLASS, value: p11.CKO_PUBLIC_KEY },
      { type: p11.CKA_KEY_TYPE, value: p11.CKK_EC },
      { type: p11.CKA_TOKEN, value: true },
      { type: p11.CKA_PRIVATE, value: false },
      { type: p11.CKA_VERIFY, value: true },
      // Only what the key is for: tokens default some of these to true.
      { type: p11.CKA_ENCRYPT, value: false },
      { type: p11.CKA_WRAP, value: false },
      { type: p11.CKA_EC_PARAMS, value: P256_PARAMS },
      { type: p11.CKA_LABEL, value: label },
      { type: p11.CKA_ID, value: id },
    ],
    [
      { type: p11.CKA_CLASS, value: p11.CKO_PRIVATE_KEY },
      { type: p11.CKA_KEY_TYPE, value: p11.CKK_EC },
      { type: p11.CKA_TOKEN, value: true },
      { type: p11.CKA_PRIVATE, value: true },
      { type: p11.CKA_SENSITIVE, value: true },
      { type: p11.CKA_EXTRACTABLE, value: false },
      { type: p11.CKA_SIGN, value: true },
      { type: p11.CKA_DECRYPT, value: false },
      { type: p11.CKA_UNWRAP, value: false },
      { type: p11.CKA_DERIVE, value: false },
      { type: p11.CKA_LABEL, value: label },
      { type: p11.CKA_ID, value: id },
    ],
  );
}

/**
 * The EC P-256 key pair labelled `ref.keyLabel`, opened as a Signer: the one already in the token (a
 * retry of the same step), or a new one generated there. `created` says which.
 */
export async function generateOrReuseKeyPair(ref: Pkcs11KeyRef): Promise<{ readonly signer: Pkcs11Signer; readonly created: boolean }> {
  const created = await withSession(ref, async (s) => {
    const { privateKeys, publicKeys } = pairObjects(s, ref.keyLabel);
    if (privateKeys.length > 1 || publicKeys.length > 1) {
      throw new Pkcs11KeyError(`more than one key pair labelled "${ref.keyLabel}" in token "${ref.tokenLabel}"; Tessera made at most one: remove the others by hand`);
    }
    if (privateKeys.length === 1 && publicKeys.length === 1) return false;
    // Half a pair: it never signed and was never certified (both need the whole pair).
    for (const half of [...privateKeys, ...publicKeys]) s.lib.C_DestroyObject(s.session, half);
    await generatePair(s, ref.keyLabel);
    return true;
  });
  const signer = await Pkcs11Signer.open(ref);
  if (signer.algorithm !== 'ES256') {
    signer.close();
    throw new Pkcs11KeyError(`the key pair labelled "${ref.keyLabel}" in token "${ref.tokenLabel}" is not EC P-256, so Tessera did not make it: remove it by hand`);
  }
  return { signer, created };
}

/** Destroys the key pair labelled `ref.keyLabel` (both halves, whatever is left of them); returns how many objects went. */
export async function destroyKeyPair(ref: Pkcs11KeyRef): Promise<number> {
  return withSession(ref, (s) => {
    const { privateKeys, publicKeys } = pairObjects(s, ref.keyLabel);
    for (const object of [...privateKeys, ...publicKeys]) s.lib.C_DestroyObject(s.session, object);
    return privateKeys.length + publicKeys.length;
  });
}

/** How many private and public key objects carry `ref.keyLabel` (for status and tests). */
export async function countKeyObjects(ref: Pkcs11KeyRef): Promise<{ readonly privateKeys: number; readonly publicKeys: number }> {
  return withSession(ref, (s) => {
    const { privateKeys, publicKeys } = pairObjects(s, ref.keyLabel);
    return { privateKeys: privateKeys.length, publicKeys: publicKeys.length };
  });
}
