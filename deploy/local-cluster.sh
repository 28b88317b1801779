#!/usr/bin/env bash
# Starts a local xmppd cluster as plain processes on loopback: one redis-server (AOF on),
# routers (node ids 1..R) and edges (node ids 11..10+E), each edge with its own STARTTLS
# and direct-TLS client ports. Every node is configured by the same XMPPD_* environment
# variables as the services of docker-compose.yml (docs/cluster.md, "Running a cluster").
#
#   deploy/local-cluster.sh [start] [options]     start (in the background unless --fg)
#   deploy/local-cluster.sh stop   --dir DIR      stop what DIR/pids lists
#   deploy/local-cluster.sh status --dir DIR      show which processes are alive
#
# State directory (--dir, default a new mktemp dir): base.conf (the one shared config,
# also what xmppctl reads), env (shell-sourceable: ports, addresses, paths), pids
# ("NAME PID" per line), cert.pem/key.pem, redis/ (AOF), log/NAME.log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=$(basename "$0")

usage() {
  cat <<EOF
usage: $PROG [start] [options]
       $PROG stop [--dir DIR | DIR]
       $PROG status [--dir DIR | DIR]

Starts redis-server, R routers (node ids 1..R) and E edges (node ids 11..10+E) on
127.0.0.1, configured through XMPPD_* environment variables (docs/cluster.md).

options:
  --build DIR        build directory with xmppd, xmppctl, xmpp-bench (default: build/
                     of the source tree)
  --dir DIR          state directory (default: a new mktemp -d directory)
  --base-port N      port layout from N (default: a random free range):
                       redis N, node bus ports N+node_id (routers N+1.., edges N+11..),
                       edge i: STARTTLS N+100+2(i-1), direct TLS N+101+2(i-1)
  --redis-port N     port of the redis-server started here (default: the base port)
  --redis HOST:PORT  use this running Redis instead of starting one
  --routers N        routers, 1..10 (default 2)
  --edges N          edges, 1..89 (default 2)
  --domain NAME      XMPP domain (default localhost)
  --name NAME        cluster name, prefix of the Redis keys (default xmpp)
  --cert FILE --key FILE
                     client TLS certificate and key (default: self-signed, made with openssl)
  --log-level LEVEL  xmppd log level (default info)
  --timeout S        seconds to wait for each port to listen (default 20)
  --fg               stay in the foreground; Ctrl-C stops the cluster
  --bg               return once everything listens (default); stop with: $PROG stop --dir DIR
  -h, --help         this help

Tests and benches: . DIR/env   (EDGE1_PORT, EDGE1_TLS_PORT, REDIS_ADDR, XMPPCTL, ...)
EOF
}

die() { echo "$PROG: $*" >&2; exit 2; }
log() { echo "$PROG: $*" >&2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
in_range() { is_uint "$1" && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; } # VALUE MIN MAX

# A TCP port on 127.0.0.1 accepts connections (bash's /dev/tcp, bounded by timeout).
port_listens() {
  timeout 1 bash -c ': </dev/tcp/127.0.0.1/'"$1" 2>/dev/null
}

# The process PID is alive and runs the program named PROGNAME (guards against pid reuse).
pid_is() {
  local pid=$1 progname=$2 exe
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  exe=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $exe == *"$progname"* ]]
}

# Stops every process of a pids file, newest first (edges, routers, then Redis):
# SIGTERM, up to 15 s, then SIGKILL.
stop_pids() {
  local pidfile=$1 name pid prog i
  [ -f "$pidfile" ] || return 0
  local -a names=() pids=() progs=()
  while read -r name pid prog; do
    [ -n "${pid:-}" ] || continue
    names+=("$name"); pids+=("$pid"); progs+=("${prog:-xmppd}")
  done <"$pidfile"
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    if pid_is "${pids[i]}" "${progs[i]}"; then
      kill -TERM "${pids[i]}" 2>/dev/null || true
      local t=0
      while pid_is "${pids[i]}" "${progs[i]}" && [ $t -lt 150 ]; do sleep 0.1; t=$((t + 1)); done
      if pid_is "${pids[i]}" "${progs[i]}"; then
        log "${names[i]} (pid ${pids[i]}) ignored SIGTERM for 15 s: SIGKILL"
        kill -KILL "${pids[i]}" 2>/dev/null || true
      fi
    fi
  done
  rm -f "$pidfile"
}

