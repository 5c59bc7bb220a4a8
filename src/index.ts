/** Tessera as a library: build and run a broker in-process (the CLI does exactly this). */
export { createBroker, type Broker } from './broker.js';
export { buildServer, type ServerOptions } from './server/app.js';
export { loadConfig, ConfigError, type LoadOptions } from './config/load.js';
export type { Config } from './config/config.js';
export { BrokerError, type ErrorCode } from './errors.js';
export type { Identity } from './attest/identity.js';
