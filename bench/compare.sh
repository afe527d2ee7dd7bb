#!/usr/bin/env bash
# Compares raftkit's kv cluster with etcd and durable Redis on this machine, in one run.
#
#   apt-get install redis-tools redis-server etcd-server etcd-client   # the comparison targets
#   bench/compare.sh
#
# Starts, one after another so they never compete for the CPU or the disk:
#   * raftkit: a 3-node kv cluster (three processes, fsync before every acknowledgement);
#   * etcd:    a 3-node cluster of Debian's etcd-server (skipped if `etcd` or `etcdctl` is missing);
#   * Redis:   one redis-server with appendonly yes, appendfsync always (skipped if absent).
# Each gets the same closed-loop load on its leader: SET of 256-byte values over 100,000 keys
# at 1, 16, 64 and 256 clients, pipelined SETs (16 in flight per connection) at 1 and 16
# clients, then linearizable GETs at 64 clients. Redis-protocol targets are
# driven by redis-benchmark, etcd by `kv-bench --protocol etcd` (etcd's v3 gRPC API, Put and
# linearizable Range; 16 clients share an HTTP/2 connection). All data lives under one
# directory ($BENCH_DIR, default a new temporary directory), so every target fsyncs to the same
# file system. It prints two tables: throughput and latency, and what each request cost the
# target's server processes (CPU time and context switches, from /proc).
#
# Environment:
#   BENCH_SCALE=0.2      fewer requests per point (default 1; 1 is ~10 s per point on a laptop)
#   BENCH_CLIENTS="1 64" which client counts to run (default "1 16 64 256")
#   BENCH_PIPELINED="1"  client counts of the pipelined SET rows, 16 commands in flight per
#                        connection (redis-benchmark -P 16; default "1 16"; "" skips them)
#   BENCH_DIR=/path      where data, logs and results go (default mktemp -d); the data is
#                        removed at exit, the logs and results.csv stay (one row per point:
#                        target, workload, clients, ops/s, p50 and p99 in ms, the percent of
#                        the machine's CPU time a virtual machine's host took while it ran, and
#                        the target's server CPU time in µs and context switches per request)
#   BENCH_PORT_BASE=N    first of the ~20 local ports used (default 24000)
#   BENCH_TARGETS="raftkit etcd redis"  which targets to run
#   BENCH_ROUNDS=N       run every target N times, interleaved, and report each cell's median
#                        (default 1; use 3 or 5 on a shared or noisy machine)
#   BENCH_MAX_STEAL=P    run a point again while the host took more than P percent of the CPU
#                        during it ("steal"; off by default), at most BENCH_RETRIES more times
#                        (default 2), and keep the attempt with the least steal
#   BENCH_KV_AUTH=1      run the kv nodes secured: peers authenticate with a cluster secret
#                        (--cluster-secret-file) and clients with a password (--requirepass-file)
set -euo pipefail

cd "$(dirname "$0")/.."
SCALE=${BENCH_SCALE:-1}
CLIENTS=${BENCH_CLIENTS:-"1 16 64 256"}
PIPELINED=${BENCH_PIPELINED-"1 16"}
TARGETS=${BENCH_TARGETS:-"raftkit etcd redis"}
ROUNDS=${BENCH_ROUNDS:-1}
MAX_STEAL=${BENCH_MAX_STEAL:-}
RETRIES=${BENCH_RETRIES:-2}
BASE=${BENCH_PORT_BASE:-24000}
DIR=${BENCH_DIR:-$(mktemp -d -t raftkit-bench.XXXXXX)}
RESULTS="$DIR/results.csv"
KV= # set after the build, from cargo metadata
KV_BENCH= # likewise
PIDS=()

need() { command -v "$1" >/dev/null 2>&1; }
say() { printf '\n== %s\n' "$*" >&2; }
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
clear_data() { rm -rf "${DIR:?}/kv" "${DIR:?}/etcd" "${DIR:?}/redis"; }
# On exit the servers stop and their data (about 1 GiB per run) goes; logs and results stay.
trap 'cleanup; clear_data' EXIT
stop_all() { cleanup; PIDS=(); }

