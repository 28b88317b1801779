"""Integration test harness: real xmppd processes on loopback, real XMPP clients.

Each Server gets its own temporary directory (config, self-signed certificate, SQLite
store), two free loopback ports (STARTTLS and direct TLS), and accounts created with
xmppctl. Clients are slixmpp (Debian's python3-slixmpp); RawStream speaks raw XML over
a socket for the malformed-input cases no well-behaved library would produce.
"""
import asyncio
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

import slixmpp
import slixmpp.exceptions

BUILD = os.environ.get("XMPPD_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
XMPPD = os.path.join(BUILD, "xmppd")
XMPPCTL = os.path.join(BUILD, "xmppctl")
DOMAIN = "localhost"


def _sanitized():
    try:
        out = subprocess.run(["ldd", XMPPD], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "libasan" in out


# ASan keeps freed memory in quarantine (256 MB by default): RSS bounds mean nothing there.
SANITIZED = _sanitized()


def cpu_seconds(pid):
    """CPU time (user + system, every thread) a process used so far, from /proc/PID/stat
    (fields 14 and 15, after the parenthesised command name)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid, field="VmRSS"):
    """A /proc/PID/status memory field in KiB (VmRSS by default)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out = set()
_port_rng = random.Random(os.getpid() ^ time.time_ns())


def free_port():
    """A loopback port free to listen on, picked below the kernel's ephemeral range.

    A port from bind(0) is an ephemeral one: between the pick and the server's bind,
    any outgoing connection (a node dialling Redis or a peer, a client) may be given
    it, and the server then fails with EADDRINUSE (seen in CI: an edge exited at start).
    Ports below the range are never handed to outgoing connections; each is handed out
    once per test run."""
    low = _ephemeral_low()
    if low > 12000:
        for _ in range(2000):
            port = _port_rng.randrange(10000, low)
            if port in _handed_out:
                continue
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libuv binds
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            finally:
                s.close()
            _handed_out.add(port)
            return port
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def self_signed(directory, cn, prefix=""):
    """A self-signed P-256 certificate for CN=cn in directory: (PREFIXcert.pem, PREFIXkey.pem)."""
    cert, key = os.path.join(directory, prefix + "cert.pem"), os.path.join(directory, prefix + "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=" + cn, "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


class Server:
    def __init__(self, **options):
        self.dir = tempfile.mkdtemp(prefix="xmppd-it-")
        self.port = free_port()
        self.tls_port = free_port()
        while self.tls_port == self.port:  # the OS may hand the same free port out twice
            self.tls_port = free_port()
        self.cert, self.key = self_signed(self.dir, DOMAIN)
        self.conf = os.path.join(self.dir, "xmppd.conf")
        opts = {
            "server.domain": DOMAIN,
            "server.log_level": "info",
            "server.io_threads": "2",
            "server.router_workers": "2",
            "c2s.address": "127.0.0.1",
            "c2s.port": str(self.port),
            "c2s.tls_port": str(self.tls_port),
            "tls.certificate": self.cert,
            "tls.key": self.key,
            "storage.path": os.path.join(self.dir, "xmppd.db"),
        }
        opts.update({k: str(v) for k, v in options.items()})
        sections = {}
        for k, v in opts.items():
            sec, key = k.split(".", 1)
            sections.setdefault(sec, []).append(f"{key} = {v}")
        with open(self.conf, "w") as f:
            for sec, lines in sections.items():
                f.write(f"[{sec}]\n" + "\n".join(lines) + "\n\n")
        self.log_path = os.path.join(self.dir, "xmppd.log")
        self.proc = None
        self.prefix = []  # e.g. ["prlimit", "--nofile=64:64"]

    def adduser(self, jid, password):
        subprocess.run([XMPPCTL, "-c", self.conf, "adduser", jid, password], check=True,
                       capture_output=True)

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.prefix + [XMPPD, "-c", self.conf], stdout=self.log, stderr=self.log)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xmppd exited early (status {self.proc.returncode}):\n" + self.log_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("xmppd did not start listening")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=15):
        """SIGTERM, then the exit status (0 expected)."""
        if not self.proc:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        return rc

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""


# A redis-server of the test's own (never the system service), on a free loopback port.
REDIS_SERVER = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


def resp(port, *args):
    """One command over RESP on a fresh connection; returns the raw reply bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out)
    data = b""
    s.settimeout(5)
    while not data.endswith(b"\r\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    # bulk replies: read the announced length
    if data.startswith(b"$") and not data.startswith(b"$-1"):
        n = int(data[1:data.index(b"\r\n")])
        while len(data) < data.index(b"\r\n") + 2 + n + 2:
            data += s.recv(65536)
    s.close()
    return data


class Redis:
    def __init__(self):
        if not os.access(REDIS_SERVER, os.X_OK):
            raise RuntimeError("redis-server is not installed (apt-get install redis-server, "
                               "or deploy/install-deps.sh): the Redis integration tests cannot run")
        self.dir = tempfile.mkdtemp(prefix="xmppd-redis-")
        self.port = free_port()
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir,
             "--daemonize", "no"], stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited at start: see " + self.dir)
            try:
                if resp(self.port, "PING").startswith(b"+PONG"):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def addr(self):
        """The address as storage.redis / cluster.redis take it (as RedisCluster.addr and
        RedisSentinel.addr do for theirs)."""
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def insecure_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that records what it receives in queues."""

    def __init__(self, server, jid, password, **kw):
        super().__init__(jid, password, **kw)
        self.srv = server
        self.ssl_context = insecure_context()
        self.messages = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.stream_errors = asyncio.Queue()
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.register_plugin("xep_0092")
        self.add_event_handler("message", lambda m: self.messages.put_nowait(m))
        self.add_event_handler("presence", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("stream_error", lambda e: self.stream_errors.put_nowait(e))
        # subscription requests are answered by the test, not automatically
        self.auto_authorize = None
        self.auto_subscribe = False

    async def login(self, timeout=10, port=None, direct_tls=False):
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.add_event_handler("session_start", lambda e: done.done() or done.set_result(True))
        self.add_event_handler("failed_auth", lambda e: done.done() or done.set_result(False))
        self.add_event_handler("disconnected", lambda e: done.done() or done.set_result(False))
        if direct_tls:
            self.enable_direct_tls = True
            self.connect(("127.0.0.1", port or self.srv.tls_port), use_ssl=True)
        else:
            self.connect(("127.0.0.1", port or self.srv.port))
        return await asyncio.wait_for(done, timeout)

    async def next_message(self, timeout=5, pred=None):
        end = time.monotonic() + timeout
        while True:
            m = await asyncio.wait_for(self.messages.get(), max(0.01, end - time.monotonic()))
            if pred is None or pred(m):
                return m

    async def next_presence(self, timeout=5, pred=None):
        end = time.monotonic() + timeout
        while True:
            p = await asyncio.wait_for(self.presences.get(), max(0.01, end - time.monotonic()))
            if pred is None or pred(p):
                return p

    async def full_roster(self):
        """The roster get's result with every item: the server versions rosters (RFC 6121
        §2.6) and slixmpp asks with the version it keeps, which gets an empty result when
        nothing changed; ver='' asks for the whole roster."""
        self.client_roster.version = ""
        return await self.get_roster()

    async def close(self):
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.add_event_handler("disconnected", lambda e: done.done() or done.set_result(True))
        self.disconnect()
        try:
            await asyncio.wait_for(done, 5)
        except asyncio.TimeoutError:
            pass


async def wait_routed(client, *bare_jids):
    """Evidence that what client sent to each bare JID before this call has been handled
    by that account's shard (delivered, or stored offline): a ping to the bare JID, which
    the server answers on the account's behalf (XEP-0199 §4.3; <service-unavailable/> for
    an account that does not exist) from that shard, after the stanzas ahead of it on the
    same path."""
    for jid in bare_jids:
        try:
            await client["xep_0199"].ping(jid=jid, timeout=10)
        except slixmpp.exceptions.IqError as e:
            if e.condition != "service-unavailable":
                raise


async def befriend(a, b):
    """a and b subscribe to each other (RFC 6121 §3)."""
    a_bare, b_bare = a.boundjid.bare, b.boundjid.bare
    a.send_presence(pto=b_bare, ptype="subscribe")
    await b.next_presence(pred=lambda p: p["type"] == "subscribe" and p["from"].bare == a_bare)
    b.send_presence(pto=a_bare, ptype="subscribed")
    await a.next_presence(pred=lambda p: p["type"] == "subscribed" and p["from"].bare == b_bare)
    b.send_presence(pto=a_bare, ptype="subscribe")
    await a.next_presence(pred=lambda p: p["type"] == "subscribe" and p["from"].bare == b_bare)
    a.send_presence(pto=b_bare, ptype="subscribed")
    await b.next_presence(pred=lambda p: p["type"] == "subscribed" and p["from"].bare == a_bare)


def aioxmpp_client(srv, jid, password="pw"):
    """(JID, client) of aioxmpp, the second client library: STARTTLS to srv on loopback,
    the test certificate accepted."""
    import aioxmpp
    j = aioxmpp.JID.fromstr(jid)
    return j, aioxmpp.PresenceManagedClient(
        j, aioxmpp.make_security_layer(password, no_verify=True),
        override_peer=[("127.0.0.1", srv.port, aioxmpp.connector.STARTTLSConnector())])


class RawStream:
    """Raw XML over TCP (optionally upgraded with STARTTLS) for hostile-input tests."""

    def __init__(self, port, timeout=5, src=None, rcvbuf=None):
        if rcvbuf:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if src:
                self.sock.bind((src, 0))
            self.sock.settimeout(timeout)
            self.sock.connect(("127.0.0.1", port))
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                                 source_address=(src, 0) if src else None)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def recv_until(self, pattern, timeout=5):
        """Reads until the regex matches the received text; returns all text so far."""
        end = time.monotonic() + timeout
        rx = re.compile(pattern, re.S)
        while not rx.search(self.buf.decode(errors="replace")):
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timeout waiting for {pattern!r}; got {self.buf[-2000:]!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            if not chunk:
                break
            self.buf += chunk
        text = self.buf.decode(errors="replace")
        if not rx.search(text):
            raise AssertionError(f"connection closed before {pattern!r}; got {text[-2000:]!r}")
        return text

    def closed(self, timeout=5):
        """True once the server closed the connection."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                return True
            if not chunk:
                return True
            self.buf += chunk
        return False

    def open_stream(self, to=DOMAIN):
        self.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                  f"xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>")

    def starttls(self):
        self.open_stream()
        self.recv_until(r"</stream:features>")
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.recv_until(r"<proceed")
        self.sock = insecure_context().wrap_socket(self.sock, server_hostname=DOMAIN)
        self.buf = b""

    def auth_plain(self, user, password):
        import base64
        self.open_stream()
        self.recv_until(r"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        self.recv_until(r"<success")
        self.buf = b""
        self.open_stream()
        self.recv_until(r"</stream:features>")

    def login(self, user, password, resource="r"):
        self.starttls()
        self.auth_plain(user, password)
        self.bind(resource)
        return self

    def bind(self, resource):
        self.send(f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        self.recv_until(r"</iq>")

    def wait_session_gone(self, full_jid, timeout=5):
        """Waits (this stream being logged in) until the router answers an IQ to
        full_jid with an error: that session has ended, and what its edge handed
        back before ending it (XEP-0198 bounces, routed on the same shard queue) has
        been routed. An IQ to a live session gets no answer from a test client that
        does not read, so each probe waits briefly, and a new one follows."""
        end = time.monotonic() + timeout
        n = 0
        while time.monotonic() < end:
            n += 1
            pid = f"gone{n}-{random.randrange(1 << 30)}"
            self.send(f"<iq type='get' to='{full_jid}' id='{pid}'><ping xmlns='urn:xmpp:ping'/></iq>")
            try:
                text = self.recv_until(f"<iq[^>]*id='{pid}'[^>]*>", timeout=0.3)
            except AssertionError:
                continue
            tag = re.search(f"<iq[^>]*id='{pid}'[^>]*>", text).group(0)
            if "type='error'" in tag:
                return
        raise AssertionError(f"session {full_jid} still there after {timeout} s")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def run(coro):
    return asyncio.run(coro)


class ServerTest(unittest.TestCase):
    """One xmppd per test class, with the accounts in `users` (password `password`).
    The server must stay alive through every test and exit 0 on SIGTERM."""

    users = ()
    password = "pw"
    server_options = {}

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(**cls.server_options)
        for u in cls.users:
            cls.srv.adduser(u if "@" in u else f"{u}@{DOMAIN}", cls.password)
        cls.srv.start()

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0, cls.srv.log_text()

    def tearDown(self):
        self.assertTrue(self.srv.alive(), self.srv.log_text())


async def subscribe(watcher, owner, timeout=5):
    """watcher (a logged-in Client) subscribes to owner's presence and owner approves:
    watcher's item becomes 'to', owner's 'from' (RFC 6121 §3.1). Both must have sent
    initial presence. Waits for the approval to reach watcher."""
    owner_bare, watcher_bare = owner.boundjid.bare, watcher.boundjid.bare
    watcher.send_presence(pto=owner_bare, ptype="subscribe")
    await owner.next_presence(timeout, pred=lambda p: p["type"] == "subscribe" and p["from"].bare == watcher_bare)
    owner.send_presence(pto=watcher_bare, ptype="subscribed")
    await watcher.next_presence(timeout, pred=lambda p: p["type"] == "subscribed" and p["from"].bare == owner_bare)


def _redis_wait(proc, port, what, where):
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start: see {where}")
        try:
            if resp(port, "PING").startswith(b"+PONG"):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer")


def resp_text(port, *args):
    """One command; the reply as text (bulk string content, or the raw line)."""
    data = resp(port, *args)
    if data.startswith(b"$") and not data.startswith(b"$-1"):
        return data[data.index(b"\r\n") + 2:-2].decode(errors="replace")
    return data.decode(errors="replace").strip()


class RedisCluster:
    """A Redis Cluster of the test's own: 3 primaries and 3 replicas (6 redis-server
    processes on free loopback ports, `redis-cli --cluster create ... --cluster-replicas 1`),
    cluster-node-timeout `node_timeout_ms` so that a killed primary's replica is promoted
    within seconds."""

    def __init__(self, nodes=6, node_timeout_ms=1000, aof=False):
        if not os.access(REDIS_SERVER, os.X_OK):
            raise RuntimeError("redis-server is not installed: the Redis Cluster tests cannot run")
        self.aof = aof  # keep the data across a node's restart
        self.dir = tempfile.mkdtemp(prefix="xmppd-rcluster-")
        self.ports = [free_port() for _ in range(nodes)]
        self.bus_ports = [free_port() for _ in range(nodes)]
        self.node_timeout_ms = node_timeout_ms
        self.procs = {}
        self.logs = []

    def start_node(self, i):
        d = os.path.join(self.dir, str(self.ports[i]))
        os.makedirs(d, exist_ok=True)
        log = open(os.path.join(d, "redis.log"), "ab")
        self.logs.append(log)
        p = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.ports[i]), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-port", str(self.bus_ports[i]),
             "--cluster-config-file", os.path.join(d, "nodes.conf"),
             "--cluster-node-timeout", str(self.node_timeout_ms),
             # a replica may always be promoted (the tests kill primaries on purpose)
             "--cluster-replica-validity-factor", "0",
             "--save", "", "--appendonly", "yes" if self.aof else "no", "--dir", d,
             "--daemonize", "no"],
            stdout=log, stderr=log)
        self.procs[self.ports[i]] = p
        _redis_wait(p, self.ports[i], "redis-server (cluster node)", d)

    def start(self):
        for i in range(len(self.ports)):
            self.start_node(i)
        out = subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError("redis-cli --cluster create failed: " + out.stdout + out.stderr)
        self.wait_ok()

    def wait_ok(self, timeout=30, ports=None):
        """Every live node (or those in ports) says cluster_state:ok and the slots are covered."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = []
            for p in ports or self.live_ports():
                try:
                    states.append(resp_text(p, "CLUSTER", "INFO"))
                except OSError:
                    states.append("")
            if all("cluster_state:ok" in s and "cluster_slots_assigned:16384" in s for s in states):
                # and every replica has synchronised with its primary (else it cannot
                # take over when the test kills that primary)
                links = []
                for p in ports or self.live_ports():
                    try:
                        links.append(resp_text(p, "INFO", "replication"))
                    except OSError:
                        links.append("")
                if all("role:master" in t or "master_link_status:up" in t for t in links):
                    return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ok: " + repr(states))

    def live_ports(self):
        return [p for p, pr in self.procs.items() if pr.poll() is None]

    def addr(self):
        return "cluster:" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def nodes(self, port=None):
        """CLUSTER NODES as dicts: id, port, flags, master, slots (list of (lo, hi))."""
        text = resp_text(port or self.live_ports()[0], "CLUSTER", "NODES")
        out = []
        for line in text.splitlines():
            f = line.split()
            if len(f) < 8:
                continue
            slots = []
            for s in f[8:]:
                if s.startswith("["):
                    continue
                lo, _, hi = s.partition("-")
                slots.append((int(lo), int(hi or lo)))
            out.append({"id": f[0], "port": int(f[1].split("@")[0].rsplit(":", 1)[1]),
                        "flags": f[2], "master": f[3], "slots": slots})
        return out

    def keyslot(self, key):
        return int(resp_text(self.live_ports()[0], "CLUSTER", "KEYSLOT", key).lstrip(":"))

    def owner(self, slot):
        """The primary serving slot: its node dict."""
        for n in self.nodes():
            if "master" in n["flags"] and "fail" not in n["flags"] and \
                    any(lo <= slot <= hi for lo, hi in n["slots"]):
                return n
        raise RuntimeError(f"no primary serves slot {slot}")

    def kill(self, port):
        p = self.procs[port]
        p.kill()
        p.wait(10)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for log in self.logs:
            log.close()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisSentinel:
    """One primary, one replica and three sentinels (redis-server --sentinel), with
    down-after-milliseconds 1000 so that a killed primary is replaced within seconds."""

    def __init__(self, name="xmppd"):
        if not os.access(REDIS_SERVER, os.X_OK):
            raise RuntimeError("redis-server is not installed: the Sentinel tests cannot run")
        self.dir = tempfile.mkdtemp(prefix="xmppd-sentinel-")
        self.name = name
        self.data_ports = [free_port() for _ in range(2)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs = {}
        self.logs = []

    def _spawn(self, port, args, what):
        d = os.path.join(self.dir, str(port))
        os.makedirs(d, exist_ok=True)
        log = open(os.path.join(d, "redis.log"), "ab")
        self.logs.append(log)
        p = subprocess.Popen([REDIS_SERVER, *args], stdout=log, stderr=log, cwd=d)
        self.procs[port] = p
        _redis_wait(p, port, what, d)

    def start(self):
        primary = self.data_ports[0]
        for i, port in enumerate(self.data_ports):
            args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", os.path.join(self.dir, str(port)), "--daemonize", "no"]
            if i:
                args += ["--replicaof", "127.0.0.1", str(primary)]
            else:  # Redis 7 waits 5 s for more replicas before a diskless full sync
                args += ["--repl-diskless-sync-delay", "0"]
            os.makedirs(os.path.join(self.dir, str(port)), exist_ok=True)
            self._spawn(port, args, "redis-server")
        for port in self.sentinel_ports:
            d = os.path.join(self.dir, str(port))
            os.makedirs(d, exist_ok=True)
            conf = os.path.join(d, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                        f"sentinel monitor {self.name} 127.0.0.1 {primary} 2\n"
                        f"sentinel down-after-milliseconds {self.name} 1000\n"
                        f"sentinel failover-timeout {self.name} 5000\n")
            self._spawn(port, [conf, "--sentinel"], "redis-server --sentinel")
        # the sentinels know the replica and each other before a failover can happen
        deadline = time.time() + 30
        while time.time() < deadline:
            ok = True
            for port in self.sentinel_ports:
                info = resp_text(port, "SENTINEL", "MASTER", self.name)
                if "num-slaves" not in info and "num-other-sentinels" not in info:
                    ok = False
                    break
                text = resp(port, "SENTINEL", "MASTER", self.name).decode(errors="replace")
                fields = text.split("\r\n")
                vals = {fields[i]: fields[i + 2] for i in range(2, len(fields) - 2, 4)
                        if fields[i - 1].startswith("$")}
                if vals.get("num-slaves") != "1" or vals.get("num-other-sentinels") != "2":
                    ok = False
                    break
            # and the replica has the primary's data (its first full sync done): a
            # failover before that would promote an empty replica
            ok = ok and b"connected" in resp(self.data_ports[1], "ROLE")
            if ok:
                return
            time.sleep(0.2)
        raise RuntimeError("the sentinels did not find the replica and each other, or the replica is not in sync")

    def addr(self):
        return "sentinel:" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + "/" + self.name

    def primary_port(self):
        text = resp(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return int(text.split(b"\r\n")[-2])

    def kill(self, port):
        """kill -9 of a data node; a primary first waits (up to 5 s) until its replica has
        everything written so far (WAIT), so that the failover loses nothing acknowledged
        by Redis: the tests are about the server following the failover"""
        if port == self.primary_port():
            resp(port, "WAIT", "1", "5000")
        self.procs[port].kill()
        self.procs[port].wait(10)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for log in self.logs:
            log.close()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
