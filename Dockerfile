# Tessera broker (and agent) image.
#
#   docker build -t tessera:0.1.0 .
#   docker run --rm -v /path/to/config:/etc/tessera/config:ro -v /path/to/pki:/etc/tessera/pki:ro \
#     -p 8443:8443 tessera:0.1.0                      # = serve --config /etc/tessera/config/tessera.yaml
#   docker run --rm tessera:0.1.0 agent --help        # the same image is the workload agent
#
# Two stages: the build stage has the TypeScript toolchain; the runtime stage has only production
# dependencies and the compiled dist/. No key material is ever copied in (.dockerignore excludes
# certs-dev/ and data/): the CA, TLS and signing keys are mounted at run time (a Kubernetes Secret).
# Node 24 is the maintained LTS line (node:20 is past its end of life); the code supports Node >= 20.19.

# ---- build: full dependency tree, compile TypeScript ----
FROM node:24-trixie-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: "prepare" would build before the sources are here; the build runs below.
RUN npm ci --no-audit --no-fund --ignore-scripts
# The PKCS#11 binding (pkcs11js) is a native addon: built here, with the toolchain the runtime stage
# does not carry, against this image's Node (the runtime stage is the same base image, so the same ABI).
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ \
 && npm rebuild pkcs11js \
 && rm -rf /var/lib/apt/lists/*
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies and dist/ only, unprivileged ----
FROM node:24-trixie-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --ignore-scripts && npm cache clean --force
# The built addon only (no compiler in this stage); loaded only when a key is in a token (docs/ca.md).
COPY --from=build /src/node_modules/pkcs11js/build/Release/pkcs11.node ./node_modules/pkcs11js/build/Release/pkcs11.node
COPY --from=build /src/dist ./dist
COPY openapi.yaml ./
# The agent's gRPC definitions (SPIFFE Workload API, Envoy SDS), read at run time.
COPY proto ./proto
# The node image's unprivileged user; numeric so Kubernetes can enforce runAsNonRoot.
USER 1000:1000
EXPOSE 8443
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["serve", "--config", "/etc/tessera/config/tessera.yaml"]
