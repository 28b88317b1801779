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
# `docker run IMAGE [xmppd options]` runs xmppd; `docker run IMAGE xmppctl|xmpp-bench ...`
# runs that tool instead (with the same environment).
set -eu
DATA=/var/lib/xmppd

# XMPPD_DOMAIN is the variable of older images: it means XMPPD_SERVER_DOMAIN.
if [ -n "${XMPPD_DOMAIN:-}" ] && [ -z "${XMPPD_SERVER_DOMAIN:-}" ]; then
  XMPPD_SERVER_DOMAIN=$XMPPD_DOMAIN
  export XMPPD_SERVER_DOMAIN
fi
unset XMPPD_DOMAIN
DOMAIN=${XMPPD_SERVER_DOMAIN:-localhost}

case "${1:-}" in
  xmppd) shift ;;
  xmppctl | xmpp-bench | sh | bash) exec "$@" ;;
esac

CERT=${XMPPD_TLS_CERTIFICATE:-$DATA/cert.pem}
KEY=${XMPPD_TLS_KEY:-$DATA/key.pem}
if [ ! -e "$CERT" ] && [ ! -e "$KEY" ]; then
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
[tls]
certificate = $CERT
key = $KEY
[storage]
path = $DATA/xmppd.db
CONF
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

exec xmppd -c "$DATA/xmppd.conf" "$@"
