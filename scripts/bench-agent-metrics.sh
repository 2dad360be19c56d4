#!/usr/bin/env bash
# Benchmark: the agent's /metrics against prometheus-libvirt-exporter on real libvirtd + QEMU.
#
# Defines and starts DOMAINS small transient domains (64 MiB, a tiny qcow2 disk, TCG, one
# tap interface each), runs the agent (release build) and the exporter on loopback, scrapes
# them alternately N times, and prints the median and p90 scrape time, each process's RSS,
# and the metric families each one exposes. The agent is measured in each of MODES:
#   sampled    the default: libvirt statistics collected in the background every
#              METRICS_SAMPLE_INTERVAL_MS (5 s) while someone scrapes; a scrape serves them
#   per-scrape METRICS_SAMPLE_INTERVAL_MS=0: every scrape makes the bulk-stats call itself
#
# Needs root, libvirtd answering at qemu:///system with the storage driver (see
# scripts/setup-host.sh) and cargo; installs prometheus-libvirt-exporter if missing. Never
# restarts libvirtd. Removes every domain, pool and file it made, also when interrupted.
#
#   scripts/bench-agent-metrics.sh                 # N=200 DOMAINS=10 MODES="sampled per-scrape"
#   N=50 DOMAINS=3 MODES=per-scrape scripts/bench-agent-metrics.sh
set -euo pipefail

N=${N:-200}
DOMAINS=${DOMAINS:-10}
MODES=${MODES:-"sampled per-scrape"}
AGENT_PORT=${AGENT_PORT:-19177}
EXPORTER_PORT=${EXPORTER_PORT:-19178}
DOMAIN_TYPE=${DOMAIN_TYPE:-qemu}
URI=qemu:///system

cd "$(dirname "$0")/.."
root_dir=$(pwd)

if [[ $(id -u) -ne 0 ]]; then
    echo "bench-agent-metrics.sh: run as root (QEMU domains, tap devices)" >&2
    exit 1
fi
if ! virsh -c "$URI" version >/dev/null 2>&1; then
    echo "bench-agent-metrics.sh: libvirtd does not answer at $URI; run scripts/setup-host.sh" >&2
    exit 1
