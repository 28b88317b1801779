#!/usr/bin/env bash
# Cluster figures on loopback (docs/bench.md, "Cluster"):
#   chat    the same TLS chat scenario (open loop at --rate, then closed loop) against
#           (a) one xmppd (role all, storage.backend=redis) and (b) deploy/local-cluster.sh's
#           2 routers + 2 edges + Redis, clients split over both edges (xmpp-bench
#           --port P1,P2: half the pairs have their two users on different edges)
#   redis   Redis commands (and reads = request batches) per log-in on that cluster,
#           from INFO commandstats / stats deltas over a login run of --login-users
#   scale   --scale-edges edges + 2 routers + Redis holding --sessions TLS sessions,
#           edges' and routers' RSS per session, chat p99 at --scale-rate msgs/s
#   store   what Redis holds and does per user (docs/scale.md): used_memory per account
#           (SCRAM keys and a roster of --store-roster contacts), per connected session
#           (the session directory), and Redis commands per chat message
#   faults  fault injection (docs/cluster.md, "Fault injection"): per fault a fresh cluster
#           (Redis, 2 routers, 2 edges), bench/faults.py chatting --fault-pairs pairs across
#           the edges at --fault-rate msgs/s for --fault-duration s, XEP-0198 acks after
#           every message, the fault --fault-at s in; then receivers log in again so
#           offline storage is counted. One table row per fault (faults.md in --out).
#           Faults: none, edge-kill (kill -9 edge1; its clients go to edge2), router-kill
#           (kill -9 router1), router-term (SIGTERM router1), redis-term / redis-kill
#           (SIGTERM / kill -9 Redis, restarted --outage s later on the same AOF), dup-id
#           (a second xmppd with edge1's node id and other ports, stopped after 12 s if
#           it runs: its exit status is reported)
#   rediscluster  the cluster (2 routers + 2 edges) on one Redis against the same on a Redis
#           Cluster (3 primaries + 3 replicas; store and directory both there), in one run:
#           log-ins/s, closed-loop chat msgs/s, Redis commands and round trips (request
#           batches Redis read) per log-in, summed over the primaries
#
#   bench/cluster.sh [--parts chat,redis,scale] [options]     (see --help)
#   bench/cluster.sh --faults all [--fault-duration 60]       (only the fault table)
#
# Everything runs on 127.0.0.1; every process started here is stopped on exit, failure or
# Ctrl-C; each step is bounded by `timeout`. Waits first while a test suite runs on the
# machine (run_all.sh / tests/integration/run.py): their timing must not be disturbed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$ROOT/build
PARTS=chat,redis,scale
STORE_USERS=20000 STORE_ROSTER=9
PAIRS=1000 RATE=5000 DURATION=20 WINDOW=4
LOGIN_USERS=5000
SCALE_EDGES=10 SESSIONS=150000 SCALE_RATE=10000 SCALE_PAIRS=5000 SCALE_ARRIVAL=1000 SCALE_DURATION=20 SCALE_REDIS=single
SCALE_FAULT=none SCALE_FAULT_AT=5
FAULTS="" FAULT_PAIRS=200 FAULT_RATE=2000 FAULT_DURATION=60 FAULT_AT="" OUTAGE=8 FAULT_PROCS=2 FAULT_SETTLE=3
ALL_FAULTS=none,edge-kill,router-kill,router-term,redis-term,redis-kill,dup-id
OUT="" PARTS_GIVEN=0 NO_WAIT=0 PERF=0
usage() {
  sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF
options:
  --build DIR         build directory (default $BUILD)
  --parts LIST        any of chat,redis,scale,store,faults,rediscluster (default $PARTS)
  --pairs P           chat pairs (default $PAIRS)
  --rate R            chat open-loop msgs/s (default $RATE)
  --duration S        chat measurement seconds (default $DURATION)
  --window W          closed-loop window (default $WINDOW; 0 = no closed-loop runs)
  --login-users N     redis part: log-ins (default $LOGIN_USERS)
  --scale-edges E     scale part: edges (default $SCALE_EDGES)
  --sessions N        scale part: sessions in total (default $SESSIONS)
  --scale-pairs P     scale part: chatting pairs among the sessions (default $SCALE_PAIRS)
  --scale-rate R      scale part: msgs/s (default $SCALE_RATE)
  --scale-duration S  scale part: seconds of chat (default $SCALE_DURATION)
  --scale-arrival R   scale part: log-ins/s (default $SCALE_ARRIVAL)
  --redis single|cluster  scale part: one Redis, or a Redis Cluster of 3 primaries + 3 replicas
                      holding both the store and the cluster directory (default $SCALE_REDIS)
  --scale-fault F     scale part with --redis cluster: none, kill (kill -9) or stop (SIGSTOP until the
                      chat ends: a hung primary) the primary serving the registry's slot, and its
                      per-second delivery from 5 s before to 30 s after (default $SCALE_FAULT)
  --scale-fault-at S  ... this many seconds after the first message is sent (default $SCALE_FAULT_AT)
  --store-users N     store part: accounts and sessions (default $STORE_USERS)
  --store-roster K    store part: contacts per account (default $STORE_ROSTER)
  --perf S            chat part: \`perf record -g\` for S seconds of both open-loop runs (single
                      process, then every cluster node), from 3 s after the log-ins; top symbols
                      and bench/perf_kinds.py's breakdown into OUT/*-open.perf*.txt
  --faults LIST       faults part: rows to run, of $ALL_FAULTS, or all
                      (alone, it runs only the faults part)
  --fault-pairs P     faults part: pairs (default $FAULT_PAIRS)
  --fault-rate R      faults part: msgs/s in all (default $FAULT_RATE)
  --fault-duration S  faults part: seconds of sending per row (default $FAULT_DURATION)
  --fault-at S        faults part: the fault this many s in (default a third of the duration)
  --outage S          faults part: seconds Redis stays down (default $OUTAGE)
  --fault-procs N     faults part: client processes (default $FAULT_PROCS)
  --fault-settle S    faults part: quiet seconds that end a delivery phase (default $FAULT_SETTLE)
  --no-wait 1         do not wait while a test suite runs (for the test that runs this)
  --out DIR           keep JSON and logs there (default: a new mktemp dir)
EOF
}
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --build) BUILD=$2 ;; --parts) PARTS=$2 PARTS_GIVEN=1 ;; --pairs) PAIRS=$2 ;; --rate) RATE=$2 ;;
    --duration) DURATION=$2 ;; --window) WINDOW=$2 ;; --login-users) LOGIN_USERS=$2 ;;
    --scale-edges) SCALE_EDGES=$2 ;; --sessions) SESSIONS=$2 ;; --scale-pairs) SCALE_PAIRS=$2 ;;
    --scale-rate) SCALE_RATE=$2 ;; --redis) SCALE_REDIS=$2 ;; --scale-duration) SCALE_DURATION=$2 ;; --scale-arrival) SCALE_ARRIVAL=$2 ;; --out) OUT=$2 ;;
    --scale-fault) SCALE_FAULT=$2 ;; --scale-fault-at) SCALE_FAULT_AT=$2 ;;
    --store-users) STORE_USERS=$2 ;; --store-roster) STORE_ROSTER=$2 ;;
    --faults) FAULTS=$2 ;; --fault-pairs) FAULT_PAIRS=$2 ;; --fault-rate) FAULT_RATE=$2 ;;
    --fault-duration) FAULT_DURATION=$2 ;; --fault-at) FAULT_AT=$2 ;; --outage) OUTAGE=$2 ;;
    --fault-procs) FAULT_PROCS=$2 ;; --fault-settle) FAULT_SETTLE=$2 ;; --no-wait) NO_WAIT=$2 ;; --perf) PERF=$2 ;;
    *) echo "cluster.sh: unknown option $1 (--help)" >&2; exit 2 ;;
  esac
  shift 2
done
if [ -n "$FAULTS" ] && [ "$PARTS_GIVEN" = 0 ]; then PARTS=faults; fi
[ -n "$FAULTS" ] && [ "$FAULTS" != all ] || FAULTS=$ALL_FAULTS
for f in ${FAULTS//,/ }; do
  [[ ,$ALL_FAULTS, == *,$f,* ]] || { echo "cluster.sh: unknown fault $f (of $ALL_FAULTS)" >&2; exit 2; }
done
case $SCALE_REDIS in single | cluster) ;; *) echo "cluster.sh: --redis single|cluster" >&2; exit 2 ;; esac
[ -n "$FAULT_AT" ] || FAULT_AT=$((FAULT_DURATION / 3))
case "$BUILD" in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
B=$BUILD/xmpp-bench
for x in xmppd xmppctl xmpp-bench; do [ -x "$BUILD/$x" ] || { echo "no $BUILD/$x (build first)" >&2; exit 2; }; done
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { echo "needs redis-server and redis-cli" >&2; exit 2; }
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }
[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/tmp}/cluster-bench.XXXXXX")
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
ulimit -n "$(ulimit -Hn)" # xmppd and the bench use up to the hard cap, never beyond
log() { echo "[cluster.sh $(date +%T)] $*" >&2; }
has() { [[ ,$PARTS, == *,$1,* ]]; }

# ---- cleanup ---------------------------------------------------------------------------
CLUSTERS=() SINGLE_PIDS=() BENCH_PID="" PERF_PID=""
cleanup() {
  local rc=$? d p
  trap - EXIT INT TERM
  [ -z "$BENCH_PID" ] || kill -INT "$BENCH_PID" 2>/dev/null || true
  [ -z "$PERF_PID" ] || kill -TERM "$PERF_PID" 2>/dev/null || true
  for d in "${CLUSTERS[@]}"; do
    [ -f "$d/pids" ] && "$ROOT/deploy/local-cluster.sh" stop --dir "$d" >/dev/null 2>&1 || true
  done
  for p in "${SINGLE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${SINGLE_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [ -z "$BENCH_PID" ] || { sleep 2; kill -KILL "$BENCH_PID" 2>/dev/null || true; }
  log "results and logs in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Another engineer's timing-sensitive tests share the machine: no load while they run.
wait_quiet() {
  local t=0
  while pgrep -f run_all.sh >/dev/null || pgrep -f tests/integration/run.py >/dev/null; do
    [ $t -gt 0 ] || log "a test suite is running: waiting (polling every 20 s)"
    t=$((t + 1))
    [ $t -lt 90 ] || { log "test suite still running after 30 min: giving up"; exit 3; }
    sleep 20
  done
}

# Runs xmpp-bench in the background (so Ctrl-C reaches it through cleanup), bounded.
bench() { # LIMIT_S ARGS...
  local lim=$1; shift
  wait_quiet
  if [ -n "${PROGRESS:-}" ]; then # the per-second lines, for perf_during to follow
    timeout -s INT -k 20 "$lim" "$B" "$@" 2>"$PROGRESS" &
  else
    timeout -s INT -k 20 "$lim" "$B" "$@" --quiet &
  fi
  BENCH_PID=$!
  local rc=0
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  return $rc
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { local t=0; until timeout 1 bash -c ": </dev/tcp/127.0.0.1/$1" 2>/dev/null; do sleep 0.1; t=$((t + 1)); [ $t -lt 200 ] || return 1; done; }
rss_of() { local s=0 p v; for p in "$@"; do v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0); s=$((s + ${v:-0})); done; echo $s; }
pids_of() { awk -v re="^$2" '$1 ~ re { printf "%s%s", sep, $2; sep = " " }' "$1/pids"; } # DIR NAME-PREFIX
csv() { tr ' ' ','; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # PID: user + system clock ticks
# perf_during NAME PIDS(comma): in the background, once the bench's per-second lines
# (OUT/NAME.progress) show messages being sent (the log-ins are over), waits 3 s more and
# records --perf S seconds of call graphs of those processes; perf_report NAME writes the
# top symbols (self time; by process and library; inclusive) once the run is over.
perf_during() {
  [ "$PERF" != 0 ] || return 0
  : >"$OUT/$1.progress"
  (for _ in $(seq 600); do grep -q 'sent [1-9]' "$OUT/$1.progress" && break; sleep 0.5; done
   sleep 3
   exec timeout -s INT $((PERF + 30)) perf record -q -g -F 999 -p "$2" -o "$OUT/$1.perf.data" -- sleep "$PERF") \
    >"$OUT/$1.perf.log" 2>&1 &
  PERF_PID=$!
}
perf_report() {
  [ "$PERF" != 0 ] || return 0
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=""
  perf report -i "$OUT/$1.perf.data" --no-children --sort sym --stdio -g none --percent-limit 0.4 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"$OUT/$1.perf.txt" || true
  perf report -i "$OUT/$1.perf.data" --no-children --sort comm,dso --stdio -g none --percent-limit 0.5 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"$OUT/$1.perf-dso.txt" || true
  # inclusive (self + callees): which of the server's own functions the time is spent under
  perf report -i "$OUT/$1.perf.data" --children --sort sym --stdio -g none --percent-limit 2 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"$OUT/$1.perf-incl.txt" || true
  pf=(); [ ! -f "$OUT/cluster-pids.txt" ] || [ "$1" != cluster-open ] || pf=(--pids "$OUT/cluster-pids.txt")
  python3 "$ROOT/bench/perf_kinds.py" "$OUT/$1.perf.data" --json "$OUT/$1.json" "${pf[@]}" >"$OUT/$1.perf-kinds.txt" || true
}
# Server options for load: no idle time-out during long runs, no per-address cap (the bench
# spreads its connections over 127.0.0.1-254), input shaper off (as in bench/compare.sh).
export XMPPD_LIMITS_IDLE_TIMEOUT=3600 XMPPD_LIMITS_MAX_CONNS_PER_IP=0 XMPPD_LIMITS_RATE_BYTES=0 \
  XMPPD_LIMITS_RATE_STANZAS=0 XMPPD_SERVER_LOG_LEVEL=warn

# A Redis Cluster of 3 primaries + 3 replicas on free ports under DIR (AOF on); sets RCP
# (the ports), RC_PIDS and SEEDS (a cluster:... address for storage.redis / cluster.redis)
start_redis_cluster() { # DIR
  local RC=$1 i p bp t
  RCP=() RC_PIDS=() SEEDS=""
  for i in 1 2 3 4 5 6; do
    p=$(free_port) bp=$(free_port)
    mkdir -p "$RC/$p"
    redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes --cluster-port "$bp" \
      --cluster-config-file "$RC/$p/nodes.conf" --cluster-node-timeout 1000 --save "" \
      --appendonly yes --appendfsync everysec --dir "$RC/$p" --daemonize no >"$RC/$p/redis.log" 2>&1 &
    SINGLE_PIDS+=($!)
    RC_PIDS+=($!)
    RCP+=("$p")
  done
  for p in "${RCP[@]}"; do wait_port "$p"; done
  timeout 60 redis-cli --cluster create $(printf '127.0.0.1:%s ' "${RCP[@]}") --cluster-replicas 1 \
    --cluster-yes >"$RC/create.log" 2>&1 || { cat "$RC/create.log" >&2; exit 1; }
  t=0
  until [ "$(redis-cli -p "${RCP[0]}" cluster info | tr -d '\r' | grep -c 'cluster_state:ok')" = 1 ]; do
    sleep 0.2; t=$((t + 1)); [ $t -lt 300 ] || { log "the Redis Cluster did not become ok"; exit 1; }
  done
  SEEDS="cluster:127.0.0.1:${RCP[0]},127.0.0.1:${RCP[1]}"
}
# Redis totals summed over the primaries (one Redis: that one): commands run (those inside
# scripts counted), read events (request batches = round trips), used_memory
rtotals() { # PORT...
  local p
  for p in "$@"; do
    timeout 2 redis-cli -p "$p" info 2>/dev/null | tr -d '\r' |
      awk -F: '/^(total_commands_processed|total_reads_processed|used_memory|role):/ {v[$1] = $2}
        END {if (v["role"] == "master") print v["total_commands_processed"] + 0, v["total_reads_processed"] + 0, v["used_memory"] + 0}'
  done | awk '{c += $1; r += $2; m += $3} END {print c + 0, r + 0, m + 0}'
}

start_cluster() { # DIR EDGES [REDIS-ADDRESS: a running Redis or Redis Cluster]
  local ext=()
  [ -z "${3:-}" ] || ext=(--redis "$3")
  "$ROOT/deploy/local-cluster.sh" start --build "$BUILD" --dir "$1" --routers 2 --edges "$2" "${ext[@]}" \
    --log-level warn --timeout 60 >"$1.start.log" 2>&1 || { cat "$1.start.log" >&2; return 1; }
  CLUSTERS+=("$1")
}

summary() { # JSON LABEL: one line of figures from an xmpp-bench chat report
  jq -r --arg l "$2" '"\($l): " + (.results | "delivered \(.delivered_per_s|floor) msgs/s (sent \(.sent), delivered \(.delivered)), p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, p999 \(.latency_ms.p999) ms, log-ins failed \(.logins_failed), dropped \(.dropped)") + ", server cpu \(.server.cpu_s) s, bench cpu \(.bench.cpu_s) s"' "$1"
}

FIG=$OUT/figures.txt
: >"$FIG"
fig() { echo "$*" | tee -a "$FIG"; }
NUSERS=$((2 * PAIRS))
[ "$NUSERS" -ge "$LOGIN_USERS" ] || NUSERS=$LOGIN_USERS

# ---- 1. chat: single process vs 2 edges + 2 routers ------------------------------------------
CDIR=$OUT/c2
if has chat || has redis; then
  log "starting cluster (2 routers, 2 edges, Redis) in $CDIR"
  start_cluster "$CDIR" 2
  # shellcheck disable=SC1091
  . "$CDIR/env"
  C_EDGES=$(pids_of "$CDIR" edge) C_ROUTERS=$(pids_of "$CDIR" router)
  C_REDIS=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
  timeout 300 $XMPPCTL populate user "$NUSERS" secret >"$OUT/populate-c2.log" 2>&1
fi
if has chat; then
  # (a) single process, role all, its own Redis (same storage backend)
  SDIR=$OUT/single
  mkdir -p "$SDIR/redis"
  SRP=$(free_port) SP=$(free_port)
  redis-server --bind 127.0.0.1 --port "$SRP" --dir "$SDIR/redis" --appendonly yes \
    --appendfsync everysec --save "" --daemonize no >"$SDIR/redis.log" 2>&1 &
  SINGLE_PIDS+=($!)
  wait_port "$SRP"
  cat >"$SDIR/xmppd.conf" <<CONF
[server]
domain = localhost
log_level = warn
[c2s]
address = 127.0.0.1
port = $SP
tls_port = 0
[tls]
certificate = $TLS_CERTIFICATE
key = $TLS_KEY
[storage]
backend = redis
redis = 127.0.0.1:$SRP
CONF
  timeout 300 "$BUILD/xmppctl" -c "$SDIR/xmppd.conf" populate user "$NUSERS" secret >"$SDIR/populate.log" 2>&1
  "$BUILD/xmppd" -c "$SDIR/xmppd.conf" >"$SDIR/xmppd.log" 2>&1 &
  SPID=$!
  SINGLE_PIDS+=("$SPID")
  wait_port "$SP"
  lim=$((DURATION + 120))
  log "single: open loop $RATE msgs/s, $PAIRS pairs, ${DURATION}s"
  perf_during single-open "$SPID"
  r0=$(cpu_ticks "${SINGLE_PIDS[0]}")
  PRG=""; [ "$PERF" = 0 ] || PRG=$OUT/single-open.progress
  PROGRESS=$PRG bench $lim chat --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" --port "$SP" \
    --server-pid "$SPID" --json "$OUT/single-open.json" --label single-open >"$OUT/single-open.txt" ||
    log "single-open: xmpp-bench exited non-zero (a loss or a failed log-in: $OUT/single-open.txt)"
  S_REDIS_TICKS=$(($(cpu_ticks "${SINGLE_PIDS[0]}") - r0))
  perf_report single-open
  [ "$WINDOW" = 0 ] || { log "single: closed loop, window $WINDOW"
  bench $lim chat --pairs "$PAIRS" --window "$WINDOW" --duration "$DURATION" --port "$SP" \
    --server-pid "$SPID" --json "$OUT/single-closed.json" --label single-closed >"$OUT/single-closed.txt" ||
    log "single-closed: xmpp-bench exited non-zero (a loss or a failed log-in: $OUT/single-closed.txt)"; }
  kill -TERM "$SPID" 2>/dev/null || true

  # (b) cluster: clients over both edges
  CP=$EDGE1_PORT,$EDGE2_PORT
  SP_ALL=$(echo "$C_EDGES $C_ROUTERS" | csv)
  log "cluster: open loop $RATE msgs/s over edges $CP"
  perf_during cluster-open "$SP_ALL"
  cp "$CDIR/pids" "$OUT/cluster-pids.txt"
  C_REDIS_PID=$(pids_of "$CDIR" redis)
  r0=$(cpu_ticks "$C_REDIS_PID")
  PRG=""; [ "$PERF" = 0 ] || PRG=$OUT/cluster-open.progress
  PROGRESS=$PRG bench $lim chat --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" --port "$CP" \
    --server-pid "$SP_ALL" --json "$OUT/cluster-open.json" --label cluster-open >"$OUT/cluster-open.txt" ||
    log "cluster-open: xmpp-bench exited non-zero (a loss or a failed log-in: $OUT/cluster-open.txt)"
  C_REDIS_TICKS=$(($(cpu_ticks "$C_REDIS_PID") - r0))
  perf_report cluster-open
  [ "$WINDOW" = 0 ] || { log "cluster: closed loop, window $WINDOW"
  bench $lim chat --pairs "$PAIRS" --window "$WINDOW" --duration "$DURATION" --port "$CP" \
    --server-pid "$SP_ALL" --json "$OUT/cluster-closed.json" --label cluster-closed >"$OUT/cluster-closed.txt" ||
    log "cluster-closed: xmpp-bench exited non-zero (a loss or a failed log-in: $OUT/cluster-closed.txt)"; }

  fig "== chat, TLS (STARTTLS), PLAIN, $PAIRS pairs, ${DURATION}s; cluster: 2 edges + 2 routers, half the pairs across edges"
  hz=$(getconf CLK_TCK)
  fig "$(jq -rn --slurpfile s "$OUT/single-open.json" --slurpfile c "$OUT/cluster-open.json" --argjson st "$S_REDIS_TICKS" --argjson ct "$C_REDIS_TICKS" --argjson hz "$hz" \
    '"Redis CPU over the whole open-loop run (log-ins included), per delivered message: single \(($st / $hz * 1e6 / $s[0].results.delivered * 10 | round) / 10) us, cluster \(($ct / $hz * 1e6 / $c[0].results.delivered * 10 | round) / 10) us"')"
  MODES=open; [ "$WINDOW" = 0 ] || MODES="open closed"
  for m in $MODES; do
    fig "$(summary "$OUT/single-$m.json" "single $m")"
    fig "$(summary "$OUT/cluster-$m.json" "cluster $m")"
    fig "$(jq -rn --slurpfile s "$OUT/single-$m.json" --slurpfile c "$OUT/cluster-$m.json" \
      '"per message over the measurement window, '"$m"': server CPU single \($s[0].results.run_server_cpu_us_per_msg) us, cluster \($c[0].results.run_server_cpu_us_per_msg) us (ratio \(($c[0].results.run_server_cpu_us_per_msg / $s[0].results.run_server_cpu_us_per_msg * 100 | round) / 100)); context switches \($s[0].results.run_server_cs_per_msg) / \($c[0].results.run_server_cs_per_msg); read+write syscalls \($s[0].results.run_server_rw_syscalls_per_msg) / \($c[0].results.run_server_rw_syscalls_per_msg)"')"
    fig "$(jq -rn --slurpfile s "$OUT/single-$m.json" --slurpfile c "$OUT/cluster-$m.json" \
      '"ratio cluster/single '"$m"': msgs/s \(($c[0].results.delivered_per_s / $s[0].results.delivered_per_s * 100 | round) / 100), p50 \(($c[0].results.latency_ms.p50 / $s[0].results.latency_ms.p50 * 100 | round) / 100), p99 \(($c[0].results.latency_ms.p99 / $s[0].results.latency_ms.p99 * 100 | round) / 100), server cpu \(($c[0].server.cpu_s / $s[0].server.cpu_s * 100 | round) / 100)"')"
  done
fi

# ---- 2. Redis commands per log-in ------------------------------------------------------------
if has redis; then
  stats() { "${C_REDIS[@]}" info stats | tr -d '\r' | awk -F: '/^(total_commands_processed|total_reads_processed|total_net_input_bytes):/ {print $1, $2}'; }
  cmdstats() { "${C_REDIS[@]}" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\),.*/\1 \2/p' | sort; }
  # background: heartbeats/registry over an idle window of the same length
  sleep 2
  "${C_REDIS[@]}" config resetstat >/dev/null
  t0=$(date +%s.%N); sleep 10; t1=$(date +%s.%N)
  stats >"$OUT/redis-idle.stats"; cmdstats >"$OUT/redis-idle.cmds"
  "${C_REDIS[@]}" config resetstat >/dev/null
  l0=$(date +%s.%N)
  log "redis: login run of $LOGIN_USERS users over both edges"
  bench 600 login --users "$LOGIN_USERS" --port "$EDGE1_PORT,$EDGE2_PORT" --json "$OUT/login.json" --label login >"$OUT/login.txt"
  sleep 1
  l1=$(date +%s.%N)
  stats >"$OUT/redis-login.stats"; cmdstats >"$OUT/redis-login.cmds"
  ok=$(jq .results.logins_ok "$OUT/login.json")
  fig "== Redis per log-in (log-in + log-out, PLAIN over STARTTLS, cluster of 2 edges + 2 routers), $ok log-ins ok in $(jq .results.time_to_all_s "$OUT/login.json") s; background (idle) subtracted"
  python3 - "$OUT" "$ok" "$t0" "$t1" "$l0" "$l1" <<'PY' | tee -a "$FIG"
import sys
out, ok, t0, t1, l0, l1 = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
rd = lambda f: {l.split()[0]: int(l.split()[1]) for l in open(f) if l.strip()}
scale = (l1 - l0) / (t1 - t0)
for kind in ("stats", "cmds"):
    idle, login = rd(f"{out}/redis-idle.{kind}"), rd(f"{out}/redis-login.{kind}")
    rows = sorted(login, key=lambda k: -login[k])
    for k in rows:
        v = (login[k] - idle.get(k, 0) * scale) / ok
        if kind == "cmds" and v < 0.005: continue
        print(f"  {k:28s} {v:8.2f} per log-in   (raw {login[k]}, idle-rate share {idle.get(k,0)*scale:.0f})")
PY
fi
if has chat || has redis; then
  "$ROOT/deploy/local-cluster.sh" stop --dir "$CDIR" >/dev/null 2>&1 || true
fi

# ---- 3. scale-out -------------------------------------------------------------------------------
if has scale; then
  XDIR=$OUT/c$SCALE_EDGES
  if [ "$SCALE_REDIS" = cluster ]; then
    start_redis_cluster "$OUT/scale-rcluster"
    log "starting cluster (2 routers, $SCALE_EDGES edges) on a Redis Cluster ($SEEDS) in $XDIR"
    start_cluster "$XDIR" "$SCALE_EDGES" "$SEEDS"
    X_REDIS="${RC_PIDS[*]}" X_RPORTS=("${RCP[@]}") RDESC="a Redis Cluster (3 primaries + 3 replicas)"
  else
    log "starting cluster (2 routers, $SCALE_EDGES edges, Redis) in $XDIR"
    start_cluster "$XDIR" "$SCALE_EDGES"
  fi
  # shellcheck disable=SC1091
  . "$XDIR/env"
  X_EDGES=$(pids_of "$XDIR" edge) X_ROUTERS=$(pids_of "$XDIR" router)
  [ "$SCALE_REDIS" = cluster ] || X_REDIS=$(pids_of "$XDIR" redis) X_RPORTS=("$REDIS_PORT") RDESC="Redis"
  log "populating $SESSIONS accounts"
  timeout 1800 $XMPPCTL populate user "$SESSIONS" secret >"$OUT/populate-scale.log" 2>&1
  sleep 2
  e0=$(rss_of $X_EDGES) r0=$(rss_of $X_ROUTERS) d0=$(rss_of $X_REDIS)
  # the idle rate of Redis commands (heartbeats, leases, polls), subtracted below
  read -r ic0 ir0 _ < <(rtotals "${X_RPORTS[@]}"); it0=$(date +%s.%N)
  sleep 10
  read -r ic1 ir1 _ < <(rtotals "${X_RPORTS[@]}"); it1=$(date +%s.%N)
  ports=$(echo "$EDGE_PORTS" | csv)
  procs=$(((SESSIONS + 8999) / 9000))
  # sampler, every 2 s: time, summed RSS of edges / routers / Redis processes, Redis totals
  # over the primaries (commands, reads, used_memory) and the bench's last progress line
  : >"$OUT/scale.progress"
  (while :; do
     echo "$(date +%s.%N) $(rss_of $X_EDGES) $(rss_of $X_ROUTERS) $(rss_of $X_REDIS) $(rtotals "${X_RPORTS[@]}") $(tail -n 1 "$OUT/scale.progress" | tr -d '[]|')"
     sleep 2
   done) >"$OUT/scale-rss.txt" &
  SAMPLER=$!
  SINGLE_PIDS+=("$SAMPLER")
  t=0; until [ -s "$OUT/scale-rss.txt" ]; do sleep 0.1; t=$((t + 1)); [ $t -lt 300 ] || break; done # the baseline sample
  lim=$((SESSIONS / SCALE_ARRIVAL * 4 + SCALE_DURATION + 300))
  log "scale: $SESSIONS sessions at $SCALE_ARRIVAL/s over $SCALE_EDGES edges, $SCALE_PAIRS pairs chatting at $SCALE_RATE msgs/s (limit ${lim}s)"
  FAULTER="" FVICTIM=""
  if [ "$SCALE_FAULT" != none ] && [ "$SCALE_REDIS" = cluster ]; then
    # the primary serving the registry's slot (hash tag {nodes}): leases, node set, shard map
    rslot=$(redis-cli -p "${RCP[0]}" cluster keyslot nodes | tr -d '\r')
    FVICTIM=$(redis-cli -p "${RCP[0]}" cluster nodes | tr -d '\r' | awk -v s="$rslot" '$3 ~ /master/ {
        for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1]; if (s >= r[1] && s <= r[2]) { split($2, a, "[:@]"); print a[2] } } }')
    vpid=""
    for i in "${!RCP[@]}"; do [ "${RCP[$i]}" != "$FVICTIM" ] || vpid=${RC_PIDS[$i]}; done
    [ -n "$vpid" ] || { log "scale fault: no primary found for slot $rslot"; exit 1; }
    (for _ in $(seq 2400); do grep -q 'sent [1-9]' "$OUT/scale.progress" && break; sleep 0.25; done
     sleep "$SCALE_FAULT_AT"
     if [ "$SCALE_FAULT" = kill ]; then kill -9 "$vpid"; else kill -STOP "$vpid"; fi
     echo "$(date +%s.%N) $(tail -n 1 "$OUT/scale.progress")" >"$OUT/scale-fault.txt") &
    FAULTER=$!
    log "scale fault: $SCALE_FAULT of primary $FVICTIM (pid $vpid, slot $rslot) ${SCALE_FAULT_AT}s after the first message"
  fi
  rc=0
  PROGRESS=$OUT/scale.progress bench $lim chat --pairs "$SCALE_PAIRS" --idle-extra $((SESSIONS - 2 * SCALE_PAIRS)) --rate "$SCALE_RATE" \
    --duration "$SCALE_DURATION" --arrival "$SCALE_ARRIVAL" --concurrency 400 --procs "$procs" --threads 1 \
    --port "$ports" --server-pid "$(echo "$X_EDGES" | csv)" --json "$OUT/scale.json" --label scale \
    >"$OUT/scale.txt" || rc=$?
  kill "$SAMPLER" 2>/dev/null || true
  if [ -n "$FAULTER" ]; then
    kill "$FAULTER" 2>/dev/null || true
    [ "$SCALE_FAULT" != stop ] || kill -CONT "$vpid" 2>/dev/null || true
    if [ -s "$OUT/scale-fault.txt" ]; then
      # the bench's clock at the fault, then its per-second lines around it
      ft=$(tr -d '[]|' <"$OUT/scale-fault.txt" | awk '{sub(/s$/, "", $2); print $2}')
      fig "== scale fault: $SCALE_FAULT of the primary $FVICTIM at bench time ${ft}s; per second (bench time, msgs/s, sent, delivered, p99 of the second):"
      fig "$(tr -d '[]|' <"$OUT/scale.progress" | awk -v ft="$ft" '{t = $1; sub(/s$/, "", t)
          if (t + 0 >= ft - 5 && t + 0 <= ft + 30) {
            for (i = 1; i < NF; i++) { if ($i == "msgs/s") m = $(i + 1); if ($i == "sent") s = $(i + 1); if ($i == "delivered") d = $(i + 1); if ($i == "p99") p = $(i + 1) }
            printf("  %6.1f %6d %8d %8d %8.1f ms\n", t - ft, m, s, d, p) } }')"
    else
      fig "== scale fault: $SCALE_FAULT did not happen (the chat never started?)"
    fi
  fi
  [ -s "$OUT/scale.json" ] || { log "scale run wrote no report (rc $rc): $(tail -3 "$OUT/scale.progress")"; exit 1; }
  read -r emax rmax dmax umax < <(awk 'BEGIN {e=0; r=0; d=0; u=0} {if ($2>e) e=$2; if ($3>r) r=$3; if ($4>d) d=$4; if ($7>u) u=$7} END {print e, r, d, u}' "$OUT/scale-rss.txt")
  sess=$(jq .results.sessions "$OUT/scale.json")
  [ "$sess" != null ] || sess=$(jq .results.logins_ok "$OUT/scale.json")
  read -r _ _ u0 < <(awk 'NR == 1 {print $5, $6, $7}' "$OUT/scale-rss.txt")
  fig "== scale-out: $SCALE_EDGES edges + 2 routers + $RDESC, TLS sessions $sess of $SESSIONS (failed $(jq .results.logins_failed "$OUT/scale.json"), dropped $(jq .results.dropped "$OUT/scale.json")), log-ins $(jq '.results.logins_per_s|floor' "$OUT/scale.json")/s (offered $SCALE_ARRIVAL/s); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  per() { awk -v a="$1" -v b="$2" -v n="$sess" 'BEGIN { d = (n > 0) ? n : 1; printf("%.2f KiB (%.0f bytes)", (b - a) / d, (b - a) * 1024 / d) }'; }
  ne=$(echo $X_EDGES | wc -w) nr=$(echo $X_ROUTERS | wc -w)
  fig "edges RSS   $e0 KiB -> max $emax KiB ($((emax / ne / 1024)) MiB per edge): $(per "$e0" "$emax") per session"
  fig "routers RSS $r0 KiB -> max $rmax KiB ($((rmax / nr / 1024)) MiB per router): $(per "$r0" "$rmax") per session"
  fig "bench RSS ($procs children) max $(jq .bench.rss_kib_max "$OUT/scale.json") KiB, bench cpu $(jq .bench.cpu_s "$OUT/scale.json") s, server (edges) cpu $(jq .server.cpu_s "$OUT/scale.json") s; log-in latency p50 $(jq .results.login_latency_ms.p50 "$OUT/scale.json") ms, p99 $(jq .results.login_latency_ms.p99 "$OUT/scale.json") ms"
  fig "redis RSS (all Redis processes)  $d0 KiB -> max $dmax KiB"
  fig "redis used_memory summed over the primaries $u0 -> max $umax bytes (the chat's archive included)"
  # Redis per log-in: from the last sample before any log-in to the first one with every session
  # online and nothing sent yet; per message: over the samples while messages are sent (the
  # first and the last such sample excluded: ramp-up and stop). The idle rate is subtracted.
  fig "$(awk -v ic0="$ic0" -v ic1="$ic1" -v ir0="$ir0" -v ir1="$ir1" -v it0="$it0" -v it1="$it1" -v n="$sess" '
    # fields: 1 t, 5 commands, 6 reads, 9.. progress: "T connected C online O failed F log-ins/ R msgs/ M sent S delivered D ..."
    { on = 0; sent = -1; dl = 0
      for (i = 8; i < NF; i++) { if ($i == "online") on = $(i + 1); if ($i == "sent") sent = $(i + 1); if ($i == "delivered") dl = $(i + 1) }
      T[NR] = $1; C[NR] = $5; R[NR] = $6; U[NR] = $7; ON[NR] = on; S[NR] = sent; D[NR] = dl }
    END {
      ci = (ic1 - ic0) / (it1 - it0); ri = (ir1 - ir0) / (it1 - it0)
      a = 0; b = 0
      for (k = 1; k <= NR; k++) { if (ON[k] == 0 && S[k] <= 0) a = k; if (S[k] <= 0 && ON[k] > 0) b = k }
      if (a && b && b > a) {
        m = ON[b] - ON[a]; dt = T[b] - T[a]
        printf("Redis per log-in (log-in ramp, %d sessions in %.0f s, %.0f/s between samples): %.2f commands, %.2f round trips (request batches read), idle %.0f commands/s subtracted; used_memory over the primaries %.0f bytes per session; ",
          m, dt, m / dt, ((C[b] - C[a]) - ci * dt) / m, ((R[b] - R[a]) - ri * dt) / m, ci, (U[b] - U[a]) / m)
      } else printf("Redis per log-in: the samples did not bracket the ramp; ")
      f = 0; l = 0
      for (k = 1; k <= NR; k++) if (S[k] > 0) { if (!f) f = k; l = k }
      f++; l--
      if (f && l > f && D[l] > D[f]) {
        m = D[l] - D[f]; dt = T[l] - T[f]
        printf("per chat message delivered (%d messages over %.0f s): %.2f commands, %.2f round trips", m, dt, ((C[l] - C[f]) - ci * dt) / m, ((R[l] - R[f]) - ri * dt) / m)
      } else printf("per chat message: too few samples while sending")
    }' "$OUT/scale-rss.txt")"
  fig "$(summary "$OUT/scale.json" "scale chat at $SCALE_RATE msgs/s among $sess sessions")"
fi

# ---- 4. what Redis holds and does per user --------------------------------------------------------
if has store; then
  MDIR=$OUT/store
  log "starting cluster (2 routers, 2 edges, Redis) in $MDIR"
  start_cluster "$MDIR" 2
  # shellcheck disable=SC1091
  . "$MDIR/env"
  M_REDIS=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
  used() { "${M_REDIS[@]}" info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}'; }
  # commands Redis ran (those inside scripts included) and requests it was sent
  calls() {
    echo "$("${M_REDIS[@]}" info stats | tr -d '\r' | awk -F: '/^total_commands_processed:/ {print $2}')" \
      "$("${M_REDIS[@]}" info commandstats | tr -d '\r' | awk -F'[=,:]' '/^cmdstat_(evalsha|eval):/ {s += $3} END {print s + 0}')"
  }
  sleep 2
  m0=$(used)
  timeout 900 $XMPPCTL populate user "$STORE_USERS" secret --roster "$STORE_ROSTER" >"$OUT/populate-store.log" 2>&1
  m1=$(used)
  # sessions held: sample used_memory while an idle run holds every account online
  M_EDGES=$(pids_of "$MDIR" edge) M_ROUTERS=$(pids_of "$MDIR" router)
  re0=$(rss_of $M_EDGES) rr0=$(rss_of $M_ROUTERS)
  (while :; do echo "$(used) $(rss_of $M_EDGES) $(rss_of $M_ROUTERS)"; sleep 1; done) >"$OUT/store-used.txt" &
  SAMPLER=$!
  SINGLE_PIDS+=("$SAMPLER")
  procs=$(((STORE_USERS + 8999) / 9000))
  bench 900 idle --users "$STORE_USERS" --duration 5 --arrival 2000 --procs "$procs" \
    --port "$EDGE1_PORT,$EDGE2_PORT" --json "$OUT/store-idle.json" --label store-idle >"$OUT/store-idle.txt"
  kill "$SAMPLER" 2>/dev/null || true
  sleep 2
  read -r m2 re1 rr1 < <(awk '{ if ($1 > m) m = $1; if ($2 > e) e = $2; if ($3 > r) r = $3 } END { print m, e, r }' "$OUT/store-used.txt")
  m3=$(used)
  held=$(jq .results.sessions "$OUT/store-idle.json")
  # commands per chat message: two runs that differ only in length, so log-ins cancel
  pairs=500
  c0=$(calls)
  bench 300 chat --pairs "$pairs" --rate 2000 --duration 5 --port "$EDGE1_PORT,$EDGE2_PORT" \
    --json "$OUT/store-chat5.json" --label store-chat5 >"$OUT/store-chat5.txt"
  c1=$(calls)
  bench 300 chat --pairs "$pairs" --rate 2000 --duration 15 --port "$EDGE1_PORT,$EDGE2_PORT" \
    --json "$OUT/store-chat15.json" --label store-chat15 >"$OUT/store-chat15.txt"
  c2=$(calls)
  d5=$(jq .results.delivered "$OUT/store-chat5.json") d15=$(jq .results.delivered "$OUT/store-chat15.json")
  fig "== Redis per user (2 edges + 2 routers), $STORE_USERS accounts with $STORE_ROSTER contacts each, $held sessions held"
  fig "$(awk -v a="$m0" -v b="$m1" -v n="$STORE_USERS" -v k="$STORE_ROSTER" 'BEGIN { printf("used_memory per account (SCRAM-SHA-1 + SHA-256 keys, %d roster items): %.0f bytes", k, (b - a) / n) }')"
  fig "$(awk -v a="$m1" -v b="$m2" -v n="$held" 'BEGIN { printf("used_memory per connected session (session directory): %.0f bytes (max while held %d, after log-out %d)", (b - a) / (n > 0 ? n : 1), b, 0) }' | sed "s/after log-out 0/after log-out $m3/")"
  read -r c0 e0 <<<"$c0"; read -r c1 e1 <<<"$c1"; read -r c2 e2 <<<"$c2"
  fig "$(awk -v a="$re0" -v b="$re1" -v c="$rr0" -v d="$rr1" -v n="$held" -v k="$STORE_ROSTER" 'BEGIN { n = n > 0 ? n : 1; printf("RSS per session (TLS, %d-contact roster, all contacts online): edges %.2f KiB, routers %.2f KiB", k, (b - a) / n, (d - c) / n) }')"
  fig "$(awk -v c0="$c0" -v c1="$c1" -v c2="$c2" -v e0="$e0" -v e1="$e1" -v e2="$e2" -v d5="$d5" -v d15="$d15" -v mam="${XMPPD_SERVER_MAM:-true}" 'BEGIN { d = (d15 - d5) > 0 ? (d15 - d5) : 1; printf("per chat message (server.mam = %s): %.3f script calls (EVALSHA), %.3f Redis commands in all (those inside scripts counted); runs of %d and %d messages, each with %d log-ins, the difference taken", mam, ((e2 - e1) - (e1 - e0)) / d, ((c2 - c1) - (c1 - c0)) / d, d5, d15, 2 * 500) }')"
  "$ROOT/deploy/local-cluster.sh" stop --dir "$MDIR" >/dev/null 2>&1 || true
fi
# ---- 5. fault injection -------------------------------------------------------------------------
if has faults; then
  FT=$OUT/faults.md
  ftab() { echo "$*" | tee -a "$FT"; }
  : >"$FT"
  ftab "| fault | sent | acknowledged | delivered live | delivered offline | lost (acknowledged, never delivered) | duplicated | stanza errors | offline detours for online recipients | other effects (reconnect time, p99) |"
  ftab "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"
  pid_in() { awk -v n="$2" '$1 == n { print $2 }' "$1/pids"; } # DIR NAME
  gone() { # PID LIMIT_S: waits until PID has exited
    local t=0
    while kill -0 "$1" 2>/dev/null; do sleep 0.1; t=$((t + 1)); [ $t -lt $(($2 * 10)) ] || return 1; done
  }
  # Redis down for OUTAGE seconds (signal $2), then started again on the same AOF with the
  # options deploy/local-cluster.sh gives it (Redis rewrites its /proc cmdline); the pids
  # file gets the new pid, so local-cluster.sh stop and the cleanup find it
  redis_outage() { # DIR SIGNAL
    local d=$1 sig=$2 p t0 t1
    p=$(pid_in "$d" redis)
    t0=$(date +%s.%N)
    kill "-$sig" "$p"
    gone "$p" 20 || { log "redis ignored SIG$sig"; kill -KILL "$p" 2>/dev/null || true; }
    t1=$(date +%s.%N)
    sleep "$OUTAGE"
    setsid redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$d/redis" --appendonly yes \
      --appendfsync everysec --save "" --daemonize no --protected-mode yes \
      --maxmemory-policy noeviction </dev/null >>"$d/log/redis.log" 2>&1 &
    disown # killed with its cluster, without a "Killed" line from this shell
    sed -i "s/^redis $p /redis $! /" "$d/pids"
    wait_port "$REDIS_PORT"
    awk -v a="$t0" -v b="$t1" -v c="$(date +%s.%N)" \
      'BEGIN { printf("Redis exited %.1f s after the signal, answered again %.1f s later\n", b - a, c - b) }' >"$d.effect"
  }
  # A second xmppd with edge1's node id (its environment, other ports); stopped after 12 s
  impostor() { # DIR
    local d=$1 p rc=0 t0 t1
    p=$(pid_in "$d" edge1)
    mapfile -t envs < <(tr '\0' '\n' <"/proc/$p/environ" | grep '^XMPPD_')
    t0=$(date +%s.%N)
    env "${envs[@]}" XMPPD_CLUSTER_BUS_PORT="$(free_port)" XMPPD_C2S_PORT="$(free_port)" \
      XMPPD_C2S_TLS_PORT="$(free_port)" timeout -k 5 12 "$BUILD/xmppd" -c "$d/base.conf" \
      </dev/null >"$d/log/impostor.log" 2>&1 &
    SINGLE_PIDS+=($!)
    wait $! || rc=$?
    t1=$(date +%s.%N)
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      echo "second node with edge1's id NOT refused: ran 12 s until stopped (status $rc)" >"$d.effect"
    else
      echo "second node with edge1's id exited with status $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf("%.1f", b - a) }') s" >"$d.effect"
    fi
  }
  inject() { # FAULT DIR
    local d=$2
    case $1 in
      none) ;;
      edge-kill) kill -KILL "$(pid_in "$d" edge1)" ;;
      router-kill) kill -KILL "$(pid_in "$d" router1)" ;;
      router-term)
        local p t0
        p=$(pid_in "$d" router1) t0=$(date +%s.%N)
        kill -TERM "$p"
        gone "$p" 30 || true
        echo "router1 stopped in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf("%.1f", b - a) }') s" >"$d.effect" ;;
      redis-term) redis_outage "$d" TERM ;;
      redis-kill) redis_outage "$d" KILL ;;
      dup-id) impostor "$d" ;;
    esac
  }
  fsum() { # JSON FAULT EFFECT-FILE DIR: one table row
    local arch
    arch=$(cat "$4"/log/router*.log | { grep -oE 'archive: [0-9]+ messages (could not be stored|dropped)' || true; } | awk '{ s += $2 } END { print s + 0 }')
    jq -r --arg f "$2" --arg eff "$(cat "$3" 2>/dev/null || true)" --argjson arch "$arch" '
      def n: tostring | if length > 3 then .[:-3] + "," + .[-3:] else . end;
      "| \($f) | \(.sent|n) | \(.acknowledged|n) | \(.delivered_live|n) | \(.delivered_offline|n) | \(.lost_acknowledged|n) | \(.duplicated|n) | \(.stanza_errors|n)" +
      (if .stanza_errors > 0 then " (" + (.stanza_errors_by_condition | to_entries | map("\(.key) \(.value)") | join(", ")) + ")" else "" end) +
      " | \(.offline_detours|n) | " +
      ([ (if .reconnect_s.n > 0 then "\(.reconnect_s.n) clients reconnected in \(.reconnect_s.p50) s (p50), \(.reconnect_s.max) s (max)" else empty end),
         (if (.resumed // 0) + (.resume_failed // 0) > 0 then "\(.resumed) sessions resumed (XEP-0198), \(.resume_failed) resumptions failed (new log-in), \(.resent) stanzas sent again" else empty end),
         "p99 \(.latency_ms.p99) ms",
         (if .lost_unacknowledged > 0 then "\(.lost_unacknowledged) unacknowledged never delivered" else empty end),
         (if (.login_failures|length) > 0 then "log-in failures " + (.login_failures | to_entries | map("\(.key) \(.value)") | join(", ")) else empty end),
         (if .relogin_failed > 0 then "\(.relogin_failed) final log-ins failed" else empty end),
         (if $eff != "" then $eff else empty end),
         (if $arch > 0 then "\($arch|n) archive rows not written (router log)" else empty end),
         "driver: \(.driver_cpu_share) of a core, loop lag p99 \(.driver_loop_lag_ms.p99) ms"] | join("; ")) + " |"' "$1"
  }
  FLIM=$((FAULT_DURATION + 240))
  for f in ${FAULTS//,/ }; do
    FD=$OUT/f-$f
    log "faults: $f: starting cluster (2 routers, 2 edges, Redis) in $FD"
    [ "$NO_WAIT" = 1 ] || wait_quiet
    start_cluster "$FD" 2
    # shellcheck disable=SC1091
    . "$FD/env"
    timeout 300 $XMPPCTL populate f $((2 * FAULT_PAIRS)) secret --first 1 >"$FD.populate.log" 2>&1
    rm -f "$FD.ready" "$FD.effect"
    log "faults: $f: $FAULT_PAIRS pairs across the edges, $FAULT_RATE msgs/s, ${FAULT_DURATION}s, the fault at ${FAULT_AT}s"
    timeout -s INT -k 20 "$FLIM" python3 "$ROOT/bench/faults.py" --ports "$EDGE1_PORT,$EDGE2_PORT" \
      --pairs "$FAULT_PAIRS" --rate "$FAULT_RATE" --duration "$FAULT_DURATION" --procs "$FAULT_PROCS" \
      --settle "$FAULT_SETTLE" --ready-file "$FD.ready" --json "$FD.json" --label "$f" >"$FD.out" 2>"$FD.err" &
    BENCH_PID=$!
    t=0
    while [ ! -s "$FD.ready" ] && kill -0 "$BENCH_PID" 2>/dev/null && [ $t -lt 1200 ]; do sleep 0.1; t=$((t + 1)); done
    if [ -s "$FD.ready" ]; then
      sleep "$(awk -v s="$(cat "$FD.ready")" -v n="$(date +%s.%N)" -v a="$FAULT_AT" 'BEGIN { d = s + a - n; print (d > 0 ? d : 0) }')"
      inject "$f" "$FD"
    fi
    rc=0
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    [ -s "$FD.json" ] || { log "faults: $f: the driver wrote no result (status $rc): $(tail -3 "$FD.err")"; exit 1; }
    ftab "$(fsum "$FD.json" "$f" "$FD.effect" "$FD")"
    # the row is measured: its cluster is thrown away at once (a graceful stop takes seconds)
    while read -r _ p _; do kill -KILL "$p" 2>/dev/null || true; done <"$FD/pids"
    rm -f "$FD/pids"
  done
  fig "== fault injection: $FAULT_PAIRS pairs across 2 edges (2 routers, Redis), $FAULT_RATE msgs/s, ${FAULT_DURATION}s per row, the fault at ${FAULT_AT}s"
  cat "$FT" >>"$FIG"
fi
# ---- 6. one Redis against a Redis Cluster ----------------------------------------------------------
if has rediscluster; then
  RC=$OUT/rcluster
  mkdir -p "$RC"
  start_redis_cluster "$RC"
  SRP=$(free_port)
  mkdir -p "$RC/single"
  redis-server --bind 127.0.0.1 --port "$SRP" --dir "$RC/single" --appendonly yes --appendfsync everysec \
    --save "" --daemonize no >"$RC/single/redis.log" 2>&1 &
  SINGLE_PIDS+=($!)
  wait_port "$SRP"
  for kind in single cluster; do
    if [ $kind = single ]; then addr=127.0.0.1:$SRP ports=("$SRP"); else addr=$SEEDS ports=("${RCP[@]}"); fi
    D=$OUT/rc-$kind
    log "rediscluster: cluster of 2 routers + 2 edges on $kind Redis ($addr)"
    mkdir -p "$D"
    "$ROOT/deploy/local-cluster.sh" start --build "$BUILD" --dir "$D" --routers 2 --edges 2 --redis "$addr" \
      --log-level warn --timeout 60 >"$D.start.log" 2>&1 || { cat "$D.start.log" >&2; exit 1; }
    CLUSTERS+=("$D")
    # shellcheck disable=SC1091
    . "$D/env"
    timeout 600 $XMPPCTL populate "rc$kind" "$NUSERS" secret >"$D/populate.log" 2>&1
    sleep 2
    read -r a0 b0 _ < <(rtotals "${ports[@]}")
    bench 600 login --users "$LOGIN_USERS" --user-fmt "rc$kind%d" --port "$EDGE1_PORT,$EDGE2_PORT" \
      --json "$D/login.json" --label "login-$kind" >"$D/login.txt"
    sleep 1
    read -r a1 b1 _ < <(rtotals "${ports[@]}")
    sleep 2 # the idle rate over as long as the log-in run took (heartbeats, polls)
    read -r a2 b2 _ < <(rtotals "${ports[@]}")
    echo "$a0 $b0 $a1 $b1 $a2 $b2" >"$D/redis.totals"
    bench $((DURATION + 120)) chat --pairs "$PAIRS" --window "$WINDOW" --duration "$DURATION" --user-fmt "rc$kind%d" \
      --port "$EDGE1_PORT,$EDGE2_PORT" --json "$D/chat.json" --label "chat-$kind" >"$D/chat.txt" ||
      log "chat-$kind: xmpp-bench reported errors (see $D/chat.txt): the messages in flight when the closed loop stops count as missing"
    "$ROOT/deploy/local-cluster.sh" stop --dir "$D" >/dev/null 2>&1 || true
  done
  fig "== the cluster (2 routers + 2 edges) on one Redis and on a Redis Cluster (3 primaries + 3 replicas), $LOGIN_USERS log-ins, chat $PAIRS pairs closed loop window $WINDOW ${DURATION}s"
  for kind in single cluster; do
    D=$OUT/rc-$kind
    read -r a0 b0 a1 b1 a2 b2 <"$D/redis.totals"
    ok=$(jq .results.logins_ok "$D/login.json") secs=$(jq .results.time_to_all_s "$D/login.json")
    fig "$kind: log-ins $ok ok in $secs s ($(jq -rn "$ok / $secs | floor") /s); $(awk -v a0="$a0" -v a1="$a1" -v a2="$a2" -v b0="$b0" -v b1="$b1" -v b2="$b2" -v n="$ok" -v s="$secs" 'BEGIN { n = n > 0 ? n : 1; k = s / 2; printf("Redis commands per log-in %.1f, round trips (request batches read) per log-in %.1f (idle rate subtracted)", ((a1 - a0) - (a2 - a1) * k) / n, ((b1 - b0) - (b2 - b1) * k) / n) }'); $(summary "$D/chat.json" chat)"
  done
  fig "$(jq -rn --slurpfile s "$OUT/rc-single/login.json" --slurpfile c "$OUT/rc-cluster/login.json" \
    --slurpfile sc "$OUT/rc-single/chat.json" --slurpfile cc "$OUT/rc-cluster/chat.json" \
    '"ratio Redis Cluster / one Redis: log-ins/s \((($s[0].results.time_to_all_s / $c[0].results.time_to_all_s) * 100 | round) / 100), chat msgs/s \(($cc[0].results.delivered_per_s / $sc[0].results.delivered_per_s * 100 | round) / 100), chat p99 \(($cc[0].results.latency_ms.p99 / $sc[0].results.latency_ms.p99 * 100 | round) / 100)"')"
fi
log "figures in $FIG"
