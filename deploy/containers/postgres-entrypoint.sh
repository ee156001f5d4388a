#!/bin/sh
# PostgreSQL 15 for the bank's containers: on first start a cluster in $PGDATA with
# wal_level=logical (the tailer's logical decoding) and the database `bank`; then the
# server in the foreground. Trust authentication on the container network: dev and
# smoke tests only (production uses RDS/Aurora, docs/DEPLOY.md).
set -eu
if [ ! -f "$PGDATA/PG_VERSION" ]; then
  initdb -D "$PGDATA" -U postgres --auth=trust --encoding=UTF8 --no-locale >/dev/null
  cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
wal_level = logical
max_replication_slots = 16
max_wal_senders = 16
max_connections = 400
CONF
  printf '%s\n' "host all all 0.0.0.0/0 trust" "host replication all 0.0.0.0/0 trust" >>"$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  psql -U postgres -d postgres -qc 'create database bank' >/dev/null
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" "$@"
