"""Deployment files: docker-compose.yml (validated by Debian's docker-compose 1.29
`config`), deploy/local-cluster.sh (syntax, --help, a real cluster of xmppd nodes and Redis
started, used and stopped, a failed start cleaned up), deploy/Dockerfile (runtime
libraries), and that compose and local-cluster.sh configure nodes with the same XMPPD_*
variables. A missing docker-compose or redis-server fails these tests (install them with
deploy/install-deps.sh); they do not skip."""
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from harness import BUILD, XMPPD

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
COMPOSE = os.path.join(ROOT, "docker-compose.yml")
COMPOSE_SINGLE = os.path.join(ROOT, "deploy", "docker-compose.single.yml")
LOCAL_CLUSTER = os.path.join(ROOT, "deploy", "local-cluster.sh")
ENTRYPOINT = os.path.join(ROOT, "deploy", "docker-entrypoint.sh")
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")

# Host-side knobs of the compose file: cleared so that the defaults are what is checked.
COMPOSE_KNOBS = ("XMPP_DOMAIN", "XMPP_LOG_LEVEL", "XMPP_SUBNET", "EDGE1_PORT", "EDGE1_TLS_PORT",
                 "EDGE2_PORT", "EDGE2_TLS_PORT", "BENCH_ARGS", "XMPP_PORT", "XMPP_TLS_PORT",
                 "COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME")


# Packages only tests, benches or fuzzing need: not even in the build stage.
TEST_TOOLS = {"libcriterion-dev", "python3", "python3-slixmpp", "python3-aioxmpp", "redis-server", "docker-compose",
              "procps", "gnuplot-nox", "clang-14", "libclang-rt-14-dev", "sqlite3", "libssl-dev",
              "git"}  # git: the mutant stage copies the tracked files and applies each patch
# ... and what only building needs: never in the runtime image.
BUILD_TOOLS = {"build-essential", "cmake", "make", "pkg-config", "gcc"}


def dockerfile_stages():
    """deploy/Dockerfile's stages in order: name -> {"base", "text"}; the unnamed last
    stage is "final"."""
    with open(DOCKERFILE) as f:
        text = f.read()
    stages = {}
    parts = re.split(r"(?m)^FROM (\S+)(?: AS (\S+))?\s*$", text)
    for i in range(1, len(parts), 3):
        stages[parts[i + 1] or "final"] = {"base": parts[i], "text": parts[i + 2]}
    return stages


def compose_env():
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_KNOBS}
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    return env


def docker_compose(*args, file=COMPOSE):
    exe = shutil.which("docker-compose")
    if not exe:
        raise AssertionError("docker-compose is not installed: run deploy/install-deps.sh")
    return subprocess.run([exe, "-f", file, *args], cwd=ROOT, env=compose_env(),
                          capture_output=True, text=True, timeout=120)


def compose_config(file=COMPOSE):
    import yaml  # python3-yaml: a dependency of Debian's docker-compose
    r = docker_compose("config", file=file)
    if r.returncode != 0:
        raise AssertionError(f"docker-compose config of {file} failed:\n{r.stderr}")
    return yaml.safe_load(r.stdout)


def script_node_vars():
    """The XMPPD_* names local-cluster.sh sets on a node: its NODE_ENV=( ... ) array."""
    with open(LOCAL_CLUSTER) as f:
        text = f.read()
    m = re.search(r"NODE_ENV=\((.*?)\n\s*\)", text, re.S)
    assert m, "local-cluster.sh: no NODE_ENV=( ... ) array"
    names = set(re.findall(r"\b(XMPPD_[A-Z0-9_]+)=", m.group(1)))
    everywhere = set(re.findall(r"\b(XMPPD_[A-Z0-9_]+)=", text))
    return names, everywhere


