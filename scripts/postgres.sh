#!/usr/bin/env bash
# A private PostgreSQL server on 127.0.0.1 for tests and single-machine use (Debian's postgresql package).
#
#   scripts/postgres.sh start DIR [PORT]   # initialise DIR (once) and start; prints the server's URL
#   scripts/postgres.sh stop DIR
#
# The server listens on 127.0.0.1 only, with its socket in DIR, and trusts local connections: it is
# for tests and for one machine's workers, not for a cluster (docs/CLUSTER.md). initdb refuses to run
# as root, so as root the server runs as the `postgres` user.
set -euo pipefail
cmd=${1:?usage: postgres.sh start|stop DIR [PORT]}
dir=${2:?usage: postgres.sh start|stop DIR [PORT]}
port=${3:-54329}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [[ -z "$bin" ]]; then
    echo "PostgreSQL is not installed: apt-get install -y postgresql" >&2
    exit 3
fi
as_owner() {
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$cmd" in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ $(id -u) == 0 ]]; then chown postgres "$dir"; fi
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
    ;;
*)
    echo "usage: postgres.sh start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