cmd_stop() {
  local dir=$1
  [ -n "$dir" ] || die "stop: give the state directory (--dir DIR)"
  [ -f "$dir/pids" ] || die "stop: no $dir/pids (nothing running from there?)"
  stop_pids "$dir/pids"
  echo "stopped the cluster of $dir"
}

cmd_status() {
  local dir=$1 name pid prog rc=0
  [ -n "$dir" ] || die "status: give the state directory (--dir DIR)"
  [ -f "$dir/pids" ] || { echo "not running ($dir/pids missing)"; return 3; }
  while read -r name pid prog; do
    if pid_is "$pid" "${prog:-xmppd}"; then echo "$name pid $pid running"
    else echo "$name pid $pid DEAD"; rc=3; fi
  done <"$dir/pids"
  return $rc
}

# ---- arguments ----------------------------------------------------------------------
CMD=start
case "${1:-}" in
  start | stop | status) CMD=$1; shift ;;
esac

BUILD=$ROOT/build DIR="" BASE_PORT="" REDIS_PORT="" REDIS_EXT="" ROUTERS=2 EDGES=2
DOMAIN=localhost NAME=xmpp CERT="" KEY="" LOG_LEVEL=info TIMEOUT=20 FG=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --fg) FG=1; shift; continue ;;
    --bg) FG=0; shift; continue ;;
  esac
  if [ "$CMD" != start ] && [ $# -eq 1 ] && [[ $1 != -* ]]; then DIR=$1; shift; continue; fi
  case "$1" in
    --build | --dir | --base-port | --redis-port | --redis | --routers | --edges | --domain | \
      --name | --cert | --key | --log-level | --timeout)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)" ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  case "$1" in
    --build) BUILD=$2 ;;
    --dir) DIR=$2 ;;
    --base-port) BASE_PORT=$2 ;;
    --redis-port) REDIS_PORT=$2 ;;
    --redis) REDIS_EXT=$2 ;;
    --routers) ROUTERS=$2 ;;
    --edges) EDGES=$2 ;;
    --domain) DOMAIN=$2 ;;
    --name) NAME=$2 ;;
    --cert) CERT=$2 ;;
    --key) KEY=$2 ;;
    --log-level) LOG_LEVEL=$2 ;;
    --timeout) TIMEOUT=$2 ;;
  esac
  shift 2
done

case "$CMD" in
  stop) cmd_stop "$DIR"; exit 0 ;;
  status) cmd_status "$DIR"; exit $? ;;
esac

