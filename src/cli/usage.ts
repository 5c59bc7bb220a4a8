/** A mistake in how the CLI was called: printed with the usage text, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export const USAGE = `usage: tessera <command> [options]

commands:
  serve [--config FILE]            run the broker (no config: dev defaults, https://127.0.0.1:8443)
  dev token --namespace NS --service-account SA [--pod NAME] [--audience AUD] [--ttl SECONDS]
                                   print a dev Kubernetes-style service-account token
  dev certs                        create the dev CA, TLS and issuer material under certs-dev/
`;
