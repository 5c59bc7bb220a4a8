import type { ServerResponse } from 'node:http';

/** Answers with `body` as JSON: the stand-in servers (Kubernetes API, OIDC discovery) of the tests. */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
