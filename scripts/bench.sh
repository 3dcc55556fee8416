#!/usr/bin/env bash
# fabmeter benchmarks (docs/BENCHMARKS.md): builds in release mode, runs every bench, and prints a
# ready-to-paste summary. Needs mosquitto, victoria-metrics, node/npm (for the Node-RED peer) and
# GNU time (/usr/bin/time, package `time`; installed here with apt-get when missing and root).
#
#   scripts/bench.sh                    # everything
#   BENCH_ONLY=ingest scripts/bench.sh  # one part: ingest | billing | fleet | agent
#   (fleet is scripts/fleet.sh, FLEET_* variables there; not part of "everything": 30+ minutes)
#   BENCH_MESSAGES=50000 BENCH_ROUNDS=1 scripts/bench.sh   # a quick run
#   BENCH_PEER=0 scripts/bench.sh       # without the Node-RED peer
#   BENCH_INGEST_ARGS="--broker-inflight 1000" scripts/bench.sh   # extra ingest options
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
only=${BENCH_ONLY:-all}
messages=${BENCH_MESSAGES:-200000}
rounds=${BENCH_ROUNDS:-3}
out=${BENCH_OUT:-$root/target/bench}
mkdir -p "$out"

echo "== machine"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "ram: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "mosquitto: $(mosquitto -h 2>/dev/null | head -1 || echo '?')"
  echo "victoria-metrics: $(victoria-metrics --version 2>/dev/null | head -1 || echo '?')"
  echo "rustc: $(rustc --version)"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/machine.txt"

if [ "${BENCH_BUILD:-1}" = 1 ]; then
  cargo build --release --locked -p fabmeter-bench -p fabmeter-collector -p fabmeter-agent
fi
bin=$root/target/release

if [ ! -x /usr/bin/time ] && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq time >/dev/null || true
fi

if [ "$only" = all ] || [ "$only" = ingest ]; then
  echo "== ingest (a) bare subscriber vs (b) collector, alternating; latency; peer"
  peer=()
  if [ "${BENCH_PEER:-1}" = 1 ]; then
    if [ ! -x bench/peer/node_modules/.bin/node-red ]; then
      npm install --no-audit --no-fund --no-save --prefix bench/peer node-red >/dev/null
    fi
    rm -rf bench/peer/userdir && mkdir -p bench/peer/userdir
    ui_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    peer=(--peer-name "Node-RED $(node -p "require('$root/bench/peer/node_modules/node-red/package.json').version")"
          --peer-cmd "exec $root/bench/peer/node_modules/.bin/node-red --userDir $root/bench/peer/userdir --port $ui_port $root/bench/peer/flows.json")
  fi
  # shellcheck disable=SC2086
  "$bin/fabmeter-bench" ingest --messages "$messages" --rounds "$rounds" "${peer[@]}" ${BENCH_INGEST_ARGS:-} \
    | tee "$out/ingest.txt"
fi

if [ "$only" = all ] || [ "$only" = billing ]; then
  echo "== billing: a year of a 50-machine workshop"
  dir=$out/billing
  rm -rf "$dir"
  "$bin/fabmeter-bench" billing-ledger --dir "$dir" --sessions "${BENCH_SESSIONS:-500000}" | tee "$out/billing.txt"
  ls -l "$dir/ledger.sqlite" | tee -a "$out/billing.txt"
  total=0; peak=0
  for period in 2025-12 2026-01 2026-02 2026-03 2026-04 2026-05 2026-06 2026-07 2026-08 2026-09 2026-10 2026-11; do
    if [ -x /usr/bin/time ]; then
      /usr/bin/time -f "%e %M" -o "$dir/time.txt" "$bin/fabmeter-collector" invoice --config "$dir/site.toml" \
        --period "$period" --out "$dir/invoices" > "$dir/invoice-$period.txt"
      read -r secs kib < "$dir/time.txt"
    else
      start=$(date +%s.%N)
      "$bin/fabmeter-collector" invoice --config "$dir/site.toml" --period "$period" --out "$dir/invoices" > "$dir/invoice-$period.txt"
      secs=$(echo "$(date +%s.%N) - $start" | bc); kib=0
    fi
    n=$(grep -c '^' "$dir/invoice-$period.txt" || true)
    echo "invoice $period: ${secs} s, peak RSS $((kib / 1024)) MiB, $n output lines, load $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$out/billing.txt"
    total=$(echo "$total + $secs" | bc)
    [ "$kib" -gt "$peak" ] && peak=$kib
  done
  echo "| invoicing 12 months (one \`invoice\` run per month) | ${total} s in total, peak RSS $((peak / 1024)) MiB | |" | tee -a "$out/billing.txt"
fi

if [ "$only" = fleet ]; then
  FLEET_BUILD=0 BENCH_OUT=$out scripts/fleet.sh
fi

if [ "$only" = all ] || [ "$only" = agent ]; then
  echo "== agent: fabmeter-agent run, RSS and CPU over ${BENCH_AGENT_S:-60} s, idle and busy"
  dir=$out/agent
  rm -rf "$dir" && mkdir -p "$dir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$dir/mosquitto.conf"
  mosquitto -c "$dir/mosquitto.conf" 2> "$dir/mosquitto.log" &
  mpid=$!
  sleep 0.5
  # The retained device configs of the demo machines (laser-1 among them), as a collector would.
  "$bin/fabmeter-agent" simulate --demo --site bench --broker "mqtt://127.0.0.1:$port" --speed 100000 \
    --duration 1m 2> "$dir/configs.log"
  key=$(grep -o '"[0-9a-f]\{64\}"' agent/src/sim/mod.rs | head -1)
  : > "$out/agent.txt"
  for mode in idle busy; do
    {
      printf 'site = "bench"\ndata_dir = "%s"\nbadge_key = %s\n\n[mqtt]\nurl = "mqtt://127.0.0.1:%s"\n' "$dir/$mode" "$key" "$port"
      if [ "$mode" = idle ]; then
        printf '\n[[machines]]\nid = "laser-1"\n\n[[machines]]\nid = "laser-2"\n'
      else
        # An hour of the simulated workshop (08:45-09:45, opening at 09:00) in 60 s: busier than real.
        printf '\n[simulate]\nspeed = 60.0\n\n[[machines]]\nid = "laser-1"\nsimulate = "laser"\n'
      fi
    } > "$dir/$mode.toml"
    "$bin/fabmeter-agent" run --config "$dir/$mode.toml" 2> "$dir/$mode.log" &
    apid=$!
    sleep "${BENCH_AGENT_S:-60}"
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$apid/status")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$apid/status")
    cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$apid/stat")
    kill "$apid"; wait "$apid" || true
    echo "| agent $mode ($([ "$mode" = idle ] && echo '2 machines, no inputs' || echo '1 simulated laser at 60x')) | RSS $((rss / 1024)) MiB (peak $((hwm / 1024)) MiB), CPU $cpu s in ${BENCH_AGENT_S:-60} s |" | tee -a "$out/agent.txt"
  done
  kill "$mpid"; wait "$mpid" || true
fi

echo "== summary ($out)"
cat "$out/machine.txt"
[ -f "$out/ingest.txt" ] && sed -n '/^| figure/,$p' "$out/ingest.txt"
[ -f "$out/billing.txt" ] && grep '^| invoicing' "$out/billing.txt"
[ -f "$out/agent.txt" ] && cat "$out/agent.txt"
true