# Requests per point: enough for ~10 s at the throughput each client count usually reaches.
requests() {
    local c=$1 n
    case $c in
        1) n=5000 ;;
        16) n=40000 ;;
        64) n=100000 ;;
        *) n=200000 ;;
    esac
    awk -v n="$n" -v s="$SCALE" 'BEGIN { r = int(n * s); print (r < 100 ? 100 : r) }'
}

# wait_until <seconds> <description> <command...>: polls the command until it succeeds.
wait_until() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "compare.sh: timed out waiting for $what" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# The machine's CPU counters (the "cpu" line of /proc/stat), to tell how much CPU a virtual
# machine's host took away while a point ran ("steal"); empty where there is no /proc/stat.
cpu_counters() { head -n 1 /proc/stat 2>/dev/null || true; }

# steal_since <counters>: percent of the CPU time since <counters> that was stolen (fields 2-9 of
# the "cpu" line are user, nice, system, idle, iowait, irq, softirq and steal).
steal_since() {
    printf '%s\n%s\n' "$1" "$(cpu_counters)" | awk '
        NR == 1 { for (i = 2; i <= 9; i++) a[i] = $i }
        NR == 2 { for (i = 2; i <= 9; i++) t += $i - a[i]; s = $9 - a[9] }
        END { if (t > 0) printf "%.1f", 100 * s / t }'
}

