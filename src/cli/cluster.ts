/**
 * `tessera serve --workers N` (N > 1): N brokers on one host, with node:cluster.
 *
 * Each worker is an ordinary broker and a replica in all but name: it connects to the Redis store
 * itself, the checkpoint lock in Redis decides who signs, and it listens on the shared host:port (the
 * primary hands out connections round-robin). The primary opens no store. Each worker's replica ID is
 * `<replicaId>-w<n>`, so audit entries say which one answered. Workers need Redis (cli/serve.ts says so
 * at start): the embedded store belongs to one process.
 *
 * The primary supervises: a worker that dies is restarted with backoff; SIGTERM/SIGINT makes every
 * worker shut down gracefully (finish in-flight requests, sign a final checkpoint), then the primary
 * exits. It also answers /metrics (when enabled) by summing the workers' metrics.
 */
import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import type { Broker } from '../broker.js';
import type { Config } from '../config/config.js';
import { ensureDevMaterial } from '../dev/material.js';
import { startMetricsServer, type MetricsServer } from '../metrics/server.js';

/** Set in a worker's environment by the primary: the worker's number, 1..N. */
const WORKER_ENV = 'TESSERA_CLUSTER_WORKER';
const READY = 'tessera.worker.ready';
const METRICS_REQ = 'tessera.metrics.req';
const METRICS_RES = 'tessera.metrics.res';
/** Worker start (broker + audit catch-up) and graceful stop (in-flight requests + final checkpoint). */
const START_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 30_000;
/** Restart backoff: 250 ms doubling to 10 s; a worker that lived this long resets it. */
const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 10_000;
const STABLE_MS = 30_000;

type MetricsJson = MetricObjectWithValues<MetricValue<string>>[];

interface ReadyMessage {
  t: typeof READY;
  port: number;
  auditEntries: number;
  bundleEndpoint?: string;
}

export interface BannerInfo {
  url: string;
  auditEntries: number;
  metricsUrl?: string;
  /** The https_spiffe bundle endpoint: its URL and the SPIFFE ID it presents. */
  bundleEndpoint?: string;
  workers: number;
}

/** What a worker needs from this module: its config, and how to report that it listens. */
export interface ClusterWorker {
  readonly index: number;
  /** The primary's config with this worker's replica ID. */
  readonly config: Config;
  /** Tells the primary this worker listens; from then on it also answers metrics requests. */
  ready(broker: Broker, port: number, bundleEndpoint?: string): void;
}

/** In a worker forked by runPrimary: its setup. Anywhere else: undefined. */
export function clusterWorker(config: Config): ClusterWorker | undefined {
  const raw = process.env[WORKER_ENV];
  if (!cluster.isWorker || raw === undefined || !/^[1-9]\d{0,2}$/.test(raw)) return undefined;
  const index = Number(raw);
  return {
    index,
    config: Object.freeze({ ...config, replicaId: `${config.replicaId}-w${index}` }),
    ready(broker, port, bundleEndpoint) {
      // The callback keeps a send on a closed channel (the primary is gone) from crashing the worker.
      const tell = (message: object): void => void process.send?.(message, undefined, {}, () => {});
      process.on('message', (m: unknown) => {
        if (typeof m !== 'object' || m === null || (m as { t?: unknown }).t !== METRICS_REQ) return;
        const id = (m as { id?: unknown }).id;
        broker.metrics.json().then(
          (metrics) => tell({ t: METRICS_RES, id, metrics }),
          () => tell({ t: METRICS_RES, id, metrics: [] }),
        );
      });
      tell({ t: READY, port, auditEntries: broker.audit.size, ...(bundleEndpoint !== undefined ? { bundleEndpoint } : {}) } satisfies ReadyMessage);
    },
  };
}

const log = (line: string): void => void process.stderr.write(`tessera: ${line}\n`);

interface Slot {
  index: number;
  worker?: Worker | undefined;
  startedAt: number;
  failures: number;
  ready: boolean;
}

/**
 * Runs the primary until it is told to stop; the process exits when the workers are gone (0 when
 * every worker stopped cleanly). Rejects (before anything listens) if a worker fails to start.
 */
