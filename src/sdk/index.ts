/**
 * `tessera/sdk`: the Node client for workloads. See docs/agent-sdk.md for a complete example.
 *
 *   import { TesseraClient } from 'tessera/sdk';
 *   const client = new TesseraClient({ broker, bundleFile, tokenFile });
 *   await client.start();
 */
export {
  TesseraClient,
  type ClientStatus,
  type CredentialPath,
  type JwtSvid,
  type PeerCheck,
  type RotatedEvent,
  type Secret,
  type SpiffeBundleDocument,
  type TesseraClientEvents,
  type TesseraClientOptions,
  type X509Svid,
} from './client.js';
export { CheckpointWatch, type CheckpointWatchOptions, type HeldCheckpoint, type InconsistentEvent, type Observation } from './checkpoints.js';
export { TesseraError, type ClientErrorCode } from './errors.js';
export { RotatingAgent, chainOf, type CredentialSource } from './rotating-agent.js';
export type { BackoffOptions } from './timing.js';
export { parsePemCertificates, spiffeIdOf, splitPem, verifySvid, type VerifiedSvid } from './x509.js';
