/**
 * A minting thread (see minter-pool.ts): builds its own CertificateAuthority from the PEMs the broker
 * loaded, then answers batches of mint jobs with `mintX509Svid`, the same code the inline minter runs.
 * A BrokerError (invalid_csr, weak_key, ...) goes back as its code and message (the status follows from the code).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { BrokerError } from '../errors.js';
import { CertificateAuthority } from './authority.js';
import { mintX509Svid } from './minter.js';
import type { MintJob, MintResult, ThreadCommand, ThreadInit, ThreadMessage } from './minter-pool.js';

const port = parentPort;
if (port === null) throw new Error('minter-worker.js runs only as a worker thread (ca/minter-pool.ts)');

let ca = CertificateAuthority.fromPem((workerData as ThreadInit).ca);

async function run(job: MintJob): Promise<MintResult> {
  try {
    return { id: job.id, ok: true, value: await mintX509Svid(ca, job.req) };
  } catch (err) {
    if (err instanceof BrokerError) return { id: job.id, ok: false, error: { code: err.code, message: err.message } };
    return { id: job.id, ok: false, error: { code: 'internal', message: `minting failed: ${err instanceof Error ? err.message : String(err)}` } };
  }
}

// Each answer goes back as soon as it is ready: holding a batch's answers until its last job would make
// the event loop idle while this thread works, and this thread idle while the event loop catches up.
let done: Promise<void> = Promise.resolve();
port.on('message', (command: ThreadCommand) => {
  // A new CA (rotation) takes effect in order: after the jobs received before it, for every job after it.
  if (!Array.isArray(command)) {
    const next = (command as Exclude<ThreadCommand, readonly MintJob[]>).ca;
    done = done.then(() => {
      try {
        ca = CertificateAuthority.fromPem(next);
      } catch {
        // The broker built this CA from the same PEMs before sending it; keep the current one rather than stop.
      }
    });
    return;
  }
  const jobs = command as readonly MintJob[];
  done = done.then(async () => {
    for (const job of jobs) port.postMessage({ type: 'results', results: [await run(job)] } satisfies ThreadMessage);
  });
});
port.postMessage({ type: 'ready' } satisfies ThreadMessage);
