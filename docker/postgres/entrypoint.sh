#!/bin/sh
# First start: initdb with POSTGRES_USER / POSTGRES_PASSWORD (scram-sha-256) and create POSTGRES_DB; then run
# the server on $PGPORT with the given arguments (-c name=value) until SIGTERM. Later starts reuse the data folder as it is.
set -eu
BIN="$(ls -d /usr/lib/postgresql/*/bin | head -1)"
: "${POSTGRES_USER:?set POSTGRES_USER}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" "${POSTGRES_DB:?set POSTGRES_DB}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw="$(mktemp)"
  printf '%s' "$POSTGRES_PASSWORD" > "$pw"
  "$BIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" --auth=scram-sha-256 --encoding=UTF8 >/dev/null
  rm -f "$pw"
  "$BIN/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses= -c unix_socket_directories=/tmp" start >/dev/null
  PGPASSWORD="$POSTGRES_PASSWORD" "$BIN/createdb" -h /tmp -U "$POSTGRES_USER" "$POSTGRES_DB"
  "$BIN/pg_ctl" -D "$PGDATA" -w -m fast stop >/dev/null
  echo "initialised $PGDATA with database $POSTGRES_DB"
fi
exec "$BIN/postgres" -D "$PGDATA" -p "$PGPORT" -c unix_socket_directories=/tmp "$@"  # "$@": -c settings
