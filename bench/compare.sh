#!/usr/bin/env bash
# bench/compare.sh — xmppd vs Prosody vs ejabberd: the same xmpp-bench scenario against
# each, one server at a time, in one run; prints a side-by-side Markdown table with ratios.
#
#   bench/compare.sh [--scenario login|idle|chat|presence|everyday|all] [--users N] [--pairs P]
#                    [--rate R] [--duration S] [--presence-users N] [--roster K]
#                    [--everyday-rate R[,SERVER=R...]] [--everyday-pairs P] [--everyday-duration S]
#                    [--servers ours,prosody,ejabberd] [--out DIR] [--quick] [--ours-archive]
#                    [--mech PLAIN|SCRAM-SHA-1] [--budget SECONDS]
#
# everyday: the chat scenario open loop at an everyday rate (default 8,000 msgs/s on 1,000
# pairs, 2,000 STARTTLS sessions, 10 s; per-server rates with R,prosody=R2): delivered rate,
# server CPU, context switches and read+write system calls per message over the measurement
# window (xmpp-bench's run_server_*; ejabberd = beam.smp + epmd), p50/p99, RSS.
#
# Installs Prosody and ejabberd from Debian when missing (needs root/sudo then), builds
# ours (make build), and for every scenario and server: starts the server on a free
# loopback port with a private config and data directory, provisions the accounts,
# checks a log-in with slixmpp, runs build/xmpp-bench with identical arguments and
# --server-pid, stops the server. Only one server runs at a time. Every JSON/PNG goes to
# --out (default build/compare-DATE), the table to stdout and OUT/table.md.
# Loopback only. Bounded: a timeout around every step and an overall budget (default
# 1200 s, --quick 330 s); runs that would start after the budget is spent are skipped.
# Details and every configuration change to the peers: docs/compare.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PEERS=$ROOT/bench/peers
PY=/usr/bin/python3

SCENARIO=all USERS=5000 PAIRS=100 RATE=0 DURATION=15 PUSERS=1000 ROSTER=10 PRATE=""
SERVERS=ours,prosody,ejabberd OUT="" QUICK=0 MECH=PLAIN BUDGET="" PASSWORD=secret
ERATE="" EPAIRS="" EDURATION="" ARCHIVE=0
usage() { sed -n '2,24p' "$0"; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --scenario) SCENARIO=$2; shift 2;;
    --users) USERS=$2; shift 2;;
    --pairs) PAIRS=$2; shift 2;;
    --rate) RATE=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --presence-users) PUSERS=$2; shift 2;;
    --roster) ROSTER=$2; shift 2;;
    --presence-rate) PRATE=$2; shift 2;;
    --servers) SERVERS=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --mech) MECH=$2; shift 2;;
    --budget) BUDGET=$2; shift 2;;
    --everyday-rate) ERATE=$2; shift 2;;
    --everyday-pairs) EPAIRS=$2; shift 2;;
    --everyday-duration) EDURATION=$2; shift 2;;
    --ours-archive) ARCHIVE=1; shift;;
    --quick) QUICK=1; shift;;
    -h|--help) usage 0;;
    *) echo "compare.sh: unknown option $1" >&2; usage;;
  esac
done
if [ "$QUICK" = 1 ]; then
  # ~2-3 minutes for the three servers: small numbers, short runs
  USERS=500 PAIRS=50 DURATION=5 PUSERS=200 ROSTER=5
  [ -z "$EPAIRS" ] && EPAIRS=200
  [ -z "$ERATE" ] && ERATE=2000
  [ -z "$EDURATION" ] && EDURATION=5
  [ -z "$BUDGET" ] && BUDGET=330
fi
EPAIRS=${EPAIRS:-1000} ERATE=${ERATE:-8000} EDURATION=${EDURATION:-10}
# everyday rate per server: "8000" or "8000,prosody=3000"
erate_of() {
  local r=${ERATE%%,*} kv
  IFS=, read -r -a kv <<< "$ERATE"
  for x in "${kv[@]:1}"; do [ "${x%%=*}" = "$1" ] && r=${x#*=}; done
  echo "$r"
}
# The peers load no archive module (no mod_mam), so ours runs with its archive (XEP-0313,
# on by default) off unless --ours-archive: the same work for all three.
[ "$ARCHIVE" = 1 ] || export XMPPD_SERVER_MAM=false
BUDGET=${BUDGET:-1200}
[ -z "$PRATE" ] && PRATE=$PUSERS   # every user changes presence once a second
case $SCENARIO in
  all) SCENARIOS="login idle chat presence everyday";;
  login|idle|chat|presence|everyday) SCENARIOS=$SCENARIO;;
  *) echo "compare.sh: --scenario login|idle|chat|presence|everyday|all" >&2; exit 2;;
