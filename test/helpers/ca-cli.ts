/** `tessera ca …` as a real process against a test broker, with an admin certificate (ca-admin and ca-offline-root suites). */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { writeClientCert, type ClientCert } from './admin.js';
import { CLI } from './broker-process.js';
import { devMaterial, type TestBroker } from './broker.js';

const run = promisify(execFile);

/** The admin with the operator role in these suites (and auditor), and one who is only an auditor. */
export const OPERATOR = 'spiffe://example.org/admin/dev';
export const AUDITOR = 'spiffe://example.org/admin/alice';
export const CA_PRINCIPALS = [
  { id: OPERATOR, roles: ['auditor', 'operator'] },
  { id: AUDITOR, roles: ['auditor'] },
] as const;

/** A client certificate as TestBroker.call options. */
export const as = (c: ClientCert): { cert: string; key: string } => ({ cert: c.cert, key: c.key });

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `tessera ca <args>` against `b`, the admin certificate written to files in `work`; resolves with exit code and output. */
export async function caCli(work: string, b: TestBroker, c: ClientCert, ...args: string[]): Promise<CliResult> {
  const files = writeClientCert(work, `admin-${Math.random().toString(36).slice(2)}`, c);
  const { dir: pkiDir } = await devMaterial();
  try {
    const r = await run(process.execPath, [CLI, 'ca', ...args, '--url', b.url, '--cacert', path.join(pkiDir, 'bundle.pem'), '--admin-cert', files.certFile, '--admin-key', files.keyFile]);
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as CliResult;
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}
