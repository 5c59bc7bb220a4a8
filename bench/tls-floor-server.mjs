// A bare Node HTTPS server with the broker's TLS settings (the same certificate, client certificates
// requested and checked against the same roots, TLS 1.2+) that does no application work: it reads the
// body and answers a fixed 200 JSON. What it costs per request and per new connection is Node's and
// OpenSSL's floor, under any server written on them (bench/tls-floor.mjs).
import https from 'node:https';
import { readFileSync } from 'node:fs';

const [certFile, keyFile, caFile] = process.argv.slice(2);
const answer = Buffer.from('{"ok":true}');
const server = https.createServer(
  { cert: readFileSync(certFile), key: readFileSync(keyFile), ca: readFileSync(caFile), requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' },
  (req, res) => {
    // The client certificate the broker would judge: read once per connection by Node, as there.
    const authorized = req.socket.authorized;
    req.resume();
    req.on('end', () => {
      res.writeHead(authorized ? 200 : 401, { 'content-type': 'application/json', 'content-length': answer.length });
      res.end(answer);
    });
  },
);
server.keepAliveTimeout = 65_000;
server.listen(0, '127.0.0.1', () => console.log(`listening on https://127.0.0.1:${server.address().port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