fi
missing=()
command -v prometheus-libvirt-exporter >/dev/null 2>&1 || missing+=(prometheus-libvirt-exporter)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)
if [[ ${#missing[@]} -gt 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

tag="vmmbench$$"
work=$(mktemp -d "/tmp/$tag.XXXXXX")
# QEMU runs as another user and must reach the disks.
chmod 0711 "$work"
pool="$tag"
agent_pid=""
exporter_pid=""

cleanup() {
    set +e
    [[ -n $agent_pid ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
    [[ -n $exporter_pid ]] && kill "$exporter_pid" 2>/dev/null && wait "$exporter_pid" 2>/dev/null
    for name in $(virsh -c "$URI" list --all --name 2>/dev/null | grep "^$tag-"); do
        virsh -q -c "$URI" destroy "$name" >/dev/null 2>&1
        virsh -q -c "$URI" undefine "$name" >/dev/null 2>&1
    done
    if virsh -c "$URI" pool-info "$pool" >/dev/null 2>&1; then
        virsh -q -c "$URI" pool-destroy "$pool" >/dev/null 2>&1
        virsh -q -c "$URI" pool-undefine "$pool" >/dev/null 2>&1
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for_http() {
    local url=$1
    for _ in $(seq 1 150); do
        curl -fs -o /dev/null "$url" && return 0
        sleep 0.2
    done
    echo "bench-agent-metrics.sh: $url never answered" >&2
    return 1
}

echo "== build"
build_start=$(date +%s%N)
cargo build --release -q -p vmm-agent
echo "cargo build --release -p vmm-agent: $((($(date +%s%N) - build_start) / 1000000)) ms"
agent_bin="$root_dir/target/release/agent"

echo "== $DOMAINS domains ($DOMAIN_TYPE, 64 MiB, 16 MiB qcow2 disk, one tap interface)"
mkdir -p "$work/disks"
chmod 0755 "$work/disks"
for i in $(seq 1 "$DOMAINS"); do
    disk="$work/disks/$i.qcow2"
    qemu-img create -q -f qcow2 "$disk" 16M
    cat >"$work/domain-$i.xml" <<EOF
<domain type='$DOMAIN_TYPE'>
  <name>$tag-$i</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='ethernet'>
      <target dev='vb$$-$i'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <memballoon model='virtio'/>
  </devices>
</domain>
EOF
    virsh -q -c "$URI" create "$work/domain-$i.xml" >/dev/null
done
virsh -c "$URI" list

echo "== exporter on 127.0.0.1:$EXPORTER_PORT"
prometheus-libvirt-exporter --web.listen-address="127.0.0.1:$EXPORTER_PORT" \
    --libvirt.uri="$URI" >"$work/exporter.log" 2>&1 &
exporter_pid=$!
wait_for_http "http://127.0.0.1:$EXPORTER_PORT/metrics"

for mode in $MODES; do
    case $mode in
        sampled) interval_ms=5000 ;;
        per-scrape) interval_ms=0 ;;
        *) echo "bench-agent-metrics.sh: unknown mode $mode" >&2; exit 2 ;;
    esac
    echo
    echo "== agent ($mode, METRICS_SAMPLE_INTERVAL_MS=$interval_ms) on 127.0.0.1:$AGENT_PORT"
    # No coordinator listens at port 9: the agent retries in the background and serves
    # metrics all the same.
    AGENT_TOKEN=bench HOST_ID=bench LIBVIRT_URI="$URI" STORAGE_POOL="$pool" \
        AGENT_DATA_DIR="$work/agent" COORDINATOR_URL=http://127.0.0.1:9 \
        METRICS_ADDR="127.0.0.1:$AGENT_PORT" METRICS_SAMPLE_INTERVAL_MS=$interval_ms \
        RUST_LOG=error "$agent_bin" >"$work/agent-$mode.log" 2>&1 &
    agent_pid=$!
    wait_for_http "http://127.0.0.1:$AGENT_PORT/metrics"

    python3 - "$N" "$AGENT_PORT" "$agent_pid" "$EXPORTER_PORT" "$exporter_pid" "$mode" <<'PY'
import http.client, statistics, sys, time

n, agent_port, agent_pid, exporter_port, exporter_pid, mode = sys.argv[1:]
n = int(n)
targets = {
    "agent": (int(agent_port), agent_pid),
    "exporter": (int(exporter_port), exporter_pid),
}
connections = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=30)
               for name, (port, _) in targets.items()}

def scrape(name):
    connection = connections[name]
    started = time.perf_counter()
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        sys.exit(f"{name}: HTTP {response.status}")
    return elapsed, body.decode()

def status_kib(pid, key, path="status"):
    with open(f"/proc/{pid}/{path}") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1])
    return 0

def memory_mib(pid):
    """RSS, and where it lives: the shared libraries both processes load (libvirt and its
    ~60 dependencies), the program's own file, the rest (heap, stacks); plus PSS and USS."""
    libs = own = 0
    exe = __import__("os").readlink(f"/proc/{pid}/exe")
    with open(f"/proc/{pid}/smaps") as smaps:
        name = ""
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                name = fields[5] if len(fields) > 5 else ""
            elif fields[0] == "Rss:":
                if name == exe:
                    own += int(fields[1])
                elif name.endswith(".so") or ".so." in name:
                    libs += int(fields[1])
    uss = (status_kib(pid, "Private_Clean:", "smaps_rollup")
           + status_kib(pid, "Private_Dirty:", "smaps_rollup"))
    return {
        "rss": status_kib(pid, "VmRSS:") / 1024,
        "peak": status_kib(pid, "VmHWM:") / 1024,
        "libs": libs / 1024,
        "exe": own / 1024,
        # heap, stacks and other mappings: what is neither a library nor the program file
        "rest": (status_kib(pid, "VmRSS:") - libs - own) / 1024,
        "pss": status_kib(pid, "Pss:", "smaps_rollup") / 1024,
        "uss": uss / 1024,
    }

for _ in range(5):  # warm-up: connections, caches, the agent's first collection
    for name in targets:
        scrape(name)
times = {name: [] for name in targets}
bodies = {}
for _ in range(n):
    for name in targets:  # alternately
        elapsed, bodies[name] = scrape(name)
        times[name].append(elapsed)

def families(body):
    return {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}

def value(body, name):
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None

