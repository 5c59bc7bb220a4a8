/**
 * The deployment files, checked without a cluster or a Docker daemon (neither is available here):
 * deploy/k8s/*.yaml parsed and cross-checked (kinds, required fields, selectors, the projected token
 * audience, the agent as init container and native sidecar, non-root everywhere; the broker's
 * ConfigMap through the real config loader; the agent arguments through the real flag parser), and
 * the Dockerfile's key properties (multi-stage, non-root, no dev keys).
 */
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { parseAgentFlags } from '../../src/cli/agent.js';
import { loadConfig } from '../../src/config/load.js';

type Obj = Record<string, unknown>;
const K8S = path.resolve('deploy/k8s');

const API_VERSIONS: Record<string, string> = {
  Namespace: 'v1',
  ServiceAccount: 'v1',
  ConfigMap: 'v1',
  Service: 'v1',
  Deployment: 'apps/v1',
  PodDisruptionBudget: 'policy/v1',
  NetworkPolicy: 'networking.k8s.io/v1',
};

interface Doc {
  file: string;
  kind: string;
  name: string;
  namespace?: string;
  body: Obj;
}

function load(): Doc[] {
  const docs: Doc[] = [];
  for (const file of readdirSync(K8S).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const d of parseAllDocuments(readFileSync(path.join(K8S, file), 'utf8'))) {
      expect(d.errors, file).toEqual([]);
      expect(d.warnings, file).toEqual([]);
      const body = d.toJS() as Obj | null;
      if (body === null) continue;
      const meta = body.metadata as Obj | undefined;
      docs.push({
        file,
        kind: String(body.kind),
        name: String(meta?.name),
        ...(typeof meta?.namespace === 'string' ? { namespace: meta.namespace } : {}),
        body,
      });
    }
  }
  return docs;
}

const docs = load();
const find = (kind: string, name: string): Doc => {
  const d = docs.find((x) => x.kind === kind && x.name === name);
  if (d === undefined) throw new Error(`no ${kind} ${name} in deploy/k8s`);
  return d;
};
const podSpec = (d: Doc): Obj => ((d.body.spec as Obj).template as Obj).spec as Obj;
const containers = (spec: Obj): Obj[] => [...((spec.initContainers as Obj[] | undefined) ?? []), ...(spec.containers as Obj[])];
const volumes = (spec: Obj): Obj[] => (spec.volumes as Obj[] | undefined) ?? [];
const mountOf = (c: Obj, volume: string): Obj | undefined => ((c.volumeMounts as Obj[] | undefined) ?? []).find((m) => m.name === volume);