esac
IFS=, read -r -a SERVER_LIST <<< "$SERVERS"
for s in "${SERVER_LIST[@]}"; do
  case $s in ours|prosody|ejabberd) ;; *) echo "compare.sh: unknown server '$s'" >&2; exit 2;; esac
done
if [ "$(id -u)" -ne 0 ]; then
  for s in "${SERVER_LIST[@]}"; do
    if [ "$s" != ours ]; then
      echo "compare.sh: $s is installed with apt-get and run as its own system user: run as root (or --servers ours)" >&2
      exit 2
    fi
  done
fi
OUT=$(realpath -m "${OUT:-build/compare-$(date +%Y%m%d-%H%M%S)}")
RUN=$(mktemp -d /tmp/xmpp-compare.XXXXXX)
chmod 755 "$RUN"
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[compare $(($(date +%s) - T0))s] $*" >&2; }

CURRENT=""   # "server dir" of the server running now, for the exit trap
cleanup() {
  if [ -n "$CURRENT" ]; then
    set -- $CURRENT
    "$PEERS/$1.sh" stop --dir "$2" >/dev/null 2>&1 || true
  fi
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build ours, install the peers ------------------------------------------------------
log "make build"
timeout 900 make build >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log" >&2; exit 1; }
BENCH=$ROOT/build/xmpp-bench
[ -x "$BENCH" ] || { echo "compare.sh: no $BENCH after make build" >&2; exit 1; }
for s in "${SERVER_LIST[@]}"; do
  [ "$s" = ours ] && continue
  timeout 900 "$PEERS/$s.sh" install
done

# ---- versions and machine -----------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  for s in "${SERVER_LIST[@]}"; do echo "$s: $("$PEERS/$s.sh" version)"; done
  echo "xmpp-bench: $(git rev-parse --short HEAD)"
} > "$OUT/versions.txt"

# ---- shared certificate and credentials -------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" \
  -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null
chmod 644 "$RUN/cert.pem" "$RUN/key.pem"   # the peers read it as their own users
MAXU=0
for sc in $SCENARIOS; do
  case $sc in
    login|idle) n=$USERS;; chat) n=$((2 * PAIRS));; presence) n=$PUSERS;; everyday) n=$((2 * EPAIRS));;
  esac
  [ "$n" -gt "$MAXU" ] && MAXU=$n
done
NEED_CREDS=0
for s in "${SERVER_LIST[@]}"; do [ "$s" != ours ] && NEED_CREDS=1; done
if [ "$NEED_CREDS" = 1 ]; then
  log "SCRAM-SHA-1 credentials for $MAXU accounts"
  timeout 600 $PY "$PEERS/gen_users.py" creds --users "$MAXU" --password "$PASSWORD" --out "$RUN/creds-all.tsv"
fi