print(f"{n} scrapes each, alternating; agent mode: {mode}")
print(f"{'':10} {'median ms':>10} {'p90 ms':>8} {'max ms':>8} {'series':>7}"
      f" | MiB: {'RSS':>5} {'peak':>5} = {'libs':>5} + {'exe':>5} + {'rest':>5}   {'PSS':>5} {'USS':>5}")
memory = {}
for name, (_, pid) in targets.items():
    ordered = sorted(times[name])
    median = statistics.median(ordered) * 1000
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * len(ordered))) - 1)] * 1000
    m = memory[name] = memory_mib(pid)
    series = sum(1 for line in bodies[name].splitlines() if line and not line.startswith("#"))
    print(f"{name:10} {median:10.2f} {p90:8.2f} {ordered[-1] * 1000:8.2f} {series:7}"
          f" |      {m['rss']:5.1f} {m['peak']:5.1f}   {m['libs']:5.1f}   {m['exe']:5.1f}   {m['rest']:5.1f}"
          f"   {m['pss']:5.1f} {m['uss']:5.1f}")
a, e = (statistics.median(times[k]) for k in ("agent", "exporter"))
ratio = lambda key: memory["agent"][key] / memory["exporter"][key]
print(f"agent/exporter: median scrape time {a / e:.2f} (target < 0.33), RSS {ratio('rss'):.2f}"
      f" (target < 0.50), RSS outside the shared libraries"
      f" {(memory['agent']['rss'] - memory['agent']['libs']) / (memory['exporter']['rss'] - memory['exporter']['libs']):.2f},"
      f" USS {ratio('uss'):.2f}")
duration = value(bodies["agent"], "agent_libvirt_stats_duration_seconds")
if duration is not None:
    print(f"agent's latest bulk-stats collection took {duration * 1000:.1f} ms "
          f"(libvirt_domains_number {value(bodies['agent'], 'libvirt_domains_number'):.0f})")

agent_families, exporter_families = families(bodies["agent"]), families(bodies["exporter"])
runtime = lambda name: name.startswith(("go_", "promhttp_"))
print("metric families in both:")
for name in sorted(agent_families & exporter_families):
    print(f"  {name}")
print("only the exporter (Go runtime and promhttp families aside):")
for name in sorted(exporter_families - agent_families):
    if not runtime(name):
        print(f"  {name}")
print(f"  (+ {sum(1 for f in exporter_families - agent_families if runtime(f))} go_*/promhttp_* families)")
print("only the agent:")
for name in sorted(agent_families - exporter_families):
    print(f"  {name}")

def libvirt_series(body, drop=("vm_id",)):
    """The libvirt_* series as (name, labels) with the agent's extra labels left out."""
    series = {}
    for line in body.splitlines():
        if not line.startswith("libvirt_"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, labels = key.partition("{")
        pairs = []
        for pair in labels.rstrip("}").split('",') if labels else []:
            label, _, text = pair.partition("=")
            if label not in drop:
                pairs.append((label, text.strip('"')))
        series[(name, tuple(sorted(pairs)))] = float(value)
    return series

agent_series, exporter_series = libvirt_series(bodies["agent"]), libvirt_series(bodies["exporter"])
shared = agent_series.keys() & exporter_series.keys()
print(f"libvirt_* series (labels compared without the agent's vm_id): {len(shared)} in both,"
      f" {len(agent_series.keys() - shared)} only in the agent,"
      f" {len(exporter_series.keys() - shared)} only in the exporter")
for key in sorted(agent_series.keys() ^ exporter_series.keys())[:10]:
    print(f"  differs: {key}")
gauges = ("libvirt_domain_info_virtual_cpus", "libvirt_domain_info_maximum_memory_bytes",
          "libvirt_domain_state_code", "libvirt_domains_number", "libvirt_up")
unequal = [key for key in shared if key[0] in gauges and agent_series[key] != exporter_series[key]]
print(f"  gauges with different values: {len(unequal)}")
PY
    if command -v promtool >/dev/null 2>&1; then
        curl -fs "http://127.0.0.1:$AGENT_PORT/metrics" | promtool check metrics \
            && echo "promtool check metrics: agent output accepted"
    fi
    kill "$agent_pid"
    wait "$agent_pid" 2>/dev/null || true
    agent_pid=""
done
