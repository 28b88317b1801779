"""xmppctl against the same store the server uses: accounts, passwords, clear errors."""
import sqlite3
import subprocess
import unittest

from harness import XMPPCTL, Client, Server, run


def ctl(srv, *args, stdin=None):
    return subprocess.run([XMPPCTL, "-c", srv.conf, *args], capture_output=True, text=True, input=stdin)


class AdminTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()
        cls.srv.start()

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0, cls.srv.log_text()

    def test_lifecycle(self):
        srv = self.srv
        self.assertEqual(ctl(srv, "adduser", "ivan", "first-pw").returncode, 0)
        r = ctl(srv, "adduser", "ivan@localhost", "again")
        self.assertEqual(r.returncode, 1)
        self.assertIn("exists", r.stderr)
        self.assertIn("ivan@localhost", ctl(srv, "listusers").stdout.split())
        self.assertEqual(ctl(srv, "checkpassword", "ivan", "first-pw").returncode, 0)
        self.assertEqual(ctl(srv, "checkpassword", "ivan", "wrong").returncode, 1)
        # the password is read from stdin when not given
        self.assertEqual(ctl(srv, "passwd", "ivan", stdin="second-pw\n").returncode, 0)

        async def login(pw):
            c = Client(srv, "ivan@localhost/x", pw)
            ok = await c.login()
            if ok:
                await c.close()
            return ok
        self.assertFalse(run(login("first-pw")))
        self.assertTrue(run(login("second-pw")))
        self.assertEqual(ctl(srv, "deluser", "ivan").returncode, 0)
        r = ctl(srv, "deluser", "ivan")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no such user", r.stderr)
        self.assertFalse(run(login("second-pw")))

    def test_usage_errors(self):
        self.assertEqual(ctl(self.srv, "adduser", "bad@jid@x", "pw").returncode, 2)
        self.assertEqual(ctl(self.srv, "adduser", "res@localhost/r", "pw").returncode, 2)
        self.assertEqual(ctl(self.srv, "frobnicate").returncode, 2)

    def test_no_plaintext_password_at_rest(self):
        self.assertEqual(ctl(self.srv, "adduser", "judy", "a-very-secret-pw").returncode, 0)
        with open(self.srv.conf) as f:
            db = [l.split("=", 1)[1].strip() for l in f if l.startswith("path")][0]
        raw = b""
        for suffix in ("", "-wal"):
            try:
                raw += open(db + suffix, "rb").read()
            except FileNotFoundError:
                pass
        con = sqlite3.connect(db)
        rows = con.execute("select * from accounts where jid='judy@localhost'").fetchall()
        con.close()
        self.assertEqual(len(rows), 1)
        self.assertNotIn(b"a-very-secret-pw", raw)
        self.assertNotIn("a-very-secret-pw", repr(rows))


if __name__ == "__main__":
    unittest.main()
