# syntax=docker/dockerfile:1
# The bank's container images: one Dockerfile, three targets over one runtime layer.
#
#   postgres  PostgreSQL 15 from Debian; the entrypoint makes a cluster with
#             wal_level=logical and the database `bank` on first start
#   kinesis   kinesalite (the Kinesis API server of the dev scripts and the tests) on
#             Node.js, from the committed lock file's node_modules (tools/kinesis)
#   bank      every binary the workspace builds (the services and bankctl), run-time
#             only: the binaries are built by cargo outside the image
#
# The base image is not pulled: no registry is reachable where this was written.
# scripts/images makes localhost/bank-base:bookworm with debootstrap and builds the
# targets with podman (`--pull=never`); see docs/decisions/0024-containers.md.
# With Docker and a registry, `--build-arg BASE=debian:bookworm-slim` works as well.
#
# The context is laid out like the repository: target/$PROFILE/<binaries>,
# gateway/web/, tools/kinesis/ (after `npm ci`), deploy/containers/. scripts/images
# stages a copy with the binaries' debug info stripped; `podman build .` from the
# repository root works too (.dockerignore keeps the context to those paths).
ARG BASE=localhost/bank-base:bookworm

FROM ${BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates curl tini \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

FROM runtime AS postgres
# no default cluster: the entrypoint makes the bank's own on first start
RUN mkdir -p /etc/postgresql-common && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf \
 && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends postgresql-15 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/bank-pg /run/postgresql && chown postgres: /var/lib/bank-pg /run/postgresql
COPY deploy/containers/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/bank-pg/data
USER postgres
VOLUME /var/lib/bank-pg
EXPOSE 5432
HEALTHCHECK --interval=2s --timeout=3s --retries=30 CMD pg_isready -h 127.0.0.1 -U postgres -d bank
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/postgres-entrypoint"]

FROM runtime AS kinesis
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends nodejs \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /opt/kinesis kinesis
COPY tools/kinesis/package.json tools/kinesis/package-lock.json /opt/kinesis/
COPY tools/kinesis/node_modules /opt/kinesis/node_modules
COPY deploy/containers/kinesis-health.sh /usr/local/bin/kinesis-health
USER kinesis
EXPOSE 4567
HEALTHCHECK --interval=2s --timeout=3s --retries=30 CMD kinesis-health
ENTRYPOINT ["/usr/bin/tini", "--", "node", "/opt/kinesis/node_modules/kinesalite/cli.js"]
CMD ["--port", "4567", "--createStreamMs", "0", "--deleteStreamMs", "0", "--updateStreamMs", "0", "--shardLimit", "100000"]

FROM runtime AS prometheus
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends prometheus \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY deploy/prometheus/alerts.yml deploy/prometheus/compose.yml /etc/bank-prometheus/
USER prometheus
EXPOSE 9090
HEALTHCHECK --interval=2s --timeout=3s --retries=30 CMD curl -fsS -o /dev/null http://127.0.0.1:9090/-/ready
ENTRYPOINT ["/usr/bin/tini", "--", "prometheus", "--config.file=/etc/bank-prometheus/compose.yml", \
            "--storage.tsdb.path=/var/lib/prometheus/metrics2", "--web.listen-address=0.0.0.0:9090"]

FROM runtime AS bank
ARG PROFILE=debug
COPY target/${PROFILE}/account-service target/${PROFILE}/transfer-service target/${PROFILE}/query-service \
     target/${PROFILE}/view-updater target/${PROFILE}/tailer target/${PROFILE}/event-bus \
     target/${PROFILE}/gateway target/${PROFILE}/bankctl target/${PROFILE}/archiver /usr/local/bin/
COPY gateway/web /usr/share/bank/web
RUN useradd --system --no-create-home bank
# In a container every process must listen on all addresses (see docs/DEPLOY.md).
ENV GATEWAY_WEB_DIR=/usr/share/bank/web LOG_FORMAT=text \
    ACCOUNT_SERVICE_ADDR=0.0.0.0:8081 TRANSFER_SERVICE_ADDR=0.0.0.0:8082 QUERY_SERVICE_ADDR=0.0.0.0:8083 \
    VIEW_UPDATER_ADDR=0.0.0.0:8084 TAILER_ADDR=0.0.0.0:8085 EVENT_BUS_ADDR=0.0.0.0:8086 GATEWAY_ADDR=0.0.0.0:8080 \
    ARCHIVER_ADDR=0.0.0.0:8087
USER bank
EXPOSE 8080 8081 8082 8083 8084 8085 8086 8087
# The command names the process: `account-service`, `gateway`, `bankctl migrate`, ...
# Its health check is the compose file's (each process has its own port).
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["bankctl", "--help"]
