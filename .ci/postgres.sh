#!/usr/bin/env bash
# Install (Debian's postgresql package), start a PostgreSQL server on loopback, and create the test user and database.
#
#   export AUTOTUNE_TEST_POSTGRES_URL="$(.ci/postgres.sh)"
#
# Prints the URL on stdout (everything else goes to stderr) and also writes `export AUTOTUNE_TEST_POSTGRES_URL=...`
# to $AUTOTUNE_POSTGRES_ENV (default .ci/postgres.env next to this script) for scripts that prefer to source a file.
# Runs as root on Debian 12; idempotent (a second run finds everything in place and only prints the URL); needs no
# systemd (uses pg_ctlcluster). The server listens on 127.0.0.1 only; the password is a throwaway for tests.
set -euo pipefail

PG_USER="${AUTOTUNE_PG_USER:-autotune}"
PG_PASSWORD="${AUTOTUNE_PG_PASSWORD:-autotune-test}"
PG_DB="${AUTOTUNE_PG_DB:-autotune_test}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENV_FILE="${AUTOTUNE_POSTGRES_ENV:-$HERE/postgres.env}"

log() { echo "postgres.sh: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs a package and starts a server); try: sudo $0"
    exit 1
fi

# 1. Install the server when it is missing (apt lists are refreshed only if the first attempt fails).
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends postgresql >&2; then
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends postgresql >&2
    fi
fi

# 2. A cluster: the package normally creates "<version> main"; create it if it is absent.
VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VERSION main"; then
    log "creating cluster $VERSION main"
    pg_createcluster "$VERSION" main >&2
fi
PORT="$(pg_lsclusters -h | awk -v v="$VERSION" '$1==v && $2=="main" {print $3}')"

# 3. Start it (no systemd needed) and wait until it accepts connections.
if ! pg_lsclusters -h | awk -v v="$VERSION" '$1==v && $2=="main" {print $4}' | grep -q online; then
    log "starting cluster $VERSION main on port $PORT"
    pg_ctlcluster "$VERSION" main start >&2
fi
for _ in $(seq 1 50); do
    if runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p "$PORT"; then break; fi
    sleep 0.2
done
runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p "$PORT" || { log "server did not come up on port $PORT"; exit 1; }

# 4. The test role and database (created, or password reset, every run).
psql_admin() { runuser -u postgres -- psql -p "$PORT" -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" = "1" ]; then
    psql_admin -c "ALTER ROLE \"$PG_USER\" LOGIN PASSWORD '$PG_PASSWORD'" >&2
else
    psql_admin -c "CREATE ROLE \"$PG_USER\" LOGIN PASSWORD '$PG_PASSWORD'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != "1" ]; then
    psql_admin -c "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_USER\"" >&2
fi

URL="postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$PORT/$PG_DB"
TMP="$(mktemp "$ENV_FILE.XXXXXX")"
echo "export AUTOTUNE_TEST_POSTGRES_URL='$URL'" >"$TMP"
mv -f "$TMP" "$ENV_FILE"
log "ready: $PG_USER@127.0.0.1:$PORT/$PG_DB (URL also in $ENV_FILE)"
echo "$URL"
