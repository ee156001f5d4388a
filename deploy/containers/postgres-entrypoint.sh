#!/bin/sh
# PostgreSQL 15 for the bank's containers: on first start a cluster in $PGDATA with
# wal_level=logical (the tailer's logical decoding) and the database `bank`; then the
# server in the foreground. Every connection over the network, replication included,
# logs in with a SCRAM-SHA-256 password: the superuser's, from POSTGRES_PASSWORD_FILE
# (a mounted secret) or POSTGRES_PASSWORD, set again at every start (a volume made
# before keeps no older password nor rule). Inside the container, psql as the
# postgres user logs in by peer. Dev and smoke tests; production is RDS/Aurora
# (docs/DEPLOY.md).
set -eu
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  password="$(cat "$POSTGRES_PASSWORD_FILE")"
else
  password="${POSTGRES_PASSWORD:-}"
fi
if [ "${#password}" -lt 16 ]; then
  echo "postgres-entrypoint: set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to 16 or more characters" >&2
  exit 1
fi
if [ ! -f "$PGDATA/PG_VERSION" ]; then
  initdb -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --no-locale >/dev/null
  cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
wal_level = logical
max_replication_slots = 16
max_wal_senders = 16
max_connections = 400
password_encryption = 'scram-sha-256'
CONF
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  psql -U postgres -d postgres -qc 'create database bank' >/dev/null
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
# the rules and the password, every start: peer on the socket, SCRAM on the network
printf '%s\n' "local all all peer" "local replication all peer" \
  "host all all 0.0.0.0/0 scram-sha-256" "host replication all 0.0.0.0/0 scram-sha-256" \
  "host all all ::/0 scram-sha-256" "host replication all ::/0 scram-sha-256" >"$PGDATA/pg_hba.conf"
quoted="$(printf '%s' "$password" | sed "s/'/''/g")"
printf "set password_encryption = 'scram-sha-256'; alter role postgres password '%s';\n" "$quoted" \
  | postgres --single -D "$PGDATA" postgres >/dev/null
exec postgres -D "$PGDATA" "$@"
