"""The configuration surface: --check-config, --set overrides, clear errors, docs in sync."""
import os
import subprocess
import unittest

from harness import XMPPD, Server

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def xmppd(*args):
    return subprocess.run([XMPPD, *args], capture_output=True, text=True)


class ConfigTest(unittest.TestCase):
    def test_reference_matches_docs(self):
        ref = xmppd("--print-reference").stdout.strip()
        with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
            self.assertIn(ref, f.read(), "docs/configuration.md is stale: regenerate the table")

    def test_check_config_ok_and_errors(self):
        srv = Server()
        r = xmppd("-c", srv.conf, "--check-config")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = xmppd("-c", srv.conf, "--set", "limits.max_stanza_bytes=12", "--check-config")
        self.assertEqual(r.returncode, 2)
        self.assertIn("limits.max_stanza_bytes", r.stderr)
        r = xmppd("-c", srv.conf, "--set", "nosuch.option=1", "--check-config")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown option", r.stderr)
        r = xmppd("-c", srv.conf, "--set", "tls.certificate=/nonexistent.pem", "--check-config")
        self.assertEqual(r.returncode, 2)
        self.assertIn("/nonexistent.pem", r.stderr)
        with open(srv.conf, "a") as f:
            f.write("[server]\nbogus = 1\n")
        r = xmppd("-c", srv.conf, "--check-config")
        self.assertEqual(r.returncode, 2)
        self.assertIn("bogus", r.stderr)

    def test_set_override_wins(self):
        srv = Server()
        r = xmppd("-c", srv.conf, "--set", "limits.offline_max=7", "--print-config")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("offline_max = 7", r.stdout)


if __name__ == "__main__":
    unittest.main()