in_range "$ROUTERS" 1 10 || die "--routers must be 1..10"
in_range "$EDGES" 1 89 || die "--edges must be 1..89"
in_range "$TIMEOUT" 1 3600 || die "--timeout must be a positive number of seconds"
[ -z "$BASE_PORT" ] || in_range "$BASE_PORT" 1024 65300 || die "--base-port must be 1024..65300"
[ -z "$REDIS_PORT" ] || in_range "$REDIS_PORT" 1 65535 || die "--redis-port must be 1..65535"
[ -z "$REDIS_EXT" ] || [[ $REDIS_EXT == *:* ]] || die "--redis must be HOST:PORT"
[ -z "$REDIS_EXT" ] || [ -z "$REDIS_PORT" ] || die "--redis and --redis-port exclude each other"
[ -z "$CERT$KEY" ] || { [ -n "$CERT" ] && [ -n "$KEY" ]; } || die "--cert and --key go together"
[[ $DOMAIN =~ ^[A-Za-z0-9.-]+$ ]] || die "--domain '$DOMAIN' is not a host name"
[[ $NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--name '$NAME' must be letters, digits, '_', '.', '-'"

case "$BUILD" in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
XMPPD=$BUILD/xmppd XMPPCTL=$BUILD/xmppctl XMPP_BENCH=$BUILD/xmpp-bench
[ -x "$XMPPD" ] || die "no $XMPPD: build first (make build) or pass --build DIR"
[ -n "$REDIS_EXT" ] || command -v redis-server >/dev/null || die "redis-server is not installed (deploy/install-deps.sh)"
if [ -n "$CERT" ]; then
  if [ ! -r "$CERT" ] || [ ! -r "$KEY" ]; then die "cannot read --cert $CERT / --key $KEY"; fi
  CERT=$(realpath "$CERT") KEY=$(realpath "$KEY")
else
  command -v openssl >/dev/null || die "openssl is not installed (needed for a self-signed certificate)"
fi

# ---- ports ----------------------------------------------------------------------------
router_id() { echo "$1"; }
edge_id() { echo $((10 + $1)); }
all_ports() { # every port this cluster binds for base $1
  local b=$1 i
  [ -n "$REDIS_EXT" ] || echo "${REDIS_PORT:-$b}"
  for ((i = 1; i <= ROUTERS; i++)); do echo $((b + $(router_id $i))); done
  for ((i = 1; i <= EDGES; i++)); do
    echo $((b + $(edge_id $i))) $((b + 100 + 2 * (i - 1))) $((b + 101 + 2 * (i - 1)))
  done
}
range_free() {
  local p
  for p in $(all_ports "$1"); do
    [ "$p" -le 65535 ] || return 1
    ! port_listens "$p" || return 1
  done
}
if [ -z "$BASE_PORT" ]; then
  for _ in $(seq 1 30); do
    b=$((20000 + (RANDOM % 120) * 100)) # below the ephemeral ports (32768-)
    if range_free "$b"; then BASE_PORT=$b; break; fi
  done
  [ -n "$BASE_PORT" ] || die "found no free port range: pass --base-port"
else
  for p in $(all_ports "$BASE_PORT"); do
    [ "$p" -le 65535 ] || die "--base-port $BASE_PORT: port $p is out of range"
    ! port_listens "$p" || die "port $p (from --base-port $BASE_PORT) is already in use"
  done
fi
[ -n "$REDIS_PORT" ] || REDIS_PORT=$BASE_PORT
if [ -n "$REDIS_EXT" ]; then REDIS_ADDR=$REDIS_EXT; else REDIS_ADDR=127.0.0.1:$REDIS_PORT; fi

# ---- state directory --------------------------------------------------------------------
if [ -z "$DIR" ]; then
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/xmppd-cluster.XXXXXX")
else
  mkdir -p "$DIR"
fi
DIR=$(cd "$DIR" && pwd)
if [ -f "$DIR/pids" ]; then
  while read -r n p prog; do
    ! pid_is "$p" "${prog:-xmppd}" || die "$DIR holds a running cluster ($n pid $p): $PROG stop --dir $DIR"
  done <"$DIR/pids"
  rm -f "$DIR/pids"
fi
mkdir -p "$DIR/log" "$DIR/redis"
PIDS=$DIR/pids
: >"$PIDS"

STARTED_OK=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$STARTED_OK" = 0 ] || [ "$FG" = 1 ]; then
    if [ "$STARTED_OK" = 1 ]; then log "stopping the cluster of $DIR"
    else log "start failed: stopping what was started (logs in $DIR/log)"; fi
    stop_pids "$PIDS"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" detached (own session, stdin /dev/null, output to log/NAME.log), records
# "NAME PID PROGNAME" in the pids file. The pid is the exec'd program's own pid.
spawn() {
  local name=$1 progname=$2; shift 2
  local pidf=$DIR/log/$name.pid t=0
  rm -f "$pidf"
  local -a detach=()
  if command -v setsid >/dev/null; then detach=(setsid); fi
  # shellcheck disable=SC2016 # $$, $0 and $@ are the inner shell's
  "${detach[@]}" bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$@" \
    </dev/null >>"$DIR/log/$name.log" 2>&1 &
  while [ ! -s "$pidf" ] && [ $t -lt 50 ]; do sleep 0.1; t=$((t + 1)); done
  [ -s "$pidf" ] || die "$name did not start"
  echo "$name $(cat "$pidf") $progname" >>"$PIDS"
  rm -f "$pidf"
}

# Waits until every port listens; fails early when NAME's process exits.
wait_ports() {
  local name=$1; shift
  local pid deadline p
  pid=$(awk -v n="$name" '$1 == n { print $2 }' "$PIDS")
  deadline=$((SECONDS + TIMEOUT))
  for p in "$@"; do
    until port_listens "$p"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        log "$name exited before listening on port $p; its log ($DIR/log/$name.log):"
        tail -n 20 "$DIR/log/$name.log" >&2 || true
        exit 1
      fi
      if [ $SECONDS -ge $deadline ]; then
        log "$name: port $p does not listen after ${TIMEOUT} s; its log ($DIR/log/$name.log):"
        tail -n 20 "$DIR/log/$name.log" >&2 || true
        exit 1
      fi
      sleep 0.1
    done
  done
}

# ---- certificate ----------------------------------------------------------------------
if [ -z "$CERT" ]; then
  CERT=$DIR/cert.pem KEY=$DIR/key.pem
  if [ ! -s "$CERT" ] || [ ! -s "$KEY" ]; then
    san="DNS:$DOMAIN,DNS:localhost,IP:127.0.0.1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=$DOMAIN" -addext "subjectAltName=$san" \
      -keyout "$KEY" -out "$CERT" 2>"$DIR/log/openssl.log" \
      || { cat "$DIR/log/openssl.log" >&2; die "openssl could not make a certificate"; }
    chmod 600 "$KEY"
  fi
fi

# ---- base configuration (shared by every node and by xmppctl) ---------------------------
# Nodes get everything else from XMPPD_* variables (environment beats the file).
cat >"$DIR/base.conf" <<CONF
; local cluster of $DIR: shared by every node and by xmppctl; per-node settings come
; from XMPPD_* environment variables (docs/cluster.md)
[server]
domain = $DOMAIN
[storage]
backend = redis
redis = $REDIS_ADDR
[cluster]
; what xmppctl cluster / xmppctl sessions read (nodes get their role and id from XMPPD_*)
redis = $REDIS_ADDR
name = $NAME
CONF

# ---- Redis ------------------------------------------------------------------------------
if [ -z "$REDIS_EXT" ]; then
  # AOF with an fsync every second: a crash loses at most ~1 s of writes (docs/cluster.md).
  spawn redis redis-server redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
    --dir "$DIR/redis" --appendonly yes --appendfsync everysec \
    --save "" --daemonize no --protected-mode yes --maxmemory-policy noeviction
  wait_ports redis "$REDIS_PORT"
  if command -v redis-cli >/dev/null; then
    t=0
    until [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; do
      [ $t -lt $((TIMEOUT * 10)) ] || die "redis on port $REDIS_PORT does not answer PING"
      sleep 0.1; t=$((t + 1))
    done
  fi
fi

# ---- nodes ------------------------------------------------------------------------------
# One node's environment: exactly the XMPPD_* variables docker-compose.yml sets
# (tests/integration/test_deploy.py checks that the two sets are equal).
# node_env ROLE NODE_ID BUS_PORT C2S_PORT C2S_TLS_PORT
node_env() {
  NODE_ENV=(
    XMPPD_SERVER_DOMAIN="$DOMAIN"
    XMPPD_SERVER_LOG_LEVEL="$LOG_LEVEL"
    XMPPD_STORAGE_BACKEND=redis
    XMPPD_STORAGE_REDIS="$REDIS_ADDR"
    XMPPD_CLUSTER_ROLE="$1"
    XMPPD_CLUSTER_NODE_ID="$2"
    XMPPD_CLUSTER_REDIS="$REDIS_ADDR"
    XMPPD_CLUSTER_NAME="$NAME"
    XMPPD_CLUSTER_BUS_ADDRESS=127.0.0.1
    XMPPD_CLUSTER_BUS_PORT="$3"
    XMPPD_CLUSTER_ADVERTISE=127.0.0.1
    XMPPD_C2S_ADDRESS=127.0.0.1
    XMPPD_C2S_PORT="$4"
    XMPPD_C2S_TLS_PORT="$5"
    XMPPD_TLS_CERTIFICATE="$CERT"
    XMPPD_TLS_KEY="$KEY"
  )
}

start_node() { # NAME ROLE NODE_ID BUS_PORT C2S_PORT C2S_TLS_PORT
  local name=$1
  node_env "$2" "$3" "$4" "$5" "$6"
  local out
  if ! out=$(env "${NODE_ENV[@]}" "$XMPPD" -c "$DIR/base.conf" --check-config 2>&1); then
    log "$name: the configuration is refused:"
    echo "$out" >&2
    exit 1
  fi
  spawn "$name" xmppd env "${NODE_ENV[@]}" "$XMPPD" -c "$DIR/base.conf"
}

for ((i = 1; i <= ROUTERS; i++)); do
  id=$(router_id $i)
  start_node "router$i" router "$id" $((BASE_PORT + id)) 0 0
done
for ((i = 1; i <= ROUTERS; i++)); do
  id=$(router_id $i)
  wait_ports "router$i" $((BASE_PORT + id))
done
for ((i = 1; i <= EDGES; i++)); do
  id=$(edge_id $i)
  start_node "edge$i" edge "$id" $((BASE_PORT + id)) \
    $((BASE_PORT + 100 + 2 * (i - 1))) $((BASE_PORT + 101 + 2 * (i - 1)))
done
for ((i = 1; i <= EDGES; i++)); do
  id=$(edge_id $i)
  wait_ports "edge$i" $((BASE_PORT + id)) \
    $((BASE_PORT + 100 + 2 * (i - 1))) $((BASE_PORT + 101 + 2 * (i - 1)))
done

# ---- env file -----------------------------------------------------------------------------
{
  echo "# written by deploy/local-cluster.sh: . this file (bash) to reach the cluster"
  printf 'CLUSTER_DIR=%q\n' "$DIR"
  printf 'CLUSTER_NAME=%q\n' "$NAME"
  printf 'CLUSTER_DOMAIN=%q\n' "$DOMAIN"
  printf 'BASE_PORT=%q\n' "$BASE_PORT"
  printf 'REDIS_ADDR=%q\n' "$REDIS_ADDR"
  printf 'REDIS_HOST=%q\n' "${REDIS_ADDR%:*}"
  printf 'REDIS_PORT=%q\n' "${REDIS_ADDR##*:}"
  printf 'ROUTERS=%q\nEDGES=%q\n' "$ROUTERS" "$EDGES"
  ports="" tls_ports=""
  for ((i = 1; i <= ROUTERS; i++)); do
    id=$(router_id $i)
    printf 'ROUTER%d_NODE_ID=%d\nROUTER%d_BUS_PORT=%d\n' "$i" "$id" "$i" $((BASE_PORT + id))
  done
  for ((i = 1; i <= EDGES; i++)); do
    id=$(edge_id $i)
    p=$((BASE_PORT + 100 + 2 * (i - 1))) tp=$((BASE_PORT + 101 + 2 * (i - 1)))
    printf 'EDGE%d_NODE_ID=%d\nEDGE%d_BUS_PORT=%d\n' "$i" "$id" "$i" $((BASE_PORT + id))
    printf 'EDGE%d_PORT=%d\nEDGE%d_TLS_PORT=%d\n' "$i" "$p" "$i" "$tp"
    ports="$ports${ports:+ }$p" tls_ports="$tls_ports${tls_ports:+ }$tp"
  done
  printf 'EDGE_PORTS=%q\nEDGE_TLS_PORTS=%q\n' "$ports" "$tls_ports"
  printf 'TLS_CERTIFICATE=%q\nTLS_KEY=%q\n' "$CERT" "$KEY"
  printf 'BASE_CONF=%q\n' "$DIR/base.conf"
  printf 'BIN_XMPPD=%q\nBIN_XMPPCTL=%q\nBIN_XMPP_BENCH=%q\n' "$XMPPD" "$XMPPCTL" "$XMPP_BENCH"
  printf 'XMPPCTL=%q\n' "$XMPPCTL -c $DIR/base.conf"
} >"$DIR/env"
STARTED_OK=1

# ---- summary --------------------------------------------------------------------------------
echo
echo "  xmppd cluster '$NAME' for $DOMAIN (state: $DIR)"
if [ -n "$REDIS_EXT" ]; then echo "    redis    $REDIS_ADDR (external)"
else echo "    redis    $REDIS_ADDR  (AOF: $DIR/redis, log: $DIR/log/redis.log)"; fi
for ((i = 1; i <= ROUTERS; i++)); do
  id=$(router_id $i)
  echo "    router$i  node $id  bus 127.0.0.1:$((BASE_PORT + id))"
done
for ((i = 1; i <= EDGES; i++)); do
  id=$(edge_id $i)
  echo "    edge$i    node $id  bus 127.0.0.1:$((BASE_PORT + id))  clients: STARTTLS 127.0.0.1:$((BASE_PORT + 100 + 2 * (i - 1))), direct TLS 127.0.0.1:$((BASE_PORT + 101 + 2 * (i - 1)))"
done
cat <<MSG

  Add a user:   $XMPPCTL -c $DIR/base.conf adduser alice@$DOMAIN
          (or:  $XMPPCTL --set storage.backend=redis --set storage.redis=$REDIS_ADDR adduser alice@$DOMAIN)
  Live nodes:   $XMPPCTL -c $DIR/base.conf cluster     (where a user is: ... sessions alice@$DOMAIN)
  Logs:         $DIR/log/NAME.log     Ports etc. for scripts: . $DIR/env
MSG
if [ "$FG" = 1 ]; then
  echo "  Ctrl-C stops the cluster."
  echo
  # Wait until a node dies or we are told to stop (the EXIT trap stops the rest).
  while :; do
    while read -r n p prog; do
      if ! pid_is "$p" "$prog"; then
        log "$n (pid $p) exited; stopping the cluster"
        exit 1
      fi
    done <"$PIDS"
    sleep 1
  done
else
  echo "  Stop:         $0 stop --dir $DIR"
  echo
fi
