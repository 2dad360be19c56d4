#!/usr/bin/env bash
# Stops the test PostgreSQL server that scripts/start-postgres.sh started in <dir>.
set -euo pipefail

dir=${1:?usage: stop-postgres.sh <dir>}
[[ -f $dir/data/PG_VERSION ]] || exit 0
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
as_owner=()
[[ $(id -u) -eq 0 ]] && as_owner=(runuser -u postgres --)
"${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
