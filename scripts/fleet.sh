#!/usr/bin/env bash
# Fleet run (docs/BENCHMARKS.md "Fleet"): N simulated machines, one MQTT connection each (or
# FLEET_PER_CONNECTION machines per connection), against a
# Mosquitto started here (max_connections -1) and one collector (auto-registering the machines),
# at real-time speed. Prints connect time, RSS and CPU of the simulator, Mosquitto and the
# collector, and events acknowledged by the broker vs committed to the ledger (zero loss).
#
#   scripts/fleet.sh                          # 1000, 5000 then 19000 machines, 10 sim minutes each
#   FLEET_MACHINES="1000" FLEET_DURATION=2m scripts/fleet.sh
#   FLEET_MACHINES=25000 FLEET_PER_CONNECTION=2 scripts/fleet.sh   # 12,500 connections
#
# Every connection is one file descriptor in the simulator and one in Mosquitto: the open-file
# limit (`ulimit -n`) must exceed the connection count. This script raises the soft limit to the hard one
# (or to FLEET_NOFILE); raising the hard limit needs root with CAP_SYS_RESOURCE (see docs/AGENT.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
sizes=${FLEET_MACHINES:-1000 5000 19000}
duration=${FLEET_DURATION:-10m}
speed=${FLEET_SPEED:-1}
start_after=${FLEET_START_AFTER:-5h}
rate=${FLEET_CONNECT_RATE:-500}
per_conn=${FLEET_PER_CONNECTION:-1}
out=${BENCH_OUT:-$root/target/bench}/fleet
mkdir -p "$out"

want=${FLEET_NOFILE:-65536}
ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "open-file limit: $(ulimit -n) (hard $(ulimit -Hn))"

if [ "${FLEET_BUILD:-1}" = 1 ]; then
  cargo build --release --locked -p fabmeter-agent -p fabmeter-collector
fi
bin=$root/target/release

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# "<peak RSS MiB> <CPU s>" of a running process.
usage() {
  local pid=$1 hwm ticks
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  echo "$((hwm / 1024)) $(echo "scale=1; $ticks / $(getconf CLK_TCK)" | bc)"
}

echo "| machines (per connection) | connect all | simulator RSS / CPU | Mosquitto RSS / CPU | collector RSS / CPU | events acked (distinct) / committed |" > "$out/summary.md"
echo "|---|---|---|---|---|---|" >> "$out/summary.md"
for n in $sizes; do
  conns=$(( (n + per_conn - 1) / per_conn ))
  if [ "$conns" -ge "$(ulimit -n)" ]; then
    echo "skip $n machines: $conns connections, open-file limit $(ulimit -n) (one descriptor per connection; FLEET_PER_CONNECTION=2 halves it)" | tee -a "$out/summary.md"
    continue
  fi
  dir=$out/$n
  rm -rf "$dir" && mkdir -p "$dir"
  mport=$(free_port); hport=$(free_port)
  cat > "$dir/mosquitto.conf" <<EOF
listener $mport 127.0.0.1
allow_anonymous true
max_connections -1
# Unlimited queue per client (default 1000): a collector that falls behind must not lose messages
# the broker already acknowledged to the devices.
max_queued_messages 0
persistence false
log_dest stderr
log_type error
log_type warning
EOF
  cat > "$dir/site.toml" <<EOF
[site]
id = "fleet"
auto_register = true

[mqtt]
url = "mqtt://127.0.0.1:$mport"

[ledger]
path = "$dir/ledger.sqlite"

[http]
listen = "127.0.0.1:$hport"

[devices]
publish_configs = false
EOF
  mosquitto -c "$dir/mosquitto.conf" 2> "$dir/mosquitto.log" &
  mpid=$!
  RUST_LOG=warn "$bin/fabmeter-collector" run --config "$dir/site.toml" 2> "$dir/collector.log" &
  cpid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$hport/metrics" 2>/dev/null | grep -q '^fabmeter_mqtt_connects_total [1-9]' && break
    sleep 0.2
  done
  echo "== $n machines on $conns connections, $duration at speed $speed (load $(cut -d' ' -f1-3 /proc/loadavg))"
  /usr/bin/time -f "%e %U %S %M" -o "$dir/sim.time" \
    "$bin/fabmeter-agent" simulate --broker "mqtt://127.0.0.1:$mport" --site fleet --machines "$n" \
    --speed "$speed" --duration "$duration" --start-after "$start_after" --connect-rate "$rate" \
    --machines-per-connection "$per_conn" \
    2>&1 | tee "$dir/sim.log" | grep -v '^sim time' || true
  distinct=$(sed -n 's/.*acknowledged (\([0-9]*\) distinct).*/\1/p' "$dir/sim.log")
  committed=0
  for _ in $(seq 300); do
    committed=$(sqlite3 "file:$dir/ledger.sqlite?mode=ro" 'select count(*) from events' 2>/dev/null || echo 0)
    [ "$committed" -ge "${distinct:-0}" ] && break
    sleep 0.2
  done
  read -r m_rss m_cpu < <(usage "$mpid")
  read -r c_rss c_cpu < <(usage "$cpid")
  kill "$cpid"; wait "$cpid" || true
  kill "$mpid"; wait "$mpid" || true
  read -r s_wall s_user s_sys s_kib < "$dir/sim.time"
  s_cpu=$(echo "$s_user + $s_sys" | bc)
  conn=$(sed -n 's/.*connected after \([0-9.]*\) s.*/\1/p' "$dir/sim.log")
  echo "| $n ($per_conn) | ${conn:-?} s | $((s_kib / 1024)) MiB / $s_cpu s | $m_rss MiB / $m_cpu s | $c_rss MiB / $c_cpu s | ${distinct:-?} / $committed |" \
    | tee -a "$out/summary.md"
  echo "   (simulator wall $s_wall s)"
done
echo "== summary ($out/summary.md)"
cat "$out/summary.md"
