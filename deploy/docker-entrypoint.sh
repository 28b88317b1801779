#!/bin/sh
# Container start. Every xmppd option can come from an XMPPD_<SECTION>_<KEY> environment
# variable (docs/configuration.md), and the environment beats the config file, so this
# script never rewrites what the environment says; it only:
#   - writes a base config on first start (unless one is mounted at $DATA/xmppd.conf);
#   - makes a self-signed certificate on first start when neither the certificate nor the
#     key exists (paths: XMPPD_TLS_CERTIFICATE / XMPPD_TLS_KEY, default $DATA/*.pem);
#     mount your own pair and point those variables at it to use a real one;
#   - fills two cluster settings that are *unset*: a cluster node (XMPPD_CLUSTER_NODE_ID
#     not 0) gets XMPPD_CLUSTER_BUS_ADDRESS=0.0.0.0 (loopback is useless in a container)
#     and, listening on 0.0.0.0, XMPPD_CLUSTER_ADVERTISE = this container's address.
#   - a router (XMPPD_CLUSTER_ROLE=router) serves no client: no certificate, no [tls].
# `docker run IMAGE [xmppd options]` runs xmppd; `docker run IMAGE xmppctl|xmpp-bench ...`
# runs that tool instead (with the same environment); `docker-entrypoint.sh health` is the
# image's HEALTHCHECK.
#
# Exit status: xmppd's, except its 2 (a configuration error, a resource another process
# holds, a cluster node refusing to join or whose node id is held by a live node:
# docs/operations.md), which becomes $REFUSED_EXIT_STATUS (the image sets 0). Docker's
# `on-failure` restart policy restarts on any non-zero status: starting such a node again
# cannot help, and would loop. Set REFUSED_EXIT_STATUS=2 to see xmppd's own status.
# xmppd runs as a child, not exec'd, for that: SIGTERM, SIGINT, SIGHUP (certificate
# reload) and SIGUSR1 (memory line) are passed on to it.
set -eu
DATA=${ENTRYPOINT_DATA:-/var/lib/xmppd} # another directory: tests/integration/test_deploy.py only

# XMPPD_DOMAIN is the variable of older images: it means XMPPD_SERVER_DOMAIN.
if [ -n "${XMPPD_DOMAIN:-}" ] && [ -z "${XMPPD_SERVER_DOMAIN:-}" ]; then
  XMPPD_SERVER_DOMAIN=$XMPPD_DOMAIN
  export XMPPD_SERVER_DOMAIN
fi
unset XMPPD_DOMAIN
DOMAIN=${XMPPD_SERVER_DOMAIN:-localhost}

ROLE=${XMPPD_CLUSTER_ROLE:-all}

# HEALTHCHECK: the node accepts TCP connections where it serves: its client port (STARTTLS,
# else direct TLS) when it has one, else (a router) its bus port. Ports come from the
# XMPPD_* variables or their defaults (a port set only in a mounted config file: set the
# variable too, or give the container its own HEALTHCHECK).
if [ "${1:-}" = health ]; then
  port=${XMPPD_C2S_PORT:-5222}
  [ "$port" = 0 ] && port=${XMPPD_C2S_TLS_PORT:-5223}
  host=${XMPPD_C2S_ADDRESS:-127.0.0.1}
  if [ "$ROLE" = router ] || [ "$port" = 0 ]; then
    port=${XMPPD_CLUSTER_BUS_PORT:-5270}
    host=${XMPPD_CLUSTER_BUS_ADDRESS:-127.0.0.1}
  fi
  case "$host" in 0.0.0.0 | "::" | "") host=127.0.0.1 ;; esac
  exec timeout 4 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port"
fi

case "${1:-}" in
  xmppd) shift ;;
  xmppctl | xmpp-bench | sh | bash) exec "$@" ;;
esac

CERT=${XMPPD_TLS_CERTIFICATE:-$DATA/cert.pem}
KEY=${XMPPD_TLS_KEY:-$DATA/key.pem}
if [ "$ROLE" = router ]; then
  : # no client port, no certificate
elif [ ! -e "$CERT" ] && [ ! -e "$KEY" ]; then
  echo "docker-entrypoint: no certificate at $CERT: making a self-signed one for $DOMAIN" >&2
  mkdir -p "$(dirname "$CERT")" "$(dirname "$KEY")"
  umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=$DOMAIN" -addext "subjectAltName=DNS:$DOMAIN" \
    -keyout "$KEY" -out "$CERT" 2>/dev/null \
    || { echo "docker-entrypoint: cannot write $CERT / $KEY" >&2; exit 1; }
  umask 022
  chmod 644 "$CERT"
elif [ ! -e "$CERT" ] || [ ! -e "$KEY" ]; then
  echo "docker-entrypoint: $CERT and $KEY must both exist (or neither, for a self-signed pair)" >&2
  exit 1
fi

if [ ! -f "$DATA/xmppd.conf" ]; then
  cat > "$DATA/xmppd.conf" <<CONF
; written by docker-entrypoint.sh on first start; XMPPD_* environment variables override it
[server]
domain = $DOMAIN
[c2s]
address = 0.0.0.0
[storage]
path = $DATA/xmppd.db
CONF
  if [ "$ROLE" != router ]; then
    printf '[tls]\ncertificate = %s\nkey = %s\n' "$CERT" "$KEY" >> "$DATA/xmppd.conf"
  fi
fi

case "${XMPPD_CLUSTER_NODE_ID:-0}" in
  0 | "") ;;
  *)
    if [ -z "${XMPPD_CLUSTER_BUS_ADDRESS:-}" ]; then
      XMPPD_CLUSTER_BUS_ADDRESS=0.0.0.0
      export XMPPD_CLUSTER_BUS_ADDRESS
    fi
    if [ -z "${XMPPD_CLUSTER_ADVERTISE:-}" ] && [ "$XMPPD_CLUSTER_BUS_ADDRESS" = 0.0.0.0 ]; then
      ip=$(getent ahostsv4 "$(cat /proc/sys/kernel/hostname)" 2>/dev/null | awk '$1 !~ /^127\./ { print $1; exit }')
      if [ -n "$ip" ]; then
        XMPPD_CLUSTER_ADVERTISE=$ip
        export XMPPD_CLUSTER_ADVERTISE
      fi
    fi
    ;;
esac

xmppd -c "$DATA/xmppd.conf" "$@" &
child=$!
for sig in TERM INT HUP USR1; do
  trap "kill -$sig $child 2>/dev/null" "$sig"
done
# wait returns early when a trapped signal arrives: wait again while xmppd runs
set +e
while :; do
  wait "$child"
  rc=$?
  if ! kill -0 "$child" 2>/dev/null; then
    # interrupted by a trapped signal (status 128+n) while xmppd was ending: its own
    # status is still to be collected (127: that status was this one, xmppd's own)
    if [ "$rc" -gt 128 ]; then
      wait "$child"
      again=$?
      [ "$again" -ne 127 ] && rc=$again
    fi
    break
  fi
done
if [ "$rc" -eq 2 ]; then
  echo "docker-entrypoint: xmppd exited with status 2 (it refuses to run: see its last lines);" \
    "container exit status ${REFUSED_EXIT_STATUS:-2}, so that restart: on-failure does not start it again" >&2
  exit "${REFUSED_EXIT_STATUS:-2}"
fi
exit "$rc"
