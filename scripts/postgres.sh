#!/usr/bin/env bash
# Start a throwaway PostgreSQL on 127.0.0.1 for the distributed-search tests and print its URL.
# Installs Debian's postgresql if needed (root). Stop it with: bash scripts/postgres.sh stop
set -euo pipefail
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
PGDATA=${PGDATA:-/tmp/autocls-pg}
PGPORT=${PGPORT:-54329}
if [ "${1:-}" = "stop" ]; then
  su postgres -c "$PGBIN/pg_ctl -D $PGDATA -m fast stop" >/dev/null 2>&1 || true
  exit 0
fi
if [ -z "$PGBIN" ]; then
  (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
su postgres -c "$PGBIN/pg_ctl -D $PGDATA -m fast stop" >/dev/null 2>&1 || true
rm -rf "$PGDATA" && mkdir -p "$PGDATA" && chown postgres "$PGDATA"
su postgres -c "$PGBIN/initdb -D $PGDATA -A trust -U postgres" >/dev/null
su postgres -c "$PGBIN/pg_ctl -D $PGDATA -o '-c listen_addresses=127.0.0.1 -p $PGPORT -k /tmp' -l $PGDATA/log -w start" >/dev/null
# trust authentication accepts any password: the tests use one to check it is never shown
echo "postgresql://postgres:s3cret-pw@127.0.0.1:$PGPORT/postgres"