describe('deploy/k8s manifests', () => {
  it('are well-formed Kubernetes objects with the required fields and unique names', () => {
    expect(docs.length).toBeGreaterThanOrEqual(10);
    const seen = new Set<string>();
    for (const d of docs) {
      const where = `${d.file} ${d.kind}/${d.name}`;
      expect(API_VERSIONS[d.kind], `${where}: unexpected kind`).toBeDefined();
      expect(d.body.apiVersion, where).toBe(API_VERSIONS[d.kind]);
      expect(d.name, where).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
      if (d.kind !== 'Namespace') expect(d.namespace, `${where}: namespace`).toMatch(/^[a-z0-9-]+$/);
      const key = `${d.kind}/${d.namespace ?? ''}/${d.name}`;
      expect(seen.has(key), `${where}: duplicate`).toBe(false);
      seen.add(key);
      if (d.kind === 'Deployment') {
        const spec = d.body.spec as Obj;
        const selector = (spec.selector as Obj).matchLabels as Record<string, string>;
        const labels = ((spec.template as Obj).metadata as Obj).labels as Record<string, string>;
        for (const [k, v] of Object.entries(selector)) expect(labels[k], `${where}: selector ${k}`).toBe(v);
        for (const c of containers(podSpec(d))) {
          expect(c.name, where).toBeTypeOf('string');
          expect(c.image, `${where}: image`).toMatch(/^[a-z0-9./-]+(:[A-Za-z0-9._-]+)$/);
          expect(String(c.image), `${where}: pinned tag`).not.toMatch(/:latest$/);
          for (const m of (c.volumeMounts as Obj[] | undefined) ?? []) {
            expect(volumes(podSpec(d)).some((v) => v.name === m.name), `${where}: mount ${String(m.name)} has a volume`).toBe(true);
          }
        }
      }
    }
    for (const ns of new Set(docs.map((d) => d.namespace).filter((n) => n !== undefined))) {
      expect(docs.some((d) => d.kind === 'Namespace' && d.name === ns), `namespace ${ns} is created`).toBe(true);
    }
  });

  it('run every pod as non-root, without privilege escalation, with all capabilities dropped', () => {
    for (const d of docs.filter((x) => x.kind === 'Deployment')) {
      const spec = podSpec(d);
      const podSc = (spec.securityContext ?? {}) as Obj;
      expect(podSc.runAsNonRoot, `${d.name}: pod runAsNonRoot`).toBe(true);
      expect(podSc.runAsUser, `${d.name}: numeric non-root user`).toBeGreaterThan(0);
      expect((podSc.seccompProfile as Obj | undefined)?.type).toBe('RuntimeDefault');
      for (const c of containers(spec)) {
        const sc = (c.securityContext ?? {}) as Obj;
        const where = `${d.name}/${String(c.name)}`;
        expect(sc.runAsNonRoot ?? podSc.runAsNonRoot, where).toBe(true);
        expect(sc.runAsUser ?? podSc.runAsUser, where).not.toBe(0);
        expect(sc.allowPrivilegeEscalation, where).toBe(false);
        expect(sc.privileged ?? false, where).toBe(false);
        expect(sc.readOnlyRootFilesystem, where).toBe(true);
        expect((sc.capabilities as Obj | undefined)?.drop, where).toEqual(['ALL']);
      }
    }
  });

  it('broker: 2 replicas behind a Service, Redis for shared state, a ConfigMap the real loader accepts', () => {
    const deployment = find('Deployment', 'tessera');
    expect(deployment.namespace).toBe('tessera');
    expect((deployment.body.spec as Obj).replicas).toBe(2);
    const spec = podSpec(deployment);
    const broker = (spec.containers as Obj[]).find((c) => c.name === 'tessera') as Obj;
    expect(broker.args).toEqual(['serve', '--config', '/etc/tessera/config/tessera.yaml']);
    const port = (broker.ports as Obj[]).find((p) => p.name === 'https') as Obj;
    expect(((broker.env as Obj[]).find((e) => e.name === 'TESSERA_REPLICA_ID')?.valueFrom as Obj).fieldRef).toEqual({ fieldPath: 'metadata.name' });
    expect(((broker.readinessProbe as Obj).httpGet as Obj).path).toBe('/readyz');

    const service = find('Service', 'tessera');
    expect((service.body.spec as Obj).selector).toEqual(((deployment.body.spec as Obj).selector as Obj).matchLabels);
    expect((service.body.spec as Obj).ports).toEqual([{ name: 'https', port: 8443, targetPort: 'https' }]);

    // The ConfigMap is mounted where --config points, and is a valid production config.
    const configVolume = volumes(spec).find((v) => (v.configMap as Obj | undefined)?.name === 'tessera-config') as Obj;
    expect(mountOf(broker, String(configVolume.name))?.mountPath).toBe('/etc/tessera/config');
    const yamlText = (find('ConfigMap', 'tessera-config').body.data as Record<string, string>)['tessera.yaml'] as string;
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-deploy-'));
    writeFileSync(path.join(dir, 'tessera.yaml'), yamlText);
    const config = loadConfig({ file: path.join(dir, 'tessera.yaml'), env: {} });
    expect(config.dev).toBe(false);
    expect(config.listen).toEqual({ host: '0.0.0.0', port: port.containerPort });
    // Every file the config names is under a mounted volume; keys come from the 0600 copy.
    const mounts = ((broker.volumeMounts as Obj[]) ?? []).map((m) => String(m.mountPath));
    for (const file of [config.tls.certFile, config.tls.keyFile, config.ca.certFile, config.ca.keyFile, config.ca.bundleFile, config.ca.jwtKeyFile, config.issuers[0]?.jwksFile ?? '']) {
      expect(mounts.some((m) => file.startsWith(`${m}/`)), file).toBe(true);
    }
    expect(mountOf(broker, 'pki')?.mountPath).toBe('/etc/tessera/pki');
    const keys = (spec.initContainers as Obj[]).find((c) => c.name === 'keys') as Obj;
    expect(String((keys.command as string[]).join(' '))).toMatch(/chmod 0600 \/etc\/tessera\/pki\/\*\.key/);
    expect(volumes(spec).find((v) => v.name === 'pki')?.emptyDir).toEqual({ medium: 'Memory' });
    expect(config.issuers[0]).toMatchObject({ issuer: 'https://kubernetes.default.svc.cluster.local', audiences: ['tessera'], requirePodBinding: true });

    // …and points at the Redis Service, which selects the Redis pods.
    const redis = find('Deployment', 'tessera-redis');
    const redisService = find('Service', 'tessera-redis');
    expect((redisService.body.spec as Obj).selector).toEqual(((redis.body.spec as Obj).selector as Obj).matchLabels);
    const redisPort = ((redisService.body.spec as Obj).ports as Obj[])[0] as Obj;
    expect(config.store.redis?.url).toBe(`redis://${redisService.name}.${redisService.namespace}.svc:${String(redisPort.port)}`);
    const policy = find('NetworkPolicy', 'tessera-redis');
    expect(JSON.stringify((policy.body.spec as Obj).ingress)).toContain('"app.kubernetes.io/name":"tessera"');
  });

  it('workload: projected token for audience "tessera", the agent as init container (--once) and native sidecar', () => {
    const web = find('Deployment', 'web');
    const spec = podSpec(web);
    expect(spec.serviceAccountName).toBe('web');
    expect(spec.automountServiceAccountToken).toBe(false);
    expect(docs.some((d) => d.kind === 'ServiceAccount' && d.name === 'web' && d.namespace === web.namespace)).toBe(true);

    const tokenVolume = volumes(spec).find((v) => v.projected !== undefined) as Obj;
    const source = (((tokenVolume.projected as Obj).sources as Obj[])[0] as Obj).serviceAccountToken as Obj;
    expect(source.audience).toBe('tessera');
    expect(source.expirationSeconds).toBeGreaterThanOrEqual(600); // Kubernetes' minimum
    const svidVolume = volumes(spec).find((v) => v.name === 'svid') as Obj;
    expect((svidVolume.emptyDir as Obj).medium).toBe('Memory');

    const inits = spec.initContainers as Obj[];
    const agents = inits.map((c) => ({ c, opts: parseAgentFlags((c.args as string[]).slice(1)) }));
    for (const { c } of agents) expect((c.args as string[])[0]).toBe('agent');
    const init = agents.find((a) => a.opts.once);
    const sidecar = agents.find((a) => !a.opts.once);
    expect(init, 'an init container with --once').toBeDefined();
    expect(sidecar, 'a sidecar agent').toBeDefined();
    // Order matters: the one-shot init container first, then the sidecar, then the app.
    expect(inits.indexOf(init?.c as Obj)).toBeLessThan(inits.indexOf(sidecar?.c as Obj));
    expect(init?.c.restartPolicy).toBeUndefined();
    expect(sidecar?.c.restartPolicy).toBe('Always'); // native sidecar
    expect(sidecar?.opts.healthPort).toBeDefined();
    expect(JSON.stringify(sidecar?.c.startupProbe)).toContain(`127.0.0.1:${String(sidecar?.opts.healthPort)}/healthz`);
    for (const { c, opts } of [init, sidecar] as { c: Obj; opts: ReturnType<typeof parseAgentFlags> }[]) {
      expect(opts.broker).toBe('https://tessera.tessera.svc:8443');
      const tokenMount = mountOf(c, String(tokenVolume.name)) as Obj;
      expect(opts.tokenFile).toBe(`${String(tokenMount.mountPath)}/${String(source.path)}`);
      expect(mountOf(c, 'svid')?.mountPath).toBe(opts.outDir);
      const bundleVolume = volumes(spec).find((v) => (v.configMap as Obj | undefined)?.name === 'tessera-bundle') as Obj;
      expect(opts.bundleFile.startsWith(`${String(mountOf(c, String(bundleVolume.name))?.mountPath)}/`)).toBe(true);
      expect(opts.jwtAudiences).toEqual(['payments']);
    }
    // The app reads the files, read-only, from the same volume.
    const app = (spec.containers as Obj[])[0] as Obj;
    expect(mountOf(app, 'svid')).toMatchObject({ mountPath: '/run/tessera', readOnly: true });
    expect(JSON.stringify(app.env)).toContain('/run/tessera/svid.key');
  });
});

