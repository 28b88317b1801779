#!/usr/bin/env bash
# Starts the single-node server from the build tree. On first run it creates, under
# ./run/: a config file, a self-signed certificate, the SQLite store and a demo account
# (its random password is printed and kept in run/demo-password). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$(realpath -m "${XMPPD_RUN_DIR:-run}")
DOMAIN=${XMPPD_DOMAIN:-localhost}
mkdir -p "$RUN"

if [ ! -f "$RUN/key.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=$DOMAIN" -addext "subjectAltName=DNS:$DOMAIN" \
    -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null
  chmod 600 "$RUN/key.pem"
fi

if [ ! -f "$RUN/xmppd.conf" ]; then
  cat > "$RUN/xmppd.conf" <<CONF
; xmppd configuration: every option and its default is in docs/configuration.md
[server]
domain = $DOMAIN
log_level = info

[c2s]
address = 127.0.0.1
port = 5222
tls_port = 5223

[tls]
certificate = $RUN/cert.pem
key = $RUN/key.pem
required = true

[storage]
backend = sqlite
path = $RUN/xmppd.db
CONF
fi

if [ ! -f "$RUN/demo-password" ]; then
  pw=$(head -c 12 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 12)
  ./build/xmppctl -c "$RUN/xmppd.conf" adduser "demo@$DOMAIN" "$pw" >/dev/null
  echo "$pw" > "$RUN/demo-password"
  chmod 600 "$RUN/demo-password"
fi

./build/xmppd -c "$RUN/xmppd.conf" --check-config >/dev/null
cat <<MSG

  xmppd is starting on 127.0.0.1: port 5222 (STARTTLS), port 5223 (direct TLS).
  Log in as  demo@$DOMAIN  with password  $(cat "$RUN/demo-password")
  (self-signed certificate: tell your client to accept it), e.g.
    profanity: /connect demo@$DOMAIN server 127.0.0.1 tls trust
  More accounts: ./build/xmppctl -c $RUN/xmppd.conf adduser alice@$DOMAIN
  Stop with Ctrl-C.

MSG
exec ./build/xmppd -c "$RUN/xmppd.conf"