export async function runPrimary(config: Config, workers: number, banner: (info: BannerInfo) => string): Promise<void> {
  if (config.dev) await ensureDevMaterial(config.devDir, config.trustDomain);
  // Advanced serialization: metric values cross as numbers, NaN and Infinity included (JSON would make them null).
  cluster.setupPrimary({ serialization: 'advanced' });
  const slots: Slot[] = Array.from({ length: workers }, (_, i) => ({ index: i + 1, startedAt: 0, failures: 0, ready: false }));
  let closing = false;
  let started = false;
  let failStart: (err: Error) => void = () => {};
  let port = 0;
  let auditEntries = 0;
  let bundleEndpoint: string | undefined;
  const readyWaiters: (() => void)[] = [];

  const fork = (slot: Slot): void => {
    const worker = cluster.fork({ [WORKER_ENV]: String(slot.index) });
    slot.worker = worker;
    slot.ready = false;
    slot.startedAt = Date.now();
    worker.on('error', () => {}); // a send to a worker that just died; its exit is handled below
    worker.on('message', (m: unknown) => {
      if (typeof m !== 'object' || m === null || (m as { t?: unknown }).t !== READY) return;
      const r = m as ReadyMessage;
      slot.ready = true;
      port = r.port;
      bundleEndpoint = r.bundleEndpoint;
      auditEntries = Math.max(auditEntries, r.auditEntries);
      if (started) log(`worker ${slot.index} (pid ${worker.process.pid}) is serving again`);
      readyWaiters.splice(0).forEach((w) => w());
    });
    worker.on('exit', (code, signal) => {
      slot.worker = undefined;
      const lived = Date.now() - slot.startedAt;
      if (closing) return;
      const how = signal !== null ? `signal ${signal}` : `code ${code}`;
      if (!started) {
        failStart(new Error(`worker ${slot.index} exited with ${how} before it was ready (see its output above)`));
        return;
      }
      slot.failures = lived >= STABLE_MS ? 1 : slot.failures + 1;
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** (slot.failures - 1));
      log(`worker ${slot.index} (pid ${worker.process.pid}) exited with ${how}; restarting it in ${delay} ms`);
      setTimeout(() => {
        if (!closing) fork(slot);
      }, delay);
    });
  };

  const stopWorkers = async (): Promise<boolean> => {
    const live = slots.flatMap((s) => (s.worker !== undefined && s.worker.process.exitCode === null && s.worker.process.signalCode === null ? [s.worker] : []));
    const codes = await Promise.all(
      live.map(
        (w) =>
          new Promise<number | null>((resolve) => {
            const killer = setTimeout(() => {
              log(`worker pid ${w.process.pid} did not stop within ${STOP_TIMEOUT_MS} ms; killing it`);
              w.process.kill('SIGKILL');
            }, STOP_TIMEOUT_MS);
            w.once('exit', (code) => {
              clearTimeout(killer);
              resolve(code);
            });
            // The worker's own handler: stop accepting, finish requests, sign the final checkpoint.
            w.process.kill('SIGTERM');
          }),
      ),
    );
    return codes.every((c) => c === 0);
  };

  // Start every worker; any that fails before listening fails the whole start.
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`workers did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      failStart = (err) => {
        clearTimeout(timer);
        reject(err);
      };
      const check = (): void => {
        if (slots.every((s) => s.ready)) {
          clearTimeout(timer);
          resolve();
        } else readyWaiters.push(check);
      };
      for (const slot of slots) fork(slot);
      check();
    });
  } catch (err) {
    closing = true;
    await stopWorkers();
    throw err;
  }
  started = true;

  let metrics: MetricsServer | undefined;
  if (config.metrics.enabled) metrics = await startMetricsServer(clusterMetricsSource(slots), config.metrics);
  const host = config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host;
  process.stdout.write(
    banner({
      url: `https://${host}:${port}`,
      auditEntries,
      workers,
      ...(metrics !== undefined ? { metricsUrl: metrics.url } : {}),
      ...(bundleEndpoint !== undefined ? { bundleEndpoint } : {}),
    }),
  );

  const shutdown = (signal: string): void => {
    if (closing) return;
    closing = true;
    log(`${signal}: stopping ${workers} workers (finishing requests in flight)`);
    void (async () => {
      const clean = await stopWorkers();
      await metrics?.close();
      return clean;
    })().then(
      (clean) => {
        if (!clean) log('a worker did not shut down cleanly');
        process.exit(clean ? 0 : 1);
      },
      (err: unknown) => {
        log(`error during shutdown: ${err instanceof Error ? err.message : String(err)}`);
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  // Each worker re-reads the config on SIGHUP (cli/serve.ts); the primary passes the signal on.
  process.on('SIGHUP', () => {
    for (const s of slots) s.worker?.process.kill('SIGHUP');
  });
}

/** Per-worker quantities are summed (the default); gauges every worker reports alike (log size, CA expiry) are not. */
const SUMMED_GAUGES: ReadonlySet<string> = new Set(['tessera_ca_jobs_in_flight']);

function aggregatorFor(metric: MetricObjectWithValues<MetricValue<string>>): MetricObjectWithValues<MetricValue<string>> {
  if (String(metric.type) === 'gauge' && metric.name.startsWith('tessera_') && !SUMMED_GAUGES.has(metric.name)) {
    return { ...metric, aggregator: 'max' };
  }
  return metric;
}

/** /metrics in the primary: every ready worker's metrics, summed by prom-client's cluster aggregator. */
function clusterMetricsSource(slots: readonly Slot[]): { contentType: string; text(): Promise<string> } {
  let nextId = 1;
  const ask = (w: Worker): Promise<MetricsJson> =>
    new Promise((resolve) => {
      const id = nextId++;
      const timer = setTimeout(() => done([]), 5_000);
      const onMessage = (m: unknown): void => {
        if (typeof m === 'object' && m !== null && (m as { t?: unknown }).t === METRICS_RES && (m as { id?: unknown }).id === id) {
          done((m as { metrics: MetricsJson }).metrics);
        }
      };
      const done = (metrics: MetricsJson): void => {
        clearTimeout(timer);
        w.off('message', onMessage);
        w.off('exit', onExit);
        resolve(Array.isArray(metrics) ? metrics.map(aggregatorFor) : []);
      };
      const onExit = (): void => done([]);
      w.on('message', onMessage);
      w.once('exit', onExit);
      w.send({ t: METRICS_REQ, id }, undefined, {}, (err) => {
        if (err) done([]);
      });
    });
  return {
    contentType: AggregatorRegistry.PROMETHEUS_CONTENT_TYPE,
    async text() {
      const live = slots.flatMap((s) => (s.ready && s.worker !== undefined ? [s.worker] : []));
      const all = await Promise.all(live.map(ask));
      return AggregatorRegistry.aggregate(all.filter((m) => m.length > 0)).metrics();
    },
  };
}
