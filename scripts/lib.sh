# Shared helpers of scripts/up, scripts/test and scripts/bench. Source it; do not run it.
#
# Everything the project needs on a fresh machine is installed here: PostgreSQL 15
# from Debian when its binaries are missing, Node.js when missing, and the Kinesis API
# servers from the committed npm lock file (tools/kinesis).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
KINESIS_TOOLS="$ROOT/tools/kinesis"

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

apt_install() {
  log "installing $* from Debian"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >/dev/null
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Every program the scripts run that a fresh machine of this kind may lack, with the
# Debian package that brings it: a name is looked up on PATH, a path must be
# executable. One table, so that what a script installs and what `preflight` checks
# cannot drift apart. (podman's netavark drives the host firewall through iptables, a
# package apt does not pull in with --no-install-recommends.)
declare -A TOOL_PACKAGE=(
  [curl]=curl [openssl]=openssl [jq]=jq [bc]=bc [pgrep]=procps [getconf]=libc-bin [objcopy]=binutils [ip]=iproute2
  [runuser]=util-linux [useradd]=passwd [node]=nodejs [npm]=npm
  [psql]=postgresql-client-15 [initdb]=postgresql-15 [pgbench]=postgresql-15 [pg_basebackup]=postgresql-client-15
  [chromium]=chromium [prometheus]=prometheus [promtool]=prometheus
  [podman]=podman [runc]=runc [debootstrap]=debootstrap [iptables]=iptables
  [netavark]=netavark [aardvark-dns]=aardvark-dns
)
# where a tool lives when it is not on PATH
declare -A TOOL_PATH=(
  [initdb]="$PG_BIN/initdb" [pgbench]="$PG_BIN/pgbench" [pg_basebackup]="$PG_BIN/pg_basebackup"
  [netavark]=/usr/lib/podman/netavark [aardvark-dns]=/usr/lib/podman/aardvark-dns
)
# The tools of each part of the work, for `preflight`.
TOOLS_BASE=(curl openssl jq runuser useradd psql initdb pg_basebackup node npm prometheus promtool)
TOOLS_BROWSER=(chromium)
TOOLS_IMAGES=(podman runc netavark aardvark-dns iptables debootstrap bc objcopy ip)
TOOLS_BENCH=(pgbench bc pgrep getconf)

tool_present() {
  local path=${TOOL_PATH[$1]:-}
  if [ -n "$path" ]; then [ -x "$path" ]; else command -v "$1" >/dev/null; fi
}

# known_tools TOOL...: fails (in the calling shell) on a tool the table lacks.
known_tools() {
  local tool
  for tool in "$@"; do
    [ -n "${TOOL_PACKAGE[$tool]:-}" ] || die "scripts/lib.sh: no package known for the tool $tool"
  done
}

# missing_packages TOOL...: the packages that would bring the missing tools, once each
# (the tools known: see known_tools).
missing_packages() {
  local tool pkgs=()
  for tool in "$@"; do
    tool_present "$tool" || pkgs+=("${TOOL_PACKAGE[$tool]}")
  done
  [ ${#pkgs[@]} -eq 0 ] || printf '%s\n' "${pkgs[@]}" | sort -u
}

# ensure_cmds TOOL...: installs the packages of the missing tools, then checks each.
ensure_cmds() {
  local pkgs tool
  known_tools "$@"
  mapfile -t pkgs < <(missing_packages "$@")
  [ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"
  for tool in "$@"; do tool_present "$tool" || die "$tool is still missing after installing ${TOOL_PACKAGE[$tool]}"; done
}

# preflight TOOL...: fast, before anything is built: says which of the tools a run will
# need are missing and whether Debian offers their packages. Installs nothing (each
# phase installs its own); fails at once, naming the tool, when a package has no
# candidate, so a run does not fail twenty minutes in.
preflight() {
  local pkgs pkg tool policy bad=()
  known_tools "$@"
  mapfile -t pkgs < <(missing_packages "$@")
  [ ${#pkgs[@]} -eq 0 ] && { log "preflight: every tool this run needs is here"; return 0; }
  log "preflight: missing, to be installed from Debian when needed: ${pkgs[*]}"
  as_root apt-get update -qq >/dev/null 2>&1 || log "preflight: apt-get update failed; checking the lists apt has"
  for pkg in "${pkgs[@]}"; do
    # the answer read whole first: grep -q closing the pipe early fails it under pipefail
    policy="$(apt-cache policy "$pkg" 2>/dev/null || true)"
    if ! grep -qE '^ +Candidate: [^(]' <<<"$policy"; then
      for tool in "$@"; do [ "${TOOL_PACKAGE[$tool]}" = "$pkg" ] && ! tool_present "$tool" && bad+=("$tool (package $pkg)"); done
    fi
  done
  [ ${#bad[@]} -eq 0 ] || die "preflight: not installed and not installable from Debian: ${bad[*]}"
}

ensure_postgres() {
  ensure_cmds initdb psql
}

# Tools the scripts and tests call, whatever else is configured.
ensure_tools() {
  ensure_cmds curl openssl jq runuser # openssl: the RS256 test makes its key pair
}

# ensure_prometheus: Prometheus and promtool (Debian's prometheus package).
ensure_prometheus() {
  ensure_cmds prometheus promtool
}

# prometheus_config FILE NAME=ADDR...: a configuration scraping each process's
# /metrics every 5 s (job = NAME), with the bank's alerting rules.
prometheus_config() {
  local file=$1 target
  shift
  {
    echo "# written by scripts/lib.sh (prometheus_config)"
    echo "global: {scrape_interval: 5s, evaluation_interval: 5s}"
    echo "rule_files: ['$ROOT/deploy/prometheus/alerts.yml']"
    echo "scrape_configs:"
    for target in "$@"; do
      echo "  - job_name: '${target%%=*}'"
      echo "    static_configs: [{targets: ['${target#*=}']}]"
    done
  } >"$file"
}

ensure_kinesis_servers() {
  ensure_cmds node npm
  local stamp="$KINESIS_TOOLS/node_modules/.installed-lock"
  if [ ! -f "$stamp" ] || ! cmp -s "$KINESIS_TOOLS/package-lock.json" "$stamp"; then
    log "installing the Kinesis API servers (npm ci, tools/kinesis)"
    (cd "$KINESIS_TOOLS" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || die "npm ci failed in tools/kinesis"
    cp "$KINESIS_TOOLS/package-lock.json" "$stamp"
  fi
}

# A pinned Python package in the project's venv (.dev/venv), installed on first use;
# SPEC names it with extras (moto[s3,server]).
ensure_pip_package() { # NAME VERSION [SPEC]
  local venv="$ROOT/.dev/venv"
  if ! "$venv/bin/pip" show "$1" 2>/dev/null | grep -q "^Version: $2$"; then
    log "installing $1 $2 into .dev/venv"
    mkdir -p "$ROOT/.dev"
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check "${3:-$1}==$2" >/dev/null || die "pip could not install $1"
  fi
}

# The S3 API server of scripts/up and scripts/test: moto (PyPI, pinned) in server mode,
# in .dev/venv (decision 0043).
ensure_s3_server() {
  ensure_pip_package moto 5.2.5 'moto[s3,server]'
  # a moto installed without its server extras has no moto_server (or no flask)
  if [ ! -x "$ROOT/.dev/venv/bin/moto_server" ] || ! "$ROOT/.dev/venv/bin/python" -c 'import flask, flask_cors' 2>/dev/null; then
    log "installing moto's server extras into .dev/venv"
    "$ROOT/.dev/venv/bin/pip" install -q --disable-pip-version-check 'moto[s3,server]==5.2.5' >/dev/null \
      || die "pip could not install moto[s3,server]"
  fi
}

# s3_start PORT LOG: moto's S3 server on 127.0.0.1:PORT, in memory. Sets S3_PID (call
# it directly, not in $(...), so the server is this shell's child); 1 when it did not
# come up there (the port taken).
s3_start() {
  local port=$1 logfile=$2
  # another server there (an earlier run's) would answer for ours
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "port $port is taken"
    return 1
  fi
  "$ROOT/.dev/venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
  S3_PID=$!
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/moto-api/" && kill -0 "$S3_PID" 2>/dev/null && return 0
    kill -0 "$S3_PID" 2>/dev/null || { tail -5 "$logfile" >&2; log "the S3 server exited"; return 1; }
    sleep 0.1
  done
  log "the S3 server did not answer on port $port; stopping it"
  kill -9 "$S3_PID" 2>/dev/null || true
  return 1
}

# start_s3_server LOG: s3_start on a free port (a few tries); sets S3_PORT and S3_PID.
start_s3_server() {
  for _ in 1 2 3 4 5; do
    S3_PORT="$(free_port $((30000 + RANDOM % 9000)))"
    s3_start "$S3_PORT" "$1" && return 0
  done
  die "the S3 server did not start"
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
  ensure_tools
}

# Runs a command as the postgres user when we are root (initdb refuses root).
pg_as() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A free TCP port on 127.0.0.1, starting the search at $1.
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

# pg_init DIR: a new cluster in DIR/data unless one is there. Extra settings follow.
pg_init() {
  local dir=$1; shift
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || as_root useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    chown postgres: "$dir"
    runuser -u postgres -- test -x "$dir" || die "the postgres user cannot reach $dir (a parent directory is not traversable); set PG_DIR to another place"
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    log "creating a PostgreSQL cluster in $dir/data"
    pg_as "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    {
      echo "# written by scripts/lib.sh"
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = ''"
      echo "wal_level = logical"
      echo "max_replication_slots = 16"
      echo "max_wal_senders = 16"
      echo "max_connections = 400"
      for setting in "$@"; do echo "$setting"; done
    } | pg_as tee -a "$dir/data/postgresql.conf" >/dev/null
  fi
}

# pg_start DIR PORT: starts the cluster and waits until it accepts connections.
pg_start() {
  local dir=$1 port=$2
  pg_as "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $port" -w -t 60 start >/dev/null \
    || { tail -20 "$dir/server.log" >&2; die "PostgreSQL did not start"; }
}

pg_stop() {
  local dir=$1
  [ -f "$dir/data/postmaster.pid" ] && pg_as "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

# pg_createdb PORT NAME: creates the database unless it exists.
pg_createdb() {
  local port=$1 name=$2
  if ! "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc "select 1 from pg_database where datname = '$name'" | grep -q 1; then
    "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "create database \"$name\"" >/dev/null
  fi
}

# psql_url URL ARGS...: psql against a database URL.
psql_url() {
  local url=$1; shift
  "$PG_BIN/psql" "$url" "$@"
}

# The emulators want a SigV4-shaped Authorization header and an X-Amz-Date.
kinesis_call() {
  local endpoint=$1 target=$2 body=$3
  curl -sf --max-time 5 -X POST "$endpoint" \
    -H "Content-Type: application/x-amz-json-1.1" \
    -H "X-Amz-Target: Kinesis_20131202.$target" \
    -H "X-Amz-Date: 20260101T000000Z" \
    -H "Authorization: AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0" \
    -d "$body"
}

# start_kinesis_server SERVER LOG: kinesalite or kinesis-local, in memory, on a free
# port; a few tries, since another process may take the port between probe and bind.
# Sets KINESIS_PORT and KINESALITE_PID.
start_kinesis_server() {
  local server=$1 logfile=$2
  for _ in 1 2 3 4 5; do
    KINESIS_PORT="$(free_port $((40000 + RANDOM % 9000)))"
    case "$server" in
      kinesalite) kinesalite_start "$KINESIS_PORT" "$logfile" && return 0 ;;
      kinesis-local) kinesis_local_start "$KINESIS_PORT" "$logfile" && return 0 ;;
      *) die "KINESIS_SERVER must be kinesalite or kinesis-local" ;;
    esac
  done
  die "$server did not start"
}

# kinesalite_start PORT LOG [DATA_DIR]: in memory, or persisted in DATA_DIR. Sets
# KINESALITE_PID (call it directly, not in $(...), so the server is this shell's child).
kinesalite_start() {
  local port=$1 logfile=$2 data=${3:-}
  local args=(--port "$port" --createStreamMs 0 --deleteStreamMs 0 --updateStreamMs 0 --shardLimit 100000)
  [ -n "$data" ] && { mkdir -p "$data"; args+=(--path "$data"); }
  node "$KINESIS_TOOLS/node_modules/kinesalite/cli.js" "${args[@]}" >"$logfile" 2>&1 &
  KINESALITE_PID=$!
  wait_kinesis "$port" "$logfile" kinesalite
}

# wait_kinesis PORT LOG NAME: until the server started as $KINESALITE_PID answers.
# A server that lost a port to another process (kinesis-local binds two and stays
# up when the second is taken) or never answers is stopped, and 1 returned, so that
# the caller can try other ports.
wait_kinesis() {
  local port=$1 logfile=$2 name=$3
  for _ in $(seq 1 300); do
    if kinesis_call "http://127.0.0.1:$port" ListStreams '{}' >/dev/null 2>&1; then return 0; fi
    kill -0 "$KINESALITE_PID" 2>/dev/null || { tail -5 "$logfile" >&2; log "$name exited"; return 1; }
    if grep -q EADDRINUSE "$logfile" 2>/dev/null; then
      log "$name found a port taken; stopping it"
      kill -9 "$KINESALITE_PID" 2>/dev/null || true
      return 1
    fi
    sleep 0.1
  done
  log "$name did not answer on port $port; stopping it"
  kill -9 "$KINESALITE_PID" 2>/dev/null || true
  return 1
}

# kinesis_local_start PORT LOG: kinesis-mock (as LocalStack uses it), in memory. Sets
# KINESALITE_PID like kinesalite_start (call it directly, not in $(...)).
kinesis_local_start() {
  local port=$1 logfile=$2 pkg="$KINESIS_TOOLS/node_modules/kinesis-local"
  # its TLS port (HTTP/2: enhanced fan-out) uses KINESIS_LOCAL_CERT_JSON when set
  # (kinesis_local_cert), else the package's own certificate (no subject names)
  KINESIS_TLS_PORT="$(free_port $((port + 1000)))"
  KINESIS_MOCK_CERT_PATH="${KINESIS_LOCAL_CERT_JSON:-$pkg/server.json}" KINESIS_MOCK_PLAIN_PORT="$port" \
    KINESIS_MOCK_TLS_PORT="$KINESIS_TLS_PORT" REGISTER_STREAM_CONSUMER_DURATION=0ms SHARD_LIMIT=100000 \
    node "$pkg/main.js" >"$logfile" 2>&1 &
  KINESALITE_PID=$!
  wait_kinesis "$port" "$logfile" kinesis-local
}

# kinesis_local_cert DIR: a throwaway CA (DIR/ca.crt) and a server certificate for
# localhost and 127.0.0.1 in kinesis-mock's format (DIR/server.json); sets
# KINESIS_LOCAL_CERT_JSON. The SDK verifies the TLS port's certificate by name.
kinesis_local_cert() {
  local dir=$1
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 30 \
    -subj "/CN=bank test kinesis CA" 2>/dev/null || die "openssl could not make the CA"
  openssl req -newkey rsa:2048 -nodes -keyout "$dir/server.key" -out "$dir/server.csr" -subj "/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/server.crt" -days 30 -extfile "$dir/ext.cnf" 2>/dev/null || die "openssl could not sign the certificate"
  python3 -c 'import json, sys; d = sys.argv[1]; json.dump({"server": {"key": open(d + "/server.key").read(), "cert": open(d + "/server.crt").read()}}, open(d + "/server.json", "w"))' "$dir"
  KINESIS_LOCAL_CERT_JSON="$dir/server.json"
}

# offers_npm_deps: the offers example's npm packages (examples/offers/package-lock.json,
# pinned), installed again whenever the lock file changed.
offers_npm_deps() {
  local dir="$ROOT/examples/offers" stamp
  stamp="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ "$(cat "$dir/node_modules/.lock-stamp" 2>/dev/null || true)" != "$stamp" ]; then
    log "installing the offers example's npm packages (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund >/dev/null) || die "npm ci failed in examples/offers"
    echo "$stamp" >"$dir/node_modules/.lock-stamp"
  fi
}

# A fleet of the debug binaries, for a script's own end-to-end test (scripts/browser,
# examples/offers/test): their logs go to FLEET_DIR; fleet_stop stops them all and,
# after a failure, shows the end of each log.
FLEET_PIDS=()
# fleet_start NAME ADDR_VARIABLE: target/debug/NAME on a free port; sets URL.
fleet_start() {
  local name=$1 var=$2 port
  port="$(free_port $((20000 + RANDOM % 12000)))"
  env "$var=127.0.0.1:$port" "$ROOT/target/debug/$name" >"$FLEET_DIR/$name.log" 2>&1 &
  FLEET_PIDS+=("$!")
  wait_http "http://127.0.0.1:$port/health" "$!" "$name"
  URL="http://127.0.0.1:$port"
}
# fleet_stop RC
fleet_stop() {
  local rc=$1 pid f
  for pid in "${FLEET_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${FLEET_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$rc" != 0 ]; then
    for f in "$FLEET_DIR"/*.log; do
      [ -f "$f" ] || continue
      echo "--- last lines of $(basename "$f") ---" >&2
      tail -15 "$f" >&2 || true
    done
  fi
}

# wait_http URL PID NAME: until URL answers 200, or the process dies.
wait_http() {
  local url=$1 pid=$2 name=$3
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "$url" && return 0
    kill -0 "$pid" 2>/dev/null || die "$name exited during start-up (see its log)"
    sleep 0.1
  done
  die "$name did not become healthy at $url"
}

# A dev JWT secret that survives restarts (kept in FILE unless JWT_SECRET is set).
dev_jwt_secret() {
  local file=$1
  if [ -n "${JWT_SECRET:-}" ]; then echo "$JWT_SECRET"; return; fi
  [ -s "$file" ] || { mkdir -p "$(dirname "$file")"; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file"; chmod 600 "$file"; }
  cat "$file"
}

# tls_make_ca DIR NAME: a throwaway self-signed CA for tests, DIR/NAME.crt and DIR/NAME.key.
tls_make_ca() {
  local dir=$1 name=$2
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$name test CA" \
    -keyout "$dir/$name.key" -out "$dir/$name.crt" >"$dir/openssl.log" 2>&1 \
    || { cat "$dir/openssl.log" >&2; die "openssl could not make the CA $name"; }
}

# tls_make_server_cert DIR CA: DIR/server.crt and DIR/server.key for localhost and
# 127.0.0.1, signed by DIR/CA.crt.
tls_make_server_cert() {
  local dir=$1 ca=$2
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$dir/server.ext"
  { openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr" \
      && openssl x509 -req -in "$dir/server.csr" -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" -CAcreateserial \
        -days 2 -extfile "$dir/server.ext" -out "$dir/server.crt"; } >"$dir/openssl.log" 2>&1 \
    || { cat "$dir/openssl.log" >&2; die "openssl could not make the server certificate"; }
}

# pg_tls_cluster DIR PORT: a throwaway cluster in DIR that accepts TLS connections only
# (pg_hba.conf: hostssl lines, trust), its certificate signed by DIR/tls/ca.crt, for
# localhost and 127.0.0.1; DIR/tls/other-ca.crt is a CA that signed nothing.
pg_tls_cluster() {
  local dir=$1 port=$2
  mkdir -p "$dir/tls"
  chmod 755 "$dir" "$dir/tls"
  tls_make_ca "$dir/tls" ca
  tls_make_ca "$dir/tls" other-ca
  tls_make_server_cert "$dir/tls" ca
  chmod 644 "$dir/tls/server.key" # the copy in the data directory is the postgres user's, 0600
  pg_init "$dir/pg" "fsync = off" "full_page_writes = off" "ssl = on"
  pg_as install -m 600 "$dir/tls/server.crt" "$dir/pg/data/server.crt"
  pg_as install -m 600 "$dir/tls/server.key" "$dir/pg/data/server.key"
  printf '%s\n' "hostssl all all 127.0.0.1/32 trust" "hostssl replication all 127.0.0.1/32 trust" >"$dir/pg_hba.conf"
  pg_as cp "$dir/pg_hba.conf" "$dir/pg/data/pg_hba.conf"
  pg_start "$dir/pg" "$port"
}
