/** A mistake in how the CLI was called: printed with the usage text, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A command that ran and failed (a refusal from the broker, a failed check): printed, exit code 1. */
export class CommandFailed extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CommandFailed';
  }
}

export const USAGE = `usage: tessera <command> [options]

commands:
  serve [--config FILE] [--workers N|auto]
                                   run the broker (no config: dev defaults, https://127.0.0.1:8443);
                                   N > 1: N replicas share the port (node:cluster); needs store.redis
  dev token --namespace NS --service-account SA [--pod NAME] [--audience AUD] [--ttl SECONDS]
                                   print a dev Kubernetes-style service-account token
  dev certs                        create the dev CA, TLS and issuer material under certs-dev/
  secrets put NAME --from-file FILE [--config FILE]
                                   store a static secret, encrypted (AES-256-GCM envelope) in the store
                                   (embedded store: stop the broker first)
  secrets rotate-kek --new-kek-file FILE [--config FILE]
                                   re-wrap every secret's data key under a new KEK (FILE is created if missing)
  audit verify --log DIR|URL --key FILE [--cacert PEM] [--admin-cert PEM --admin-key KEY]
               [--reference URL] [--json]
                                   check an audit log offline: every entry, root, checkpoint signature
                                   and consistency (exit 1 naming the first bad index). A URL without
                                   an auditor's --admin-cert is checked by its public leaf hashes only;
                                   --reference URL names the exact bad entry of an export DIR
  audit export --out DIR [--config FILE | --log URL [--cacert PEM] --admin-cert PEM --admin-key KEY]
                                   write the log as entries.jsonl + checkpoints.txt + manifest.json
                                   (stop the broker first when reading an embedded store)
  audit search [--config FILE | --log DIR|URL [--cacert PEM --admin-cert PEM --admin-key KEY]] [--spiffe-id ID] [--serial S]
               [--since T] [--until T] [--type TYPE] [--decision allow|deny] [--namespace NS]
               [--limit N] [--start INDEX]
                                   print matching entries as JSON lines (T: ISO-8601, ms, or 15m/2h/7d ago)
  audit recover --from DIR --key FILE [--config FILE]
                                   re-seed an EMPTY store (Redis that lost its data) from a verified export;
                                   stop every replica first, restart them after (docs/redis.md)
  agent --broker URL --bundle FILE --token-file FILE --out DIR [--once] [--jwt-audience AUD ...]
        [--on-rotate CMD] [--health-port N] [--deadline SECONDS]
                                   write and rotate this workload's SVID files (init container or sidecar;
                                   tessera agent --help for details)
  admin cert --id spiffe://TD/admin/NAME --out DIR [--ttl 8h] [--config FILE | --ca-cert F --ca-key F]
                                   an admin client certificate from the admin CA (the ID needs roles in
                                   admin.principals)
  break-glass init --out DIR [--count N] [--prefix bg]
                                   make break-glass Ed25519 key pairs: private keys to DIR (0600, move
                                   them offline), the public keys as a config snippet on stdout
  break-glass request --key FILE [--key FILE ...] --reason TEXT --ticket ID
                      --grant auditor|operator|secrets-admin|secret:NAME [--ttl 15m]
                      [--trust-domain TD | --config FILE] [--out FILE]
                                   sign an emergency request (valid 5 minutes, single use)
  break-glass cosign --in FILE --key FILE [--out FILE]
                                   add a second signature (two-person rule)
  break-glass use --request FILE --url URL --cacert FILE --out DIR
                                   redeem a request: writes admin.pem/admin.key (or secret) to DIR
                                   (docs/admin-breakglass.md has the runbook)
`;