def port_listens(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
        return True
    except OSError:
        return False


def read_env_file(path):
    """DIR/env of local-cluster.sh, as the shell sees it."""
    out = subprocess.run(["bash", "-c", 'set -a; . "$1"; env -0', "_", path],
                         capture_output=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    return dict(kv.split("=", 1) for kv in out.decode().split("\0") if "=" in kv)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ComposeTest(unittest.TestCase):
    def test_compose_config_valid(self):
        r = docker_compose("config", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = docker_compose("config", "-q", file=COMPOSE_SINGLE)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_compose_topology(self):
        cfg = compose_config()
        services = cfg["services"]
        self.assertIn("redis", services)
        redis_cmd = " ".join(map(str, services["redis"].get("command", [])))
        self.assertIn("--appendonly yes", redis_cmd)
        self.assertIn("--appendfsync everysec", redis_cmd)
        self.assertTrue(services["redis"].get("volumes"), "redis keeps its AOF in a volume")

        nodes = {name: s for name, s in services.items()
                 if "XMPPD_CLUSTER_ROLE" in (s.get("environment") or {})}
        roles = {}
        for name, s in nodes.items():
            roles.setdefault(s["environment"]["XMPPD_CLUSTER_ROLE"], []).append(name)
        self.assertEqual(len(roles.get("router", [])), 2, roles)
        self.assertEqual(len(roles.get("edge", [])), 2, roles)
        self.assertEqual(set(roles), {"router", "edge"}, roles)

        ids = [int(s["environment"]["XMPPD_CLUSTER_NODE_ID"]) for s in nodes.values()]
        self.assertEqual(len(ids), len(set(ids)), "node ids must be unique")
        self.assertTrue(all(1 <= i <= 65535 for i in ids), ids)
        host_ports = []
        for name, s in nodes.items():
            env = s["environment"]
            self.assertEqual(env["XMPPD_STORAGE_BACKEND"], "redis", name)
            self.assertTrue(env["XMPPD_CLUSTER_REDIS"], name)
            self.assertEqual(env["XMPPD_CLUSTER_REDIS"], env["XMPPD_STORAGE_REDIS"], name)
            # cluster.advertise is the numeric address other nodes dial: the node's own.
            addr = s["networks"]["cluster"]["ipv4_address"]
            self.assertEqual(env["XMPPD_CLUSTER_ADVERTISE"], addr, name)
            if env["XMPPD_CLUSTER_ROLE"] == "router":
                self.assertEqual(str(env["XMPPD_C2S_PORT"]), "0", name)
                self.assertEqual(str(env["XMPPD_C2S_TLS_PORT"]), "0", name)
                self.assertFalse(s.get("ports"), f"{name}: a router has no client ports")
            else:
                targets = {str(p["target"]) if isinstance(p, dict) else str(p).split(":")[-1]
                           for p in s.get("ports", [])}
                self.assertEqual(targets, {str(env["XMPPD_C2S_PORT"]), str(env["XMPPD_C2S_TLS_PORT"])},
                                 name)
                host_ports += [str(p["published"]) if isinstance(p, dict) else str(p).split(":")[-2]
                               for p in s.get("ports", [])]
        self.assertEqual(len(host_ports), len(set(host_ports)), f"edges share a host port: {host_ports}")
        addrs = [s["networks"]["cluster"]["ipv4_address"] for s in nodes.values()]
        addrs.append(services["redis"]["networks"]["cluster"]["ipv4_address"])
        self.assertEqual(len(addrs), len(set(addrs)), addrs)

    def test_compose_bench_profile(self):
        cfg = compose_config()
        bench = [n for n, s in cfg["services"].items() if "bench" in (s.get("profiles") or [])]
        self.assertEqual(bench, ["bench"])
        s = cfg["services"]["bench"]
        text = " ".join(map(str, (s.get("entrypoint") or []) + (s.get("command") or [])))
        self.assertIn("xmpp-bench", text)
        r = docker_compose("config", "--profiles")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("bench", r.stdout.split())

    def test_compose_and_local_cluster_use_the_same_variables(self):
        cfg = compose_config()
        script_vars, script_all = script_node_vars()
        self.assertEqual(script_all, script_vars,
                         "local-cluster.sh assigns XMPPD_* variables outside NODE_ENV")
        node_vars, other_vars = set(), set()
        for s in cfg["services"].values():
            env = s.get("environment") or {}
            names = {k for k in env if k.startswith("XMPPD_")}
            (node_vars if "XMPPD_CLUSTER_ROLE" in env else other_vars).update(names)
        self.assertEqual(node_vars, script_vars,
                         f"only in compose: {sorted(node_vars - script_vars)}; "
                         f"only in local-cluster.sh: {sorted(script_vars - node_vars)}")
        self.assertLessEqual(other_vars, script_vars)
        # Every name is a real option: XMPPD_<SECTION>_<KEY> of --print-reference.
        ref = subprocess.run([XMPPD, "--print-reference"], capture_output=True, text=True).stdout
        options = {"XMPPD_" + o.replace(".", "_").upper()
                   for o in re.findall(r"^\| `([a-z0-9_]+\.[a-z0-9_]+)`", ref, re.M)}
        self.assertIn("XMPPD_CLUSTER_ROLE", options)
        self.assertLessEqual(script_vars, options, sorted(script_vars - options))


class DockerfileTest(unittest.TestCase):
    def test_entrypoint_syntax(self):
        r = subprocess.run(["sh", "-n", ENTRYPOINT], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_runtime_stage_has_every_library(self):
        """Each shared library the binaries need directly comes from a package the stage
        that ships them installs (the host is Debian 12 too, so dpkg -S names the same
        package): xmppd and xmppctl in the runtime stage, xmpp-bench in runtime + bench."""
        st = dockerfile_stages()
        runtime = st["runtime"]["text"]
        for prog in ("xmppd", "xmppctl"):
            self.assertIn(f"/src/build/{prog}", runtime, f"the image does not ship {prog}")
        self.assertIn("/src/build/xmpp-bench", st["bench"]["text"], "the bench image does not ship xmpp-bench")
        base = {"libc6", "libgcc-s1", "libstdc++6", "libasan8", "libubsan1"}
        for prog in ("xmppd", "xmppctl", "xmpp-bench"):
            path = os.path.join(BUILD, prog)
            needed = re.findall(r"\(NEEDED\).*\[(.+?)\]",
                                subprocess.run(["readelf", "-d", path], capture_output=True,
                                               text=True, check=True).stdout)
            ldd = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
            where = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
            for lib in needed:
                self.assertIn(lib, where, f"{prog}: ldd does not resolve {lib}")
                r = subprocess.run(["dpkg", "-S", where[lib]], capture_output=True, text=True)
                if r.returncode != 0:  # /lib vs /usr/lib (merged /usr)
                    r = subprocess.run(["dpkg", "-S", os.path.realpath(where[lib])],
                                       capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, f"{prog}: no package owns {where[lib]}")
                pkg = r.stdout.split(":")[0]
                if pkg in base:
                    continue
                self.assertTrue(re.search(r"\b" + re.escape(pkg) + r"\b", runtime),
                                f"{prog} needs {lib} from {pkg}: add it to the runtime stage")

    def test_image_carries_runtime_dependencies_only(self):
        """The default image is the runtime stage: the binaries it serves with, their
        libraries, no compiler, no -dev or test package, no load client; the build stage
        installs the build dependencies only (install-deps.sh --build)."""
        st = dockerfile_stages()
        self.assertEqual(list(st), ["build", "runtime", "bench", "final"])
        self.assertEqual(st["final"]["base"], "runtime", "the default target must be the runtime image")
        self.assertEqual(st["final"]["text"].strip(), "", "the default stage adds nothing to runtime")
        self.assertEqual(st["bench"]["base"], "runtime")
        self.assertIn("install-deps.sh --build", st["build"]["text"])
        runtime = st["runtime"]["text"]
        self.assertEqual(st["runtime"]["base"], "debian:12-slim")
        copied = re.findall(r"^COPY --from=build (.+)$", runtime, re.M)
        self.assertEqual(copied, ["/src/build/xmppd /src/build/xmppctl /usr/local/bin/"])
        installed = set(re.findall(r"[a-z0-9][a-z0-9.+-]+",
                                   re.search(r"apt-get install([^&]*)", runtime, re.S).group(1)))
        installed -= {"-y", "--no-install-recommends"}
        for pkg in installed:
            self.assertFalse(pkg.endswith("-dev") or pkg in TEST_TOOLS | BUILD_TOOLS,
                             f"the runtime stage installs {pkg}")
        # what install-deps.sh --build installs
        with open(os.path.join(ROOT, "deploy", "install-deps.sh")) as f:
            text = f.read()
        build_pkgs = re.search(r"BUILD_PKGS=\((.*?)\n\)", text, re.S).group(1)
        build_pkgs = set(re.findall(r"^\s*([a-z0-9 .+-]+)$", re.sub(r"#.*", "", build_pkgs), re.M))
        build_pkgs = {p for line in build_pkgs for p in line.split()}
        self.assertIn("cmake", build_pkgs)
        self.assertFalse(build_pkgs & TEST_TOOLS, build_pkgs & TEST_TOOLS)

    def test_healthcheck_and_no_volume(self):
        runtime = dockerfile_stages()["runtime"]["text"]
        m = re.search(r"^HEALTHCHECK (.*?)CMD (.+)$", runtime.replace("\\\n", " "), re.M)
        self.assertTrue(m, "no HEALTHCHECK in the runtime stage")
        self.assertIn("docker-entrypoint.sh", m.group(2))
        self.assertIn('"health"', m.group(2))
        self.assertNotRegex(runtime, r"(?m)^VOLUME", "a router would get an anonymous volume it never uses")
        self.assertRegex(runtime, r"(?m)^ENV REFUSED_EXIT_STATUS=0$")

    def test_compose_restart_policy_and_router_files(self):
        """Every xmppd container restarts on failure only (the entrypoint makes xmppd's
        exit status 2 a 0, so a node that refuses to run is not restarted in a loop); a
        router mounts no volume and is given no certificate."""
        for file in (COMPOSE, COMPOSE_SINGLE):
            for name, s in compose_config(file)["services"].items():
                if name in ("redis", "bench"):
                    continue
                self.assertEqual(s.get("restart"), "on-failure", f"{file}: {name}")
                self.assertEqual(s["build"].get("target"), "runtime", f"{file}: {name}")
        services = compose_config()["services"]
        self.assertEqual(services["bench"]["build"].get("target"), "bench")
        for name, s in services.items():
            env = s.get("environment") or {}
            if env.get("XMPPD_CLUSTER_ROLE") != "router":
                continue
            self.assertFalse(s.get("volumes"), f"{name}: a router keeps nothing on disk")
            self.assertFalse({k for k in env if k.startswith("XMPPD_TLS_")}, f"{name}: a router has no client port")


class EntrypointTest(unittest.TestCase):
    """deploy/docker-entrypoint.sh run here with a stub xmppd (no container engine)."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="entrypoint-")
        self.bin = os.path.join(self.dir, "bin")
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.bin)
        os.makedirs(self.data)
        with open(os.path.join(self.bin, "xmppd"), "w") as f:
            f.write("#!/bin/sh\n"
                    "echo \"$@\" > \"$ENTRYPOINT_DATA/args\"\n"
                    "trap 'echo TERM > \"$ENTRYPOINT_DATA/signal\"; exit 0' TERM\n"
                    "trap 'echo HUP >> \"$ENTRYPOINT_DATA/hup\"' HUP\n"
                    "[ -n \"${STUB_RC:-}\" ] && exit \"$STUB_RC\"\n"
                    "touch \"$ENTRYPOINT_DATA/running\"\n"
                    "while :; do sleep 0.05; done\n")
        os.chmod(os.path.join(self.bin, "xmppd"), 0o755)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def env(self, **extra):
        return {"PATH": self.bin + ":" + os.environ["PATH"], "ENTRYPOINT_DATA": self.data, **extra}

    def start(self, **extra):
        return subprocess.Popen(["sh", ENTRYPOINT], env=self.env(**extra), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def test_exit_status_2_becomes_refused_exit_status(self):
        for rc, refused, want in ((2, "0", 0), (2, None, 2), (1, "0", 1), (0, "0", 0), (134, "0", 134)):
            extra = {"STUB_RC": str(rc), "XMPPD_CLUSTER_ROLE": "router"}
            if refused is not None:
                extra["REFUSED_EXIT_STATUS"] = refused
            p = self.start(**extra)
            out, err = p.communicate(timeout=30)
            self.assertEqual(p.returncode, want, f"xmppd {rc}, REFUSED_EXIT_STATUS {refused}: {err}")
            if rc == 2:
                self.assertIn("exited with status 2", err)

    def wait_file(self, name):
        deadline = time.time() + 10
        while not os.path.exists(os.path.join(self.data, name)):
            self.assertLess(time.time(), deadline, f"no {name}")
            time.sleep(0.02)

    def test_signals_reach_xmppd(self):
        p = self.start(XMPPD_CLUSTER_ROLE="router", REFUSED_EXIT_STATUS="0")
        self.wait_file("running")
        p.send_signal(signal.SIGHUP)
        self.wait_file("hup")
        self.assertIsNone(p.poll(), "SIGHUP (certificate reload) must not stop it")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
        self.assertEqual(p.returncode, 0, err)
        with open(os.path.join(self.data, "signal")) as f:
            self.assertEqual(f.read().strip(), "TERM")

    def test_router_gets_no_certificate_edge_does(self):
        p = self.start(XMPPD_CLUSTER_ROLE="router", XMPPD_CLUSTER_NODE_ID="1", STUB_RC="0")
        p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0)
        self.assertFalse(os.path.exists(os.path.join(self.data, "cert.pem")))
        with open(os.path.join(self.data, "xmppd.conf")) as f:
            self.assertNotIn("[tls]", f.read())
        os.remove(os.path.join(self.data, "xmppd.conf"))
        p = self.start(XMPPD_CLUSTER_ROLE="edge", XMPPD_CLUSTER_NODE_ID="11", STUB_RC="0",
                       XMPPD_TLS_CERTIFICATE=os.path.join(self.data, "cert.pem"),
                       XMPPD_TLS_KEY=os.path.join(self.data, "key.pem"))
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, err)
        self.assertTrue(os.path.exists(os.path.join(self.data, "cert.pem")), err)
        with open(os.path.join(self.data, "xmppd.conf")) as f:
            self.assertIn("[tls]", f.read())

    def test_health(self):
        def health(**extra):
            return subprocess.run(["sh", ENTRYPOINT, "health"], env=self.env(**extra), capture_output=True,
                                  timeout=30).returncode
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        port = s.getsockname()[1]
        try:
            self.assertEqual(health(XMPPD_C2S_PORT=str(port)), 0)
            self.assertEqual(health(XMPPD_C2S_PORT="0", XMPPD_C2S_TLS_PORT=str(port)), 0)
            # a router: its bus port, not the client port
            self.assertEqual(health(XMPPD_CLUSTER_ROLE="router", XMPPD_C2S_PORT="0",
                                    XMPPD_CLUSTER_BUS_PORT=str(port)), 0)
        finally:
            s.close()
        self.assertNotEqual(health(XMPPD_C2S_PORT=str(port)), 0)
        self.assertNotEqual(health(XMPPD_CLUSTER_ROLE="router", XMPPD_CLUSTER_BUS_PORT=str(port)), 0)


class DocumentedDefaultsTest(unittest.TestCase):
    def test_cluster_defaults_in_the_docs_are_the_code_s(self):
        """A cluster option's default quoted in the docs, as `cluster.KEY` (N) or in
        docs/cluster.md as `KEY` (N), is the one `xmppd --print-reference` gives (before:
        max_wait_ms was 5000 in one place, 10000 in another)."""
        ref = subprocess.run([XMPPD, "--print-reference"], capture_output=True, text=True).stdout
        defaults = dict(re.findall(r"^\| `(cluster\.[a-z0-9_]+)` \| \w+ \| `([^`]*)`", ref, re.M))
        self.assertIn("cluster.max_wait_ms", defaults)
        seen = 0
        for doc in sorted(os.listdir(os.path.join(ROOT, "docs"))) + ["../README.md"]:
            with open(os.path.join(ROOT, "docs", doc)) as f:
                text = f.read()
            for key, val in re.findall(r"`(cluster\.[a-z0-9_]+)` \((\d[\d,]*)\)", text):
                seen += 1
                self.assertEqual(val.replace(",", ""), defaults.get(key), f"{doc}: {key} ({val})")
            if doc == "cluster.md":
                for key, val in re.findall(r"`([a-z0-9_]+)` \((\d[\d,]*)\)", text):
                    if "cluster." + key in defaults:
                        seen += 1
                        self.assertEqual(val.replace(",", ""), defaults["cluster." + key], f"{doc}: {key} ({val})")
        self.assertGreater(seen, 2)


class LocalClusterTest(unittest.TestCase):
    def run_script(self, *args, env=None, timeout=90):
        return subprocess.run(["bash", LOCAL_CLUSTER, *args], capture_output=True, text=True,
                              timeout=timeout, env=env)

    def test_syntax_and_help(self):
        r = subprocess.run(["bash", "-n", LOCAL_CLUSTER], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.run_script("--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        for opt in ("--build", "--dir", "--base-port", "--edges", "--routers", "--domain", "--fg",
                    "stop"):
            self.assertIn(opt, r.stdout)
        r = self.run_script("--edges", "0")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--edges", r.stderr)
        r = self.run_script("--bogus")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown option", r.stderr)
        if shutil.which("shellcheck"):  # optional: not a Debian dependency of the project
            r = subprocess.run(["shellcheck", LOCAL_CLUSTER, "-s", "bash"], capture_output=True,
                               text=True)
            self.assertEqual(r.returncode, 0, r.stdout)

    def start(self, *extra):
        state = tempfile.mkdtemp(prefix="xmppd-cluster-it-")
        r = self.run_script("--build", BUILD, "--dir", state, "--timeout", "30", *extra)
        self.addCleanup(self.run_script, "stop", "--dir", state)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return state, r

    def test_real_cluster_start_use_stop(self):
        """Redis, 2 routers and 3 edges as real processes: every node gets its role, id
        and ports through the environment, the nodes find each other, an account added
        with the printed command works, a second start on the same directory is refused,
        and stop ends every process cleanly."""
        if not shutil.which("redis-server"):
            self.fail("redis-server is not installed: run deploy/install-deps.sh")
        state, r = self.start("--edges", "3")
        env = read_env_file(os.path.join(state, "env"))
        self.assertEqual(env["EDGES"], "3")
        self.assertEqual(env["ROUTERS"], "2")
        ports = [int(env["REDIS_PORT"])]
        for i in (1, 2):
            self.assertEqual(env[f"ROUTER{i}_NODE_ID"], str(i))
            ports.append(int(env[f"ROUTER{i}_BUS_PORT"]))
        for i in (1, 2, 3):
            self.assertEqual(env[f"EDGE{i}_NODE_ID"], str(10 + i))
            ports += [int(env[f"EDGE{i}_BUS_PORT"]), int(env[f"EDGE{i}_PORT"]),
                      int(env[f"EDGE{i}_TLS_PORT"])]
        self.assertEqual(len(ports), len(set(ports)), ports)
        for p in ports:
            self.assertTrue(port_listens(p), f"port {p} does not listen")
        self.assertIn("adduser", r.stdout)
        self.assertIn(env["REDIS_ADDR"], r.stdout)

        # Redis persists with AOF, fsync every second.
        cli = ["redis-cli", "-p", env["REDIS_PORT"]]
        self.assertIn("yes", subprocess.run(cli + ["config", "get", "appendonly"],
                                            capture_output=True, text=True).stdout)
        self.assertIn("everysec", subprocess.run(cli + ["config", "get", "appendfsync"],
                                                 capture_output=True, text=True).stdout)

        with open(os.path.join(state, "pids")) as f:
            pids = {line.split()[0]: int(line.split()[1]) for line in f if line.strip()}
        self.assertEqual(sorted(pids), ["edge1", "edge2", "edge3", "redis", "router1", "router2"])
        # Each node got its role, id and ports through the environment (as the running
        # process sees it), and every name the script sets.
        with open(f"/proc/{pids['edge2']}/environ", "rb") as f:
            seen = dict(kv.split("=", 1) for kv in f.read().decode().split("\0") if "=" in kv)
        self.assertEqual(seen["XMPPD_CLUSTER_ROLE"], "edge")
        self.assertEqual(seen["XMPPD_CLUSTER_NODE_ID"], "12")
        self.assertEqual(seen["XMPPD_C2S_PORT"], env["EDGE2_PORT"])
        self.assertEqual(seen["XMPPD_CLUSTER_REDIS"], env["REDIS_ADDR"])
        self.assertLessEqual(script_node_vars()[0], set(seen))

        # The nodes found each other: xmppctl (the printed command) lists all five live.
        xmppctl = env["XMPPCTL"].split()
        deadline = time.time() + 20
        while True:
            out = subprocess.run(xmppctl + ["cluster"], capture_output=True, text=True, timeout=30)
            live = {int(m[0]): m[1] for m in re.findall(r"(?m)^(\d+) +(router|edge) ", out.stdout)}
            if live == {1: "router", 2: "router", 11: "edge", 12: "edge", 13: "edge"}:
                break
            self.assertLess(time.time(), deadline, out.stdout + out.stderr)
            time.sleep(0.3)

        add = subprocess.run(xmppctl + ["adduser", "alice@localhost", "secret-pw"],
                             capture_output=True, text=True)
        self.assertEqual(add.returncode, 0, add.stderr)
        chk = subprocess.run(xmppctl + ["checkpassword", "alice@localhost", "secret-pw"],
                             capture_output=True, text=True)
        self.assertEqual(chk.returncode, 0, chk.stderr)

        # A second start on the same directory is refused while the cluster runs.
        r2 = self.run_script("--build", BUILD, "--dir", state)
        self.assertEqual(r2.returncode, 2, r2.stderr)
        self.assertIn("running", r2.stderr)

        r = self.run_script("stop", "--dir", state)
        self.assertEqual(r.returncode, 0, r.stderr)
        for name, pid in pids.items():
            self.assertFalse(pid_alive(pid), f"{name} survived stop")
            if name != "redis":
                with open(os.path.join(state, "log", name + ".log"), errors="replace") as f:
                    log = f.read()
                self.assertNotIn("SIGKILL", r.stderr + log, name)
                self.assertIn("stopped", log, name)
        for p in ports:
            self.assertFalse(port_listens(p), f"port {p} still listens after stop")

    def test_failed_start_cleans_up(self):
        """A node that cannot start stops everything started before it. Edge 2's
        direct-TLS port is bound (not listening, so the script's free-port check passes)
        by a socket without SO_REUSEADDR: the real xmppd cannot listen on it and exits."""
        if not shutil.which("redis-server"):
            self.fail("redis-server is not installed: run deploy/install-deps.sh")
        blocker = None
        for _ in range(50):  # a base below the ephemeral range whose ports are all free
            base = 20000 + random.randrange(120) * 100
            ports = [base, base + 1, base + 2, base + 11, base + 12, base + 100, base + 101,
                     base + 102, base + 103]
            if any(port_listens(p) for p in ports):
                continue
            blocker = socket.socket()
            try:
                blocker.bind(("127.0.0.1", base + 103))  # edge 2's direct-TLS port
                break
            except OSError:
                blocker.close()
                blocker = None
        self.assertIsNotNone(blocker, "found no free port range")
        self.addCleanup(blocker.close)
        state = tempfile.mkdtemp(prefix="xmppd-cluster-it-")
        r = self.run_script("--build", BUILD, "--dir", state, "--base-port", str(base),
                            "--timeout", "20")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("edge2", r.stderr)
        with open(os.path.join(state, "log", "edge2.log"), errors="replace") as f:
            self.assertIn(f"cannot listen on 127.0.0.1:{base + 103}", f.read())
        self.assertFalse(os.path.exists(os.path.join(state, "pids")))
        out = subprocess.run(["pgrep", "-f", state], capture_output=True, text=True).stdout
        self.assertEqual(out.strip(), "", "processes of the failed start are left")
        for p in ports:
            self.assertFalse(port_listens(p), f"port {p} of the failed start still listens")


if __name__ == "__main__":
    unittest.main()
