#!/usr/bin/env bash
# The XEP-0313 archive's figures (docs/bench.md, "Archive"):
#  1. mam-bench on SQLite and on Redis (a redis-server of its own on a free port):
#     100,000 messages in one archive, pages of 50 at random positions, bytes per message;
#  2. chat CPU per message with the archive on and off (server.mam): xmppd on SQLite (or
#     Redis with --chat-redis), no TLS, xmpp-bench chat, open loop; server CPU of the chat
#     phase / messages delivered; --rounds runs of on then off, each round's ratio, then
#     the ratios' min and median (the machine is shared: compare within a round).
#   bench/mam.sh [--pairs 100] [--rate 2000] [--duration 10] [--messages 100000] [--rounds 1]
#                [--commit-ms 1000] [--chat-only] [--chat-redis]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
pairs=100 rate=2000 duration=10 messages=100000 rounds=1 commit_ms=1000 chat_only=0 chat_redis=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --commit-ms) commit_ms=$2; shift 2 ;;
    --chat-only) chat_only=1; shift ;;
    --chat-redis) chat_redis=1; shift ;;
    --pairs) pairs=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --messages) messages=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
dir=$(mktemp -d /tmp/xmppd-mam-bench.XXXXXX)
rpid=
cleanup() { [ -n "$rpid" ] && kill "$rpid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >/dev/null &
rpid=$!
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
if [ "$chat_only" = 0 ]; then
  echo "== store: $messages messages, pages of 50"
  "$B/mam-bench" sqlite "$dir/archive.db" --messages "$messages"
  "$B/mam-bench" redis "127.0.0.1:$rport" --messages "$messages"
  redis-cli -p "$rport" info commandstats | grep -E 'evalsha|xrange|xrevrange|zrangebylex' | sed 's/^/  redis-server /'
fi

backend=sqlite; [ "$chat_redis" = 1 ] && backend=redis
echo "== chat ($backend): $pairs pairs, $rate msgs/s, ${duration} s, archive on / off (mam_commit_ms $commit_ms), $rounds round(s)"
: > "$dir/ratios"
for round in $(seq "$rounds"); do
  for mam in true false; do
    port=$(free_port)
    redis-cli -p "$rport" flushall >/dev/null
    store="path = $dir/chat-$round-$mam.db"
    [ "$chat_redis" = 1 ] && store="backend = redis
redis = 127.0.0.1:$rport"
    cat > "$dir/x.conf" <<EOF
[server]
domain = localhost
log_level = warn
io_threads = 2
router_workers = 2
mam = $mam
mam_commit_ms = $commit_ms
[c2s]
port = $port
tls_port = 0
[tls]
required = false
[limits]
rate_stanzas = 0
rate_bytes = 0
[storage]
$store
EOF
    "$B/xmppctl" -c "$dir/x.conf" populate user $((pairs * 2)) secret >/dev/null
    "$B/xmppd" -c "$dir/x.conf" >"$dir/xmppd.log" 2>&1 &
    xpid=$!
    sleep 1
    r0=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
    "$B/xmpp-bench" chat --port "$port" --tls none --mech SCRAM-SHA-256 --pairs "$pairs" --rate "$rate" --duration "$duration" \
      --server-pid "$xpid" --json "$dir/chat-$mam.json" >"$dir/bench.log" 2>&1 || { cat "$dir/bench.log" "$dir/xmppd.log"; exit 1; }
    r1=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
    kill "$xpid"; wait "$xpid" || true
    # with --chat-redis, redis-server's CPU of the run (log-ins included) is counted too
    rcpu=0; [ "$chat_redis" = 1 ] && rcpu=$(( r1 - r0 ))
    python3 - "$dir/chat-$mam.json" "$mam" "$dir/ratios" "$rcpu" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1])); r = j["results"]
login = r.get("server_cpu_ms_per_login", 0) * r["logins_ok"] / 1000
cpu = j["server"]["cpu_s"] - login
redis = int(sys.argv[4]) / int(sys.argv[5])
us = (cpu + redis) * 1e6 / max(1, r["delivered"])
lat = r.get("latency_ms", {})
extra = f" + redis-server {redis:.2f} s" if redis else ""
print(f"  mam={sys.argv[2]}: delivered {r['delivered']}, server CPU {cpu:.2f} s in the chat phase{extra}, "
      f"{us:.1f} us per message, p50 / p99 {lat.get('p50', '?')} / {lat.get('p99', '?')} ms")
open(sys.argv[3], "a").write(f"{sys.argv[2]} {us:.2f}\n")
EOF
  done
done
python3 - "$dir/ratios" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
on = [float(v) for k, v in rows if k == "true"]
off = [float(v) for k, v in rows if k == "false"]
ratios = [a / b for a, b in zip(on, off)]
print("  ratio on/off per round: " + ", ".join(f"{x:.2f}" for x in ratios))
print(f"  on: median {statistics.median(on):.1f} us, off: median {statistics.median(off):.1f} us; "
      f"ratio min {min(ratios):.2f}, median {statistics.median(ratios):.2f}")
EOF
