// Writes openapi.yaml from the route schemas (run by `npm run openapi`, after the build).
import { writeFileSync } from 'node:fs';
import { generateOpenapi } from '../dist/server/openapi.js';

writeFileSync(new URL('../openapi.yaml', import.meta.url), await generateOpenapi());