# ---- one run: start, provision, check, bench, stop ------------------------------------------------
run_one() {   # run_one SCENARIO SERVER
  local sc=$1 s=$2 dir="$RUN/$2-$1" users roster=0 args=() pid port rc tmo
  local json="$OUT/$sc-$s.json" status="$OUT/$sc-$s.status"
  rm -f "$json" "$status" "$OUT/$sc-$s.png"
  case $sc in
    login)    users=$USERS; args=(--users "$USERS"); tmo=$((USERS / 20 + 60));;
    idle)     users=$USERS; args=(--users "$USERS" --duration "$DURATION"); tmo=$((USERS / 20 + DURATION + 60));;
    chat)     users=$((2 * PAIRS)); args=(--pairs "$PAIRS" --rate "$RATE" --duration "$DURATION")
              tmo=$((users / 20 + DURATION + 60));;
    everyday) users=$((2 * EPAIRS)); args=(--pairs "$EPAIRS" --rate "$(erate_of "$s")" --duration "$EDURATION")
              tmo=$((users / 20 + EDURATION + 90));;
    presence) users=$PUSERS; roster=$ROSTER
              args=(--users "$PUSERS" --roster "$ROSTER" --rate "$PRATE" --duration "$DURATION")
              tmo=$((users / 20 + DURATION + 60));;
  esac
  local left=$((BUDGET - ($(date +%s) - T0)))
  if [ "$left" -lt 20 ]; then
    log "$sc/$s: skipped (time budget of ${BUDGET}s spent)"
    echo "skipped (budget)" > "$status"
    return 0
  fi
  [ "$tmo" -gt "$left" ] && tmo=$left   # never run past the budget
  mkdir -p "$dir"
  head -n "$users" "$RUN/creds-all.tsv" > "$dir/creds.tsv" 2>/dev/null || true
  port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log "$sc/$s: starting on 127.0.0.1:$port, $users accounts, roster $roster"
  CURRENT="$s $dir"
  if ! pid=$(timeout 300 "$PEERS/$s.sh" start --dir "$dir" --port "$port" --cert "$RUN/cert.pem" \
               --key "$RUN/key.pem" --users "$users" --password "$PASSWORD" --roster "$roster" \
               --creds "$dir/creds.tsv" 2>>"$OUT/$sc-$s.log"); then
    log "$sc/$s: server did not start (see $OUT/$sc-$s.log)"
    echo "start failed" > "$status"
    "$PEERS/$s.sh" stop --dir "$dir" >/dev/null 2>&1 || true
    CURRENT=""
    return 0
  fi
  # ejabberd: the VM and its port mapper (epmd) both count; Prosody and ours: one process
  local pids=$pid
  if [ "$s" = ejabberd ]; then
    local e
    for e in $(pgrep -x -u ejabberd epmd || true); do pids=$pids,$e; done
  fi
  local expect=()
  [ "$roster" -gt 0 ] && expect=(--expect-roster "$roster")
  if ! timeout 60 "$PEERS/check_login.py" --port "$port" --password "$PASSWORD" "${expect[@]}" >>"$OUT/$sc-$s.log" 2>&1; then
    log "$sc/$s: slixmpp log-in check failed (see $OUT/$sc-$s.log)"
    echo "log-in check failed" > "$status"
  else
    log "$sc/$s: pids $pids, running xmpp-bench $sc (timeout ${tmo}s)"
    cut -d' ' -f1-3 /proc/loadavg > "$OUT/$sc-$s.load"
    local bsc=$sc
    [ "$sc" = everyday ] && bsc=chat
    set +e
    timeout -k 10 "$tmo" "$BENCH" "$bsc" --host 127.0.0.1 --port "$port" --domain localhost \
      --tls starttls --mech "$MECH" --password "$PASSWORD" "${args[@]}" --server-pid "$pids" \
      --json "$json" --plot "$OUT/$sc-$s.png" --label "$s" >>"$OUT/$sc-$s.log" 2>&1
    rc=$?
    set -e
    case $rc in
      0) echo ok > "$status";;
      124|137) echo "timeout (${tmo}s)" > "$status";;
      # non-zero: a failed log-in, a dropped session, a bounce or a loss (the summary's
      # ERRORS line), or a setup failure: never compared as a result
      *) echo "failed (rc $rc)$(grep -m1 -E 'ERRORS:' "$OUT/$sc-$s.log" | sed 's/^ */: /')" > "$status";;
    esac
    [ "$rc" -ne 0 ] && log "$sc/$s: xmpp-bench exited $rc (see $OUT/$sc-$s.log)"
    grep -E 'log-ins:|closed loop|open loop|sessions|RSS per|presence' "$OUT/$sc-$s.log" | sed 's/^/    /' >&2 || true
  fi
  timeout 90 "$PEERS/$s.sh" stop --dir "$dir" >/dev/null 2>&1 || log "$sc/$s: stop failed"
  CURRENT=""
  # keep the server's own log next to the results; drop the data directory
  for f in prosody.log xmppd.log logs/ejabberd.log logs/error.log; do
    [ -s "$dir/$f" ] && cp "$dir/$f" "$OUT/$sc-$s.server-$(basename "$f")"
  done
  rm -rf "$dir"
}

for sc in $SCENARIOS; do
  for s in "${SERVER_LIST[@]}"; do
    run_one "$sc" "$s"
  done
done

# ---- table --------------------------------------------------------------------------------------
{
  echo "## xmppd vs Prosody vs ejabberd ($(date -u +%Y-%m-%d), $(nproc) cores, loopback, STARTTLS + SASL $MECH)"
  echo
  echo "ours' archive (XEP-0313): $([ "$ARCHIVE" = 1 ] && echo on || echo off, as the peers load none); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  sed 's/^/    /' "$OUT/versions.txt"
  echo
  $PY "$PEERS/table.py" "$OUT" --servers "$SERVERS" --scenarios "$(echo $SCENARIOS | tr ' ' ,)"
} > "$OUT/table.md"
cat "$OUT/table.md"
log "done in $(($(date +%s) - T0))s; results in $OUT"
