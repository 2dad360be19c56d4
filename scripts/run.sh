#!/usr/bin/env bash
# The one command that runs the system on a fresh Debian 12 machine: installs what it needs
# (scripts/setup-host.sh: libvirt, QEMU, protoc), builds both binaries, and runs the
# coordinator plus one agent on libvirt's built-in test driver (test:///default), both in
# the foreground. Ctrl-C stops both.
#
# Everything is kept under ./.run-data: the coordinator's database and generated JWT secret,
# the agent's data, and the generated agent token and admin password (mode 0600).
#
# Settings (all optional): ADMIN_USER (default admin), ADMIN_PASSWORD (generated once when
# unset), AGENT_TOKEN (generated once when unset), HTTP_ADDR (127.0.0.1:8080),
# GRPC_ADDR (127.0.0.1:50051), LIBVIRT_URI (test:///default), HOST_ID (hostname),
# RUN_DATA (./.run-data). Any other setting of either binary can be passed as its
# environment variable (see README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo is not installed (https://rustup.rs), or not on PATH" >&2
    exit 1
fi

echo "run.sh: checking host packages (libvirt, QEMU, protoc; the first run installs them)..."
if [[ $(id -u) -eq 0 ]]; then
    scripts/setup-host.sh >/dev/null
elif command -v sudo >/dev/null 2>&1; then
    sudo scripts/setup-host.sh >/dev/null
else
    echo "run.sh: scripts/setup-host.sh needs root; run this script as root" >&2
    exit 1
fi

locked=()
[[ -f Cargo.lock ]] && locked=(--locked)
cargo build --workspace --bins "${locked[@]}"

run_data=${RUN_DATA:-$PWD/.run-data}
mkdir -p "$run_data/coordinator" "$run_data/agent"
chmod 0700 "$run_data"

random_secret() { head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40; }

# A secret from the environment, else the one kept in $run_data/<file>, else a new one
# kept there. Prints the value.
kept_secret() {
    local value=$1 file=$run_data/$2
    if [[ -n $value ]]; then
        printf '%s' "$value"
    else
        if [[ ! -s $file ]]; then
            (umask 077 && random_secret >"$file")
        fi
        cat "$file"
    fi
}

export ADMIN_USER=${ADMIN_USER:-admin}
new_admin_password=0
if [[ -z ${ADMIN_PASSWORD:-} && ! -s $run_data/admin-password ]]; then
    new_admin_password=1
fi
ADMIN_PASSWORD=$(kept_secret "${ADMIN_PASSWORD:-}" admin-password)
AGENT_TOKEN=$(kept_secret "${AGENT_TOKEN:-}" agent-token)
export ADMIN_PASSWORD AGENT_TOKEN

export HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:8080}
export GRPC_ADDR=${GRPC_ADDR:-127.0.0.1:50051}
export DATA_DIR=$run_data/coordinator
export COORDINATOR_URL=http://$GRPC_ADDR
export LIBVIRT_URI=${LIBVIRT_URI:-test:///default}
export AGENT_DATA_DIR=$run_data/agent

pids=()
stop_all() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
# Ctrl-C or SIGTERM: stop both and end quietly.
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

# bash's /dev/tcp: whether something accepts connections at host:port (no curl needed).
port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

for addr in "$HTTP_ADDR" "$GRPC_ADDR"; do
    if port_open "$addr"; then
        echo "run.sh: $addr is already in use (another coordinator?); set HTTP_ADDR/GRPC_ADDR" >&2
        exit 1
    fi
done

target/debug/coordinator &
pids+=($!)

# Wait for the coordinator's HTTP port before starting the agent.
for _ in $(seq 1 100); do
    if port_open "$HTTP_ADDR"; then
        break
    fi
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        echo "run.sh: the coordinator exited during start; see its output above" >&2
        exit 1
    fi
    sleep 0.1
done

target/debug/agent &
pids+=($!)

cat <<INFO

  coordinator: http://$HTTP_ADDR   (agents connect to $GRPC_ADDR)
  agent:       ${HOST_ID:-$(hostname)} on $LIBVIRT_URI
  data:        $run_data
  admin user:  $ADMIN_USER
INFO
if [[ $new_admin_password -eq 1 ]]; then
    echo "  admin password (generated, shown once; kept in $run_data/admin-password): $ADMIN_PASSWORD"
else
    echo "  admin password: as given in ADMIN_PASSWORD, or kept in $run_data/admin-password"
fi
cat <<LOGIN
  log in:      curl -s -X POST http://$HTTP_ADDR/api/auth/login -H 'Content-Type: application/json' \\
                 -d '{"username":"$ADMIN_USER","password":"<the admin password>"}'
  Ctrl-C stops both.

LOGIN

# Whichever process ends first ends the session; the trap stops the other.
set +e
wait -n "${pids[@]}"
status=$?
echo "run.sh: a process exited (status $status); stopping the other" >&2
exit "$status"
