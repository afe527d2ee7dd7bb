#!/usr/bin/env bash
# SET latency while KEYS walks a large store: KEYS must not hold up writes.
#
#   apt-get install redis-tools
#   bench/keys-during-writes.sh
#
# Starts one `kv node` (release build), loads $KEYS keys, then runs `kv-bench` (SET only,
# 8 clients) for $SECONDS_ s while another client runs `KEYS *` over the whole store back to
# back, and reports the SET p99 and max and how many KEYS walks completed. The target on a
# 2-core machine: SET p99 under 20 ms with 1,000,000 keys.
#
# Environment:
#   KEYS=1000000      keys loaded before measuring
#   SECONDS_=10       how long to measure
#   KV=path/to/kv     the binary (default: target/release/kv, built if missing)
#   PORT_BASE=N       RESP port N, raft port N+1 (default 25379)
set -euo pipefail
cd "$(dirname "$0")/.."

keys=${KEYS:-1000000}
seconds=${SECONDS_:-10}
port=${PORT_BASE:-25379}
raft=$((port + 1))
kv=${KV:-target/release/kv}
[ -x "$kv" ] || cargo build -q --release -p kv
kv_bench=${KV_BENCH:-target/release/kv-bench}
[ -x "$kv_bench" ] || cargo build -q --release -p kv-bench
command -v redis-cli >/dev/null || { echo "needs redis-cli (apt-get install redis-tools)"; exit 1; }

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$kv" node --id 1 --data-dir "$work/n1" --raft-addr "127.0.0.1:$raft" \
  --resp-addr "127.0.0.1:$port" --initial-members "1=127.0.0.1:$raft" 2>"$work/kv.log" &
for _ in $(seq 1 150); do
  [ "$(redis-cli -p "$port" set ready 1 2>/dev/null)" = OK ] && break
  sleep 0.2
done

echo "loading $keys keys"
awk -v n="$keys" 'BEGIN {
  for (i = 0; i < n; i += 1000) {
    printf "*%d\r\n$4\r\nMSET\r\n", 1 + 2 * ((n - i < 1000) ? n - i : 1000)
    for (j = i; j < i + 1000 && j < n; j++) {
      k = "key:" j
      printf "$%d\r\n%s\r\n$1\r\nv\r\n", length(k), k
    }
  }
}' | redis-cli -p "$port" --pipe >/dev/null
echo "dbsize: $(redis-cli -p "$port" dbsize)"

walks="$work/walks"
: >"$walks"
# Walks back to back until told to stop; the walk under way then ends before the node stops.
(
  while [ ! -e "$work/stop" ]; do
    start=$(date +%s%N)
    n=$(redis-cli -p "$port" keys '*' | wc -l)
    echo "$n $(( ($(date +%s%N) - start) / 1000000 ))" >>"$walks"
  done
) &
walker=$!
"$kv_bench" --addrs "127.0.0.1:$port" --clients 8 --duration "$seconds" --warmup 1 \
  --reads 0 --keys 100000 --quiet --json "$work/set.json" --label "SET during KEYS"
touch "$work/stop"
wait "$walker" || true
python3 - "$work/set.json" "$walks" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency"]
walks = [l.split() for l in open(sys.argv[2]) if l.strip()]
done = [w for w in walks if len(w) == 2]
print(f"SET during KEYS: {r.get('ops_per_sec', 0):.0f} ops/s, p99 {lat['p99_us']/1000:.2f} ms, max {lat['max_us']/1000:.2f} ms")
if done:
    print(f"KEYS walks completed: {len(done)}, keys per walk {done[0][0]}, {sum(int(w[1]) for w in done)/len(done):.0f} ms each")
PY