describe('Dockerfile', () => {
  const text = readFileSync('Dockerfile', 'utf8');
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  const stages: { name: string; lines: string[] }[] = [];
  for (const l of lines) {
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?$/i.exec(l);
    if (from) stages.push({ name: from[2] ?? from[1] ?? '', lines: [] });
    else stages.at(-1)?.lines.push(l);
  }
  const runtime = stages.at(-1) as { name: string; lines: string[] };

  it('is multi-stage: builds with npm ci + npm run build, ships production dependencies and dist/ only', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const build = stages[0] as { name: string; lines: string[] };
    expect(build.lines.some((l) => /^RUN npm ci\b/.test(l))).toBe(true);
    expect(build.lines.some((l) => /^RUN npm run build\b/.test(l))).toBe(true);
    expect(runtime.lines.some((l) => /^RUN npm ci .*--omit=dev/.test(l))).toBe(true);
    expect(runtime.lines).toContain(`COPY --from=${build.name} /src/dist ./dist`);
    expect(runtime.lines.some((l) => /^ENTRYPOINT \["node", "\/app\/dist\/cli\/main\.js"\]$/.test(l))).toBe(true);
    // Nothing is copied wholesale from the build context into the runtime image.
    expect(runtime.lines.filter((l) => /^COPY\s+(\.|\.\/)\s/.test(l))).toEqual([]);
  });

  it('runs as a numeric non-root user', () => {
    const users = runtime.lines.filter((l) => l.startsWith('USER '));
    expect(users.length).toBeGreaterThanOrEqual(1);
    const user = (users.at(-1) as string).slice(5).split(':')[0] as string;
    expect(user).toMatch(/^\d+$/);
    expect(Number(user)).toBeGreaterThan(0);
  });

  it('never puts dev keys or local state in the image', () => {
    for (const l of lines.filter((x) => /^(COPY|ADD)\s/.test(x))) {
      expect(l).not.toMatch(/certs-dev|data\/|\.key\b|\.pem\b/);
      // Every source copied from the context exists in the repository.
      const parts = l.split(/\s+/).slice(1).filter((p) => !p.startsWith('--'));
      if (!l.includes('--from=')) for (const src of parts.slice(0, -1)) expect(existsSync(src), src).toBe(true);
    }
    expect(lines.some((l) => /^ADD\s/.test(l))).toBe(false);
    expect(lines.filter((l) => /^(ENV|ARG)\s/.test(l) && /KEY|TOKEN|PASSWORD|SECRET/i.test(l))).toEqual([]);
    const ignore = readFileSync('.dockerignore', 'utf8').split('\n').map((l) => l.trim());
    for (const entry of ['certs-dev/*', 'data/', 'node_modules', 'dist']) expect(ignore).toContain(entry);
  });
});
