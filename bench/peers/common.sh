# Shared helpers for bench/peers/*.sh (sourced, not run).
PEERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=/usr/bin/python3

peer_log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { peer_log "ERROR: $*"; exit 1; }

# A free TCP port on 127.0.0.1 (bind to port 0, read it back).
free_port() {
  $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT SECONDS [PID]: until something accepts on 127.0.0.1:PORT; fails early if PID dies.
wait_port() {
  local port=$1 secs=$2 pid=${3:-} i
  for ((i = 0; i < secs * 10; i++)); do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    if $PY -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2).close()" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# install_debian PKG SERVICE: apt-get install PKG if missing, then make sure the system
# service the package ships is stopped and disabled (it would hold 5222/5269/5280).
install_debian() {
  local pkg=$1 svc=$2
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    peer_log "installing $pkg from Debian"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "$pkg" >&2
    JUST_INSTALLED=1
  fi
  disable_service "$svc"
}

disable_service() {
  local svc=$1 sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
  else
    $sudo update-rc.d "$svc" disable >/dev/null 2>&1 || true
    if [ -x "/etc/init.d/$svc" ] && $sudo "/etc/init.d/$svc" status >/dev/null 2>&1; then
      $sudo "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
  fi
}

# stop_pid PID SECONDS: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local pid=$1 secs=${2:-20} i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  peer_log "pid $pid did not exit after ${secs}s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}
