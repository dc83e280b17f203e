#!/usr/bin/env bash
# A project-local PostgreSQL (Debian's package) for the shared Prefect and MLflow servers (docs/SCALE.md).
#   bash scripts/pg.sh install   # apt-get install postgresql if missing (root; idempotent; no system cluster)
#   bash scripts/pg.sh start     # initdb once, start on $DAPL_PG_HOST:$DAPL_PG_PORT, databases prefect + mlflow
#   bash scripts/pg.sh url prefect|mlflow   # the SQLAlchemy URL of a database (password included)
#   bash scripts/pg.sh stop
# State in $DAPL_PG_DIR (default: .pg/ in the checkout; as root /var/lib/dapl-pg/<checkout hash>, since PostgreSQL
# refuses to run as root and runs as the unprivileged user dapl-pg, which may not reach the checkout). Binds to
# 127.0.0.1 unless DAPL_PG_HOST says otherwise; TCP only, password (scram-sha-256) from $DAPL_PG_DIR/password.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
source scripts/_procs.sh
PG_USER=dapl-pg
if [ "$(id -u)" = 0 ]; then
  PG_DIR="${DAPL_PG_DIR:-/var/lib/dapl-pg/$(printf %s "$ROOT" | sha1sum | cut -c1-12)}"
else
  PG_DIR="${DAPL_PG_DIR:-$ROOT/.pg}"
fi
HOST="${DAPL_PG_HOST:-127.0.0.1}"

die() { echo "pg.sh: $*" >&2; exit 1; }

bindir() {  # the newest installed server's bin folder
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] && [ -x "$d/postgres" ] && echo "$d"
}

as_pg() {  # run as the unprivileged database user when we are root, else as ourselves
  if [ "$(id -u)" = 0 ]; then setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups -- "$@"; else "$@"; fi
}

install_pg() {
  if [ -n "$(bindir)" ]; then echo "PostgreSQL present: $(bindir)"; else
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed; run 'sudo bash scripts/pg.sh install' (or apt-get install postgresql)"
    # no system-wide cluster: the package would otherwise create (and try to start) one on port 5432
    mkdir -p /etc/postgresql-common
    [ -e /etc/postgresql-common/createcluster.conf ] || echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Options::=--force-confold postgresql >/dev/null
    [ -n "$(bindir)" ] || die "apt-get install postgresql did not provide /usr/lib/postgresql/*/bin/postgres"
    echo "installed PostgreSQL: $(bindir)"
  fi
  ensure_user
}

ensure_user() {  # as root: the unprivileged user the server runs as (also where PostgreSQL came from elsewhere)
  if [ "$(id -u)" = 0 ] && ! id "$PG_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_USER"
  fi
}

init_pg() {  # initdb into $PG_DIR/data once (password auth on TCP, no unix socket)
  [ -f "$PG_DIR/data/PG_VERSION" ] && return 0
  [ -L "$PG_DIR" ] && die "$PG_DIR is a link; set DAPL_PG_DIR to a real folder"
  mkdir -p "$PG_DIR" && chmod 700 "$PG_DIR"
  [ "$(id -u)" = 0 ] && chown "$PG_USER:$PG_USER" "$PG_DIR"
  as_pg test -w "$PG_DIR" || die "$PG_USER cannot write $PG_DIR; set DAPL_PG_DIR to a folder it can reach"
  umask 077
  od -An -tx1 -N16 /dev/urandom | tr -d ' \n' | as_pg tee "$PG_DIR/password" >/dev/null
  as_pg "$(bindir)/initdb" -D "$PG_DIR/data" -U dapl --pwfile="$PG_DIR/password" --auth-host=scram-sha-256 \
    --auth-local=reject -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
}

url() {  # DB [DRIVER]
  echo "postgresql${2:++$2}://dapl:$(cat "$PG_DIR/password")@$HOST:$(cat "$PG_DIR/port")/$1"
}

start_pg() {
  [ -n "$(bindir)" ] || die "PostgreSQL is not installed; run 'bash scripts/pg.sh install' as root"
  ensure_user
  if is_running postgres; then echo "PostgreSQL already running on $HOST:$(cat "$PG_DIR/port")"; return 0; fi
  init_pg
  local port="${DAPL_PG_PORT:-$(.venv/bin/python -m flows.services free-port)}"
  echo "$port" >"$PG_DIR/port"
  local as=()
  [ "$(id -u)" = 0 ] && as=(setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups --)
  start_group postgres "${as[@]}" "$(bindir)/postgres" -D "$PG_DIR/data" -h "$HOST" -p "$port" \
    -c unix_socket_directories= -c max_connections=200
  local i
  for i in $(seq 120); do
    if PGPASSWORD="$(cat "$PG_DIR/password")" "$(bindir)/psql" -h "$HOST" -p "$port" -U dapl -d postgres -qAtc "select 1" >/dev/null 2>&1; then break; fi
    is_running postgres || { tail -20 "$RUN_DIR/postgres.log" >&2; die "PostgreSQL did not start"; }
    sleep 0.5
  done
  for db in prefect mlflow; do
    PGPASSWORD="$(cat "$PG_DIR/password")" "$(bindir)/psql" -h "$HOST" -p "$port" -U dapl -d postgres -qAtc \
      "select 1 from pg_database where datname = '$db'" | grep -q 1 \
      || PGPASSWORD="$(cat "$PG_DIR/password")" "$(bindir)/createdb" -h "$HOST" -p "$port" -U dapl "$db"
  done
  echo "PostgreSQL on $HOST:$port (data $PG_DIR/data, log $RUN_DIR/postgres.log); databases prefect, mlflow"
}

case "${1:-}" in
  install) install_pg ;;
  start) start_pg ;;
  stop)  # fast shutdown (clients' sessions are ended; a smart one would wait for the servers' pooled connections)
    if is_running postgres && [ -f "$PG_DIR/data/postmaster.pid" ]; then
      as_pg "$(bindir)/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    stop_group postgres 10 && echo "PostgreSQL stopped" ;;
  url) [ -f "$PG_DIR/port" ] || die "not started (no $PG_DIR/port)"; url "${2:?usage: pg.sh url prefect|mlflow [driver]}" "${3:-}" ;;
  *) echo "usage: bash scripts/pg.sh install|start|stop|url DB [DRIVER]" >&2; exit 2 ;;
esac