# What the running target's server processes (PIDS) have used so far: "<cpu ticks> <context
# switches>". The CPU time is each process's own total from /proc/<pid>/stat: utime + stime of
# every thread, exited ones included, plus cutime + cstime of the children it has reaped (Redis
# rewrites its append-only file in a forked child). The switches, voluntary and not, are summed
# over the threads alive now, so those of a thread that ended since the last reading are lost
# (servers here keep their threads; a blocking-pool thread that idles out loses a few). Empty
# where there is no /proc, or when a server has exited: its usage would vanish from the sum.
server_usage() {
    local p n=0 files=()
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] || continue
        files+=("/proc/$p/stat" "/proc/$p"/task/*/status)
        n=$((n + 1))
    done
    [ "$n" -gt 0 ] || return 0
    # A thread may end between the glob and the read: cat skips it, goes on, and fails, which
    # must not end the run (errexit, pipefail). A missing process is caught by its stat line.
    { cat "${files[@]}" 2>/dev/null || true; } | awk -v want="$n" '
        /^[0-9]+ \(/ { got++; sub(/^.*\) /, ""); ticks += $12 + $13 + $14 + $15; next } # $1 is field 3
        /^(nonv|v)oluntary_ctxt_switches:/ { cs += $2 }
        END { if (got == want) print ticks, cs + 0 }'
}

# per_request <usage before> <usage after> <requests>: "<cpu µs>,<switches>" per request, or ","
# when either reading is missing. Readings are whole clock ticks (10 ms on Linux) per process.
per_request() {
    [ -n "$1" ] && [ -n "$2" ] || { echo ","; return; }
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK 2>/dev/null || echo 100)" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        printf "%.1f,%.2f", (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) / n }'
}

# record <target> <workload> <clients> <requests>: reads a redis-benchmark-style CSV on stdin and
# appends target,workload,clients,rps,p50_ms,p99_ms,steal_pct,cpu_us,switches to the results,
# the last two per request. It starts with the load generator on the other end of the pipe and
# ends after its output, so the steal and the servers' usage cover the run.
record() {
    local before usage point
    before=$(cpu_counters)
    usage=$(server_usage)
    point=$(awk -F'","' -v t="$1" -v w="$2" -v c="$3" 'NR == 2 {
        gsub(/"/, "", $0); split($0, f, ",");
        printf "%s,%s,%s,%s,%s,%s", t, w, c, f[2], f[5], f[7] }')
    [ -n "$point" ] && printf '%s,%s,%s\n' "$point" "$(steal_since "$before")" \
        "$(per_request "$usage" "$(server_usage)" "$4")" >>"$RESULTS"
    tail -n 1 "$RESULTS" | awk -F, '{ printf "   %-8s %-7s c=%-4s %10.0f ops/s  p50 %6.2f ms  p99 %7.2f ms  steal %s%%  cpu %s us, %s switches per request\n", $1, $2, $3, $4, $5, $6, $7, ($8 == "" ? "-" : $8), ($9 == "" ? "-" : $9) }' >&2
}

# point <target> <workload> <clients> <requests> <load command...>: runs the load command into
# record. With BENCH_MAX_STEAL set, a point whose steal passed it runs again on the same
# servers (keeping the data the earlier attempts wrote), at most RETRIES more times, and the
# attempt with the least steal is the one kept in the results.
point() {
    local t=$1 w=$2 c=$3 n=$4 tries=0 lines row best="" steal
    shift 4
    while :; do
        lines=$(wc -l <"$RESULTS")
        "$@" | record "$t" "$w" "$c" "$n"
        # No new row: the load failed, and there is nothing to retry on.
        [ "$(wc -l <"$RESULTS")" -gt "$lines" ] || return 0
        row=$(tail -n 1 "$RESULTS")
        steal=$(cut -d, -f7 <<<"$row")
        if [ -z "$best" ] || awk -v a="$steal" -v b="$(cut -d, -f7 <<<"$best")" 'BEGIN { exit !(a + 0 < b + 0) }'; then
            best=$row
        fi
        if [ -z "$MAX_STEAL" ] || [ -z "$steal" ] || [ "$tries" -ge "$RETRIES" ] ||
            awk -v s="$steal" -v m="$MAX_STEAL" 'BEGIN { exit !(s + 0 <= m + 0) }'; then
            break
        fi
        tries=$((tries + 1))
        say "$t $w c=$c: steal $steal% is above $MAX_STEAL%; again ($tries of $RETRIES)"
        sed -i '$d' "$RESULTS"
    done
    if [ "$row" != "$best" ]; then
        sed -i '$d' "$RESULTS"
        printf '%s\n' "$best" >>"$RESULTS"
        say "$t $w c=$c: kept the attempt at $(cut -d, -f7 <<<"$best")% steal"
    fi
}

# redis_load <port> [redis-benchmark options]: one redis-benchmark run, its CSV on stdout.
redis_load() {
    local port=$1
    shift
    redis-benchmark -h 127.0.0.1 -p "$port" "$@" --csv 2>/dev/null
}

resp_load() { # <target> <port> [redis-benchmark options]
    local t=$1 port=$2 c n
    shift 2
    for c in $CLIENTS; do
        n=$(requests "$c")
        point "$t" set "$c" "$n" redis_load "$port" "$@" -t set -d 256 -r 100000 -c "$c" -n "$n"
    done
    # GETs run right after the plain SETs, so what they read and what the nodes are still doing
    # (snapshots, log compaction) does not depend on which pipelined rows are chosen.
    n=$(requests 256)
    point "$t" get 64 "$n" redis_load "$port" "$@" -t get -d 256 -r 100000 -c 64 -n "$n"
    # Pipelined: each connection keeps 16 SETs in flight (etcd's API has no pipelining, so its
    # cells in these rows stay empty).
    n=$(requests 64)
    for c in $PIPELINED; do
        point "$t" set-P16 "$c" "$n" redis_load "$port" "$@" -t set -d 256 -r 100000 -c "$c" -P 16 -n "$n"
    done
}

run_raftkit() {
    say "raftkit: 3 kv processes"
    local members="1=127.0.0.1:$((BASE + 11)),2=127.0.0.1:$((BASE + 12)),3=127.0.0.1:$((BASE + 13))" i
    local secure=() auth=()
    if [ "${BENCH_KV_AUTH:-0}" = 1 ]; then
        mkdir -p "$DIR/kv"
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/kv/secret"
        echo bench-password >"$DIR/kv/pass"
        secure=(--cluster-secret-file "$DIR/kv/secret" --requirepass-file "$DIR/kv/pass")
        auth=(-a bench-password)
    fi
    for i in 1 2 3; do
        "$KV" node --id "$i" --data-dir "$DIR/kv/$i" --raft-addr "127.0.0.1:$((BASE + 10 + i))" \
            --resp-addr "127.0.0.1:$((BASE + i))" --initial-members "$members" "${secure[@]}" \
            >"$DIR/kv-$i.log" 2>&1 &
        PIDS+=($!)
    done
    local leader=""
    local deadline=$((SECONDS + 30))
    while [ -z "$leader" ]; do
        for i in 1 2 3; do
            if redis-cli -p $((BASE + i)) "${auth[@]}" --no-auth-warning info replication 2>/dev/null | grep -q 'raft_role:leader'; then
                leader=$((BASE + i))
            fi
        done
        [ $SECONDS -ge $deadline ] && { echo "compare.sh: no kv leader after 30 s" >&2; exit 1; }
        [ -z "$leader" ] && sleep 0.2
    done
    resp_load raftkit "$leader" "${auth[@]}"
    stop_all
}

run_etcd() {
    if ! need etcd || ! need etcdctl; then
        say "etcd: not installed (apt-get install etcd-server etcd-client), skipped"
        return
    fi
    say "etcd: 3 members"
    local cluster="e1=http://127.0.0.1:$((BASE + 31)),e2=http://127.0.0.1:$((BASE + 32)),e3=http://127.0.0.1:$((BASE + 33))" i
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$DIR/etcd/$i" \
            --listen-client-urls "http://127.0.0.1:$((BASE + 20 + i))" \
            --advertise-client-urls "http://127.0.0.1:$((BASE + 20 + i))" \
            --listen-peer-urls "http://127.0.0.1:$((BASE + 30 + i))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 30 + i))" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token raftkit-bench --logger zap --log-level error \
            >"$DIR/etcd-$i.log" 2>&1 &
        PIDS+=($!)
    done
    local endpoints="127.0.0.1:$((BASE + 21)),127.0.0.1:$((BASE + 22)),127.0.0.1:$((BASE + 23))"
    wait_until 30 "etcd to elect a leader" env ETCDCTL_API=3 etcdctl --endpoints "$endpoints" put warmup 1
    local leader
    leader=$(ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w table |
        awk -F'|' '$0 ~ /true/ { gsub(/ /, "", $2); print $2; exit }')
    leader=${leader#http://}
    [ -n "$leader" ] || { echo "compare.sh: cannot find etcd's leader" >&2; exit 1; }
    local c n
    for c in $CLIENTS; do
        n=$(requests "$c")
        point etcd set "$c" "$n" "$KV_BENCH" --protocol etcd --addrs "$leader" --clients "$c" \
            --requests "$n" --warmup 0 --label set --csv --quiet
    done
    n=$(requests 256)
    point etcd get 64 "$n" "$KV_BENCH" --protocol etcd --addrs "$leader" --clients 64 \
        --requests "$n" --warmup 0 --reads 1 --label get --csv --quiet
    stop_all
}

run_redis() {
    if ! need redis-server; then say "redis: not installed (apt-get install redis-server), skipped"; return; fi
    say "redis: appendonly yes, appendfsync always"
    mkdir -p "$DIR/redis"
    redis-server --port $((BASE + 41)) --bind 127.0.0.1 --dir "$DIR/redis" --appendonly yes \
        --appendfsync always --save '' >"$DIR/redis.log" 2>&1 &
    PIDS+=($!)
    wait_until 10 "redis-server to start" redis-cli -p $((BASE + 41)) ping
    resp_load redis $((BASE + 41))
    stop_all
}

# table: one row per workload; each cell is the median over the rounds recorded for it.
table() {
    awk -F, '
        function median(key, what,    i, j, v, m, a) {
            m = count[key]
            for (i = 1; i <= m; i++) a[i] = val[key, what, i]
            for (i = 2; i <= m; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
            return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
        }
        { key = $1 "," $2 "," $3; i = ++count[key]
          val[key, "ops", i] = $4; val[key, "p50", i] = $5; val[key, "p99", i] = $6
          if ($8 == "") nocpu[key] = 1; else { val[key, "cpu", i] = $8; val[key, "cs", i] = $9 }
          if (!seen[$2 "," $3]++) order[n++] = $2 "," $3 }
        function cell(t, k) { return ((t "," k) in count) ? sprintf("%9.0f %6.2f %7.2f", median(t "," k, "ops"), median(t "," k, "p50"), median(t "," k, "p99")) : sprintf("%9s %6s %7s", "-", "-", "-") }
        function ratio(a, b, k, what) { return ((a "," k) in count && (b "," k) in count && median(b "," k, what) > 0) ? sprintf("%6.2fx", median(a "," k, what) / median(b "," k, what)) : sprintf("%7s", "-") }
        function has_cpu(t, k) { return ((t "," k) in count) && !((t "," k) in nocpu) }
        function usage(t, k) { return has_cpu(t, k) ? sprintf("%7.1f %7.2f", median(t "," k, "cpu"), median(t "," k, "cs")) : sprintf("%7s %7s", "-", "-") }
        function cpu_ratio(a, b, k) { return (has_cpu(a, k) && has_cpu(b, k)) ? ratio(a, b, k, "cpu") : sprintf("%7s", "-") }
        END {
            printf "%-7s %7s | %-24s | %-24s | %-24s | %8s %8s\n", "op", "clients", "raftkit ops/s p50 p99", "etcd ops/s p50 p99", "redis ops/s p50 p99", "/etcd", "/redis"
            for (i = 0; i < n; i++) {
                split(order[i], f, ",")
                printf "%-7s %7s | %s | %s | %s | %8s %8s\n", f[1], f[2], cell("raftkit", order[i]), cell("etcd", order[i]), cell("redis", order[i]), ratio("raftkit", "etcd", order[i], "ops"), ratio("raftkit", "redis", order[i], "ops")
            }
            printf "\nPer request, over all of a target'"'"'s server processes (not the load generator): CPU time in us and\n"
            printf "context switches; the ratios are raftkit'"'"'s CPU time over the other'"'"'s (below 1: raftkit uses less)\n"
            printf "%-7s %7s | %-15s | %-15s | %-15s | %8s %8s\n", "op", "clients", "raftkit cpu cs", "etcd cpu cs", "redis cpu cs", "/etcd", "/redis"
            for (i = 0; i < n; i++) {
                split(order[i], f, ",")
                printf "%-7s %7s | %s | %s | %s | %8s %8s\n", f[1], f[2], usage("raftkit", order[i]), usage("etcd", order[i]), usage("redis", order[i]), cpu_ratio("raftkit", "etcd", order[i]), cpu_ratio("raftkit", "redis", order[i])
            }
        }' "$RESULTS"
}

need redis-benchmark && need redis-cli || {
    echo "compare.sh: needs redis-benchmark and redis-cli (apt-get install redis-tools)" >&2
    exit 1
}
say "building kv (release)"
cargo build --release -p kv -p kv-bench >&2
KV="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release/kv"
KV_BENCH="$(dirname "$KV")/kv-bench"
: >"$RESULTS"
echo "compare.sh: data, logs and results in $DIR (the data is removed at exit)" >&2
for round in $(seq "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && say "round $round of $ROUNDS"
    for t in $TARGETS; do
        clear_data # every round starts from empty data
        case $t in
            raftkit) run_raftkit ;;
            etcd) run_etcd ;;
            redis) run_redis ;;
            *) echo "compare.sh: unknown target $t" >&2; exit 1 ;;
        esac
    done
done
echo
rounds=""
[ "$ROUNDS" -gt 1 ] && rounds="median of $ROUNDS interleaved rounds; "
# How idle cores wake sets what every wake-up costs, and every target's small-write latency with
# it (docs/operations.md, "As processes"): a guest whose halt polling is off (0) wakes slowly.
idle=""
if [ -r /sys/devices/system/cpu/cpuidle/current_driver ]; then
    idle="; cpuidle $(cat /sys/devices/system/cpu/cpuidle/current_driver)"
    poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
    [ -r "$poll" ] && idle="$idle, guest_halt_poll_ns $(cat "$poll")"
fi
echo "$(nproc) cores, $(date -u +%Y-%m-%d), $(uname -sr)$idle; 256-byte values, 100,000 keys; ${rounds}latency in ms; logs and results in $DIR"
table
# On a virtual machine the host may take CPU away while a point runs; every target slows with it,
# so cells measured under different steal do not compare. results.csv has it per point.
awk -F, '$7 != "" { n++; if ($7 + 0 > max) max = $7 + 0; if ($7 + 0 > 5) over++ }
    END { if (n) printf "CPU steal while loaded: at most %.1f%%; %d of %d points above 5%%%s\n", max, over, n,
              over ? ": the host slowed those points, so compare cells only at similar steal (results.csv) or run again (BENCH_MAX_STEAL=5 retries such points)" : "" }' "$RESULTS"
