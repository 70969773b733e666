#!/usr/bin/env bash
# Start a throwaway PostgreSQL on 127.0.0.1 for the distributed-search tests and print its URL.
# Installs Debian's postgresql if needed (root). PGDATA and PGPORT choose the folder and the port.
#   bash scripts/postgres.sh                 a new, empty server (any old one in PGDATA is wiped)
#   bash scripts/postgres.sh stop            stop it
#   bash scripts/postgres.sh restart [SECS]  pg_ctl restart, its data kept, held down SECS seconds
#                                            (default 0) between the stop and the start: an outage
set -euo pipefail
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
PGDATA=${PGDATA:-/tmp/autocls-pg}
PGPORT=${PGPORT:-54329}
stop() { su postgres -c "$PGBIN/pg_ctl -D $PGDATA -m fast -w stop" >/dev/null 2>&1 || true; }
start() {
  su postgres -c "$PGBIN/pg_ctl -D $PGDATA -o '-c listen_addresses=127.0.0.1 -p $PGPORT -k /tmp' -l $PGDATA/log -w start" >/dev/null
}
case "${1:-}" in
  stop)
    stop
    exit 0
    ;;
  restart)
    stop
    sleep "${2:-0}"
    start
    exit 0
    ;;
esac
if [ -z "$PGBIN" ]; then
  (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
stop
rm -rf "$PGDATA" && mkdir -p "$PGDATA" && chown postgres "$PGDATA"
su postgres -c "$PGBIN/initdb -D $PGDATA -A trust -U postgres" >/dev/null
start
# trust authentication accepts any password: the tests use one to check it is never shown
echo "postgresql://postgres:s3cret-pw@127.0.0.1:$PGPORT/postgres"
