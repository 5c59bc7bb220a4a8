import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';

/**
 * Test files run in parallel forks. Most suites wait on I/O (TLS, child processes, PostgreSQL, MariaDB,
 * Redis, RabbitMQ), so vitest's default (cores - 1: one fork on a 2-core CI machine) leaves the machine
 * idle. Every suite is safe in parallel: free ports, its own temp dirs, unique Redis key prefixes,
 * database names, user and role prefixes. TESSERA_TEST_WORKERS overrides the count (1 = serial).
 */
const fromEnv = Number(process.env.TESSERA_TEST_WORKERS);
const workers = Number.isInteger(fromEnv) && fromEnv > 0 ? fromEnv : Math.min(6, Math.max(2, availableParallelism() * 2));

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Integration suites bind ports and write files; forks keep them isolated.
    pool: 'forks',
    maxWorkers: workers,
    minWorkers: 1,
  },
});
