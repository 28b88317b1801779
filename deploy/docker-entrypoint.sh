#!/bin/sh
# Container start: make a config and a self-signed certificate on first start (unless
# mounted), then run xmppd. XMPPD_DOMAIN sets the domain. Extra arguments go to xmppd.
set -eu
DATA=/var/lib/xmppd
DOMAIN=${XMPPD_DOMAIN:-localhost}
if [ ! -f "$DATA/key.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=$DOMAIN" -addext "subjectAltName=DNS:$DOMAIN" \
    -keyout "$DATA/key.pem" -out "$DATA/cert.pem" 2>/dev/null
fi
if [ ! -f "$DATA/xmppd.conf" ]; then
  cat > "$DATA/xmppd.conf" <<CONF
[server]
domain = $DOMAIN
[c2s]
address = 0.0.0.0
[tls]
certificate = $DATA/cert.pem
key = $DATA/key.pem
[storage]
path = $DATA/xmppd.db
CONF
fi
exec xmppd -c "$DATA/xmppd.conf" "$@"
