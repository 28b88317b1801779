"""One process per address and per store (docs/operations.md, "A second instance").

Each edge thread listens with SO_REUSEPORT, and Linux lets any process of the same user
join such a socket group: a second xmppd started by mistake on the same ports used to
start happily and take half of the clients (messages "lost" to its own offline
storage). A second xmppd on the same listeners, or on the same SQLite store, must
refuse to start (exit status 2, a message saying why), the first one must not notice,
xmppctl must keep working on the store while the server runs, and the next start after
the first exits (cleanly, or killed with SIGKILL: the kernel drops the lock) must work."""
import os
import socket
import subprocess
import unittest

from harness import XMPPCTL, XMPPD, Client, Server, free_port, run


def second(srv, *sets, timeout=15):
    """Runs another xmppd on srv's configuration (with overrides): (status, output).
    Fails the test if it is still running after timeout (it started)."""
    args = [XMPPD, "-c", srv.conf]
    for s in sets:
        args += ["--set", s]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        raise AssertionError("the second xmppd started and kept running:\n" + out)
    return p.returncode, out


async def chat(srv, tag):
    """Two accounts log in on srv and exchange a message each way."""
    a = Client(srv, "alice@localhost/a", "pw")
    b = Client(srv, "bob@localhost/b", "pw")
    assert await a.login() and await b.login(), f"log-in on port {srv.port}"
    a.send_presence()
    b.send_presence()
    for x, y, to in ((a, b, "bob@localhost/b"), (b, a, "alice@localhost/a")):
        x.send_message(mto=to, mbody=tag, mtype="chat")
        m = await y.next_message(5, pred=lambda m: m["body"] == tag)
        assert m["body"] == tag
    await a.close()
    await b.close()


class SecondInstanceTest(unittest.TestCase):
    def setUp(self):
        self.srv = Server()
        self.srv.adduser("alice@localhost", "pw")
        self.srv.adduser("bob@localhost", "pw")
        self.srv.start()

    def tearDown(self):
        self.assertEqual(self.srv.stop(), 0, self.srv.log_text())

    def test_same_ports_and_store_refused(self):
        rc, out = second(self.srv)
        self.assertEqual(rc, 2, out)
        self.assertIn("is in use by another xmppd (pid %d" % self.srv.proc.pid, out)
        run(chat(self.srv, "after the second one"))

    def test_same_ports_other_store_refused(self):
        other = os.path.join(self.srv.dir, "other.db")
        rc, out = second(self.srv, "storage.path=" + other)
        self.assertEqual(rc, 2, out)
        self.assertIn("cannot listen on 127.0.0.1:%d: another xmppd" % self.srv.port, out)
        run(chat(self.srv, "still one server"))

    def test_same_direct_tls_port_only_refused(self):
        other = os.path.join(self.srv.dir, "other.db")
        rc, out = second(self.srv, "storage.path=" + other, f"c2s.port={free_port()}")
        self.assertEqual(rc, 2, out)
        self.assertIn("cannot listen on 127.0.0.1:%d: another xmppd" % self.srv.tls_port, out)

    def test_same_store_other_ports_refused(self):
        rc, out = second(self.srv, f"c2s.port={free_port()}", f"c2s.tls_port={free_port()}")
        self.assertEqual(rc, 2, out)
        self.assertIn("in use by another xmppd (pid %d" % self.srv.proc.pid, out)
        self.assertIn("xmppd.db.lock", out)
        run(chat(self.srv, "store still ours"))

    def test_xmppctl_works_while_the_server_runs(self):
        r = subprocess.run([XMPPCTL, "-c", self.srv.conf, "adduser", "carol@localhost", "cpw"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("carol@localhost", subprocess.run([XMPPCTL, "-c", self.srv.conf, "listusers"],
                                                        capture_output=True, text=True).stdout)

        async def go():
            c = Client(self.srv, "carol@localhost/c", "cpw")
            self.assertTrue(await c.login())
            await c.close()
        run(go())

    def test_restart_after_clean_stop_and_after_kill9(self):
        self.assertEqual(self.srv.stop(), 0, self.srv.log_text())
        self.srv.start()  # the lock was released, the ports are free
        run(chat(self.srv, "after a clean restart"))
        # a connected client when the server dies: the server's side of it lingers in
        # TIME_WAIT on the client port, which must not count as "in use"
        s = socket.create_connection(("127.0.0.1", self.srv.port))
        self.srv.proc.kill()
        self.srv.proc.wait()
        self.srv.log.close()
        s.close()
        self.srv.start()  # the kernel dropped the flock with the process
        run(chat(self.srv, "after kill -9"))


class OtherProgramOnThePortTest(unittest.TestCase):
    def test_port_held_by_another_program(self):
        srv = Server()
        s = socket.socket()
        s.bind(("127.0.0.1", srv.port))
        s.listen(1)
        try:
            rc, out = second(srv)
        finally:
            s.close()
        self.assertEqual(rc, 2, out)
        self.assertIn("cannot listen on 127.0.0.1:%d: address already in use by another program" % srv.port, out)


if __name__ == "__main__":
    unittest.main()
