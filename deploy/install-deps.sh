#!/usr/bin/env bash
# Installs every Debian 12 package that building, testing and running xmppd needs.
# With --build, only what building the binaries needs (the container image's build stage).
# Idempotent: packages already installed are skipped, and apt is only touched when
# something is missing. Must run as root (or with sudo available).
set -euo pipefail

# --build: what building the binaries alone needs (deploy/Dockerfile's build stage: no test
# tools, no server tools)
BUILD_PKGS=(
  # build (a fresh Debian 12 has no make: build-essential brings it, listed for clarity)
  build-essential make cmake pkg-config
  # libraries (found through pkg-config by CMake)
  libuv1-dev libxml2-dev libwolfssl-dev libhiredis-dev libjemalloc-dev
  libsqlite3-dev libidn2-dev libunistring-dev libinih-dev
  # the metrics endpoint (common/metrics_http.c)
  libmicrohttpd-dev
)
PKGS=(
  "${BUILD_PKGS[@]}"
  # tests
  libcriterion-dev python3 python3-slixmpp
  # tests: a second, independent client library (aioxmpp) for the router modules
  python3-aioxmpp
  # tests: test_sasl2.py's SCRAM -PLUS client reads the TLS exporter with pyOpenSSL
  python3-openssl
  # tests: test_metrics.py parses the exposition formats with the reference parser
  python3-prometheus-client
  # tests: test_tls_rekey.py's TLS client (tests/tools/tls_rekey_client.c) on OpenSSL
  libssl-dev
  # tests: the Redis store suites start their own redis-server (never the system service)
  redis-server
  # tests: test_redis_cluster.py makes its Redis Cluster with redis-cli --cluster create
  redis-tools
  # tests: test_deploy.py validates docker-compose.yml with `docker-compose config` (1.29),
  # looks for processes left behind with pgrep (procps; minbase has none of its own)
  docker-compose procps
  # bench: xmpp-bench --plot
  gnuplot-nox
  # tests: test_bench.ClusterFaultsTest runs bench/cluster.sh --faults, which reads the
  # driver's JSON with jq (a fresh Debian 12 has none)
  jq
  # fuzzing (make build-fuzz): clang and its libFuzzer/sanitizer runtimes
  clang-14 libclang-rt-14-dev
  # run: self-signed certificate for `make run`, store inspection
  openssl sqlite3
  git
)

build_only=0
if [ "${1:-}" = "--build" ]; then PKGS=("${BUILD_PKGS[@]}"); build_only=1; fi
# tests: xmpp.js (tests/js, a client library that speaks SASL2, Bind2 and FAST) runs on
# node; Debian's nodejs and npm when there is no node at all (xmpp.js 0.14 asks for node
# >= 20.10, Debian 12 has 18: tests/js/sasl2_fast.js supplies what 18 lacks)
if [ $build_only = 0 ] && ! command -v node >/dev/null; then PKGS+=(nodejs npm); fi

# tests/js: the pinned packages of package-lock.json, installed again only when the lock
# differs from the one of the last install (a copy kept in node_modules)
js_deps() {
  [ $build_only = 0 ] || return 0
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/tests/js"
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.xmppd-installed-lock.json"; then
    echo "install-deps: npm ci in tests/js"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error &&
      cp package-lock.json node_modules/.xmppd-installed-lock.json)
  fi
}

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  js_deps
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
js_deps
