#!/usr/bin/env bash
# Starts a throw-away PostgreSQL server for the tests, on loopback only, and prints the URL of
# its administrative database (`postgres://vmm@127.0.0.1:<port>/postgres`). The tests create
# a fresh database per test from there (VMM_TEST_POSTGRES_URL); nothing is assumed running.
#
#   scripts/start-postgres.sh <dir>    # cluster in <dir> (created; reused if it exists)
#   scripts/stop-postgres.sh <dir>     # stops it (`pg_ctl stop`)
#
# The server binaries come from Debian's `postgresql` package (installed here if missing,
# as root). PostgreSQL refuses to run as root: when run as root, the cluster belongs to the
# `postgres` system user. It listens on 127.0.0.1 only, on the first free port from 55432,
# with a Unix socket in <dir> (never /var/run), and trusts local connections: it is a test
# server, reachable from this machine only, holding nothing but test data.
set -euo pipefail

dir=${1:?usage: start-postgres.sh <dir>}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

find_bin() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    [[ -n $found && -x $found/initdb ]] && echo "$found"
}

bin=$(find_bin || true)
if [[ -z $bin ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "start-postgres.sh: PostgreSQL is not installed; run as root to install it (apt-get install postgresql)" >&2
        exit 1
    fi
    echo "start-postgres.sh: installing PostgreSQL from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
    bin=$(find_bin)
fi

# Run the server as an unprivileged user.
as_owner=()
if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$dir"
    as_owner=(runuser -u postgres --)
fi

if [[ ! -f $dir/data/PG_VERSION ]]; then
    "${as_owner[@]}" "$bin/initdb" -D "$dir/data" -U vmm --auth=trust --encoding=UTF8 \
        --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
fi

if [[ -f $dir/port ]] && "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    port=$(cat "$dir/port")
else
    # The first port from 55432 that nothing listens on. Another run on this machine may
    # probe the same port at the same moment: when the server then cannot bind it, the next
    # free port is tried.
    port=55432
    started=
    for _ in $(seq 1 20); do
        while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
            port=$((port + 1))
        done
        rm -f "$dir/server.log"
        # Enough connections for two coordinators per test and tests running in parallel;
        # fsync off: a test database need not survive a power cut.
        if "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-h 127.0.0.1 -p $port -k $dir -c max_connections=400 -c fsync=off \
                -c synchronous_commit=off -c full_page_writes=off" start >&2; then
            started=1
            break
        fi
        grep -q "Address already in use" "$dir/server.log" 2>/dev/null ||
            { cat "$dir/server.log" >&2; exit 1; }
        echo "start-postgres.sh: port $port was taken meanwhile; trying the next one" >&2
        port=$((port + 1))
    done
    [[ -n $started ]] || { cat "$dir/server.log" >&2; exit 1; }
    echo "$port" >"$dir/port"
fi

echo "postgres://vmm@127.0.0.1:$port/postgres"
