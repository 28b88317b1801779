"""XEP-0077 in-band registration and password change (edge/register.c).

Off by default: no <register/> stream feature, and a registration request gets
<service-unavailable/> (XEP-0077 §3.1, example 2). With registration.open, a client under
TLS registers before SASL (§3.1) and then logs in with SCRAM; a taken name gets
<conflict/>, a missing field or a short password <not-acceptable/>, a localpart PRECIS
refuses <jid-malformed/>; over plaintext with TLS required the request is a
<policy-violation/> stream error. Each source address has registration.per_ip_per_hour
attempts (N pass, N + 1 gets <resource-constraint/> before any hashing). A logged-in user
changes its password (§3.3) whether registration is open or not: the old one then fails,
the new one works. Checked with slixmpp (xep_0077), aioxmpp (aioxmpp.ibr) and raw XML."""
import asyncio
import re
import unittest

import aiosasl
import aioxmpp
import aioxmpp.ibr
import aioxmpp.node
import slixmpp

from harness import DOMAIN, Client, RawStream, ServerTest, cpu_seconds, run

NS = "jabber:iq:register"
FEATURE = "<register xmlns='http://jabber.org/features/iq-register'/>"


def reg_set(user, password, iq_id="r1"):
    fields = ""
    if user is not None:
        fields += f"<username>{user}</username>"
    if password is not None:
        fields += f"<password>{password}</password>"
    return f"<iq type='set' id='{iq_id}'><query xmlns='{NS}'>{fields}</query></iq>"


def answer(raw, iq_id, timeout=10):
    """The reply to iq_id: (type, error condition or None, the reply's text)."""
    text = raw.recv_until(f"<iq[^>]*id='{iq_id}'.*?</iq>", timeout=timeout)
    m = re.search(f"<iq[^>]*id='{iq_id}'.*?</iq>", text, re.S)
    iq = m.group(0)
    typ = re.search(r"type='(\w+)'", iq).group(1)
    cond = re.search(r"<([a-z-]+) xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>", iq)
    return typ, cond.group(1) if cond else None, iq


def tls_stream(port, src=None):
    """A raw stream under TLS, the features after STARTTLS read."""
    raw = RawStream(port, src=src)
    raw.starttls()
    raw.open_stream()
    feats = raw.recv_until(r"</stream:features>")
    raw.buf = b""
    return raw, feats


def register_raw(port, user, password, src=None, iq_id="r1"):
    raw, _ = tls_stream(port, src)
    try:
        raw.send(reg_set(user, password, iq_id))
        return answer(raw, iq_id)
    finally:
        raw.close()


def can_log_in(srv, jid, password, mech=None):
    """SCRAM log-in with slixmpp (its default choice under TLS: SCRAM-SHA-256, or mech)."""
    async def go():
        c = Client(srv, jid, password)
        if mech:
            c["feature_mechanisms"].use_mech = mech
        ok = await c.login()
        await c.close()
        return ok
    return run(go())


def aioxmpp_client(srv, jid, password):
    return aioxmpp.PresenceManagedClient(
        aioxmpp.JID.fromstr(jid), aioxmpp.make_security_layer(password, no_verify=True),
        override_peer=[("127.0.0.1", srv.port, aioxmpp.connector.STARTTLSConnector())])


async def aioxmpp_logs_in(srv, jid, password):
    try:
        async with aioxmpp_client(srv, jid, password).connected():
            return True
    except aioxmpp.errors.TLSFailure:
        raise
    except (aioxmpp.errors.SecurityNegotiationFailure, aiosasl.AuthenticationFailure):
        return False


class Registrar(slixmpp.ClientXMPP):
    """slixmpp creating its account on connect (xep_0077's 'register' event), then
    logging in on the same stream."""

    def __init__(self, jid, password):
        super().__init__(jid, password)
        from harness import insecure_context
        self.ssl_context = insecure_context()
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0004")
        self.register_plugin("xep_0066")
        self.register_plugin("xep_0077")
        self["xep_0077"].force_registration = False
        self.outcome = None
        self.add_event_handler("register", self.on_register)
        # slixmpp 1.8 holds back every stanza until the session starts, its own
        # xep_0077 requests included (logged "NOT SENT"): registration before SASL
        # needs them sent (its test harness sets the same flag)
        self._always_send_everything = True

    async def on_register(self, form):
        iq = self.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.boundjid.user
        iq["register"]["password"] = self.password
        try:
            await iq.send(timeout=10)
            self.outcome = "result"
        except slixmpp.exceptions.IqError as e:
            self.outcome = e.iq["error"]["condition"]
            self.disconnect()


async def slixmpp_register(srv, jid, password):
    c = Registrar(jid, password)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    c.add_event_handler("session_start", lambda e: done.done() or done.set_result(True))
    c.add_event_handler("failed_auth", lambda e: done.done() or done.set_result(False))
    c.add_event_handler("disconnected", lambda e: done.done() or done.set_result(False))
    c.connect(("127.0.0.1", srv.port))
    logged_in = await asyncio.wait_for(done, 15)
    c.disconnect()
    return c.outcome, logged_in


class RegistrationClosedTest(ServerTest):
    """Default configuration: registration is off; password changes still work."""
    users = ("alice", "bob")

    def test_feature_absent_and_request_refused(self):
        raw, feats = tls_stream(self.srv.port)
        self.assertNotIn("iq-register", feats)
        self.assertIn("<mechanisms", feats)
        raw.send(f"<iq type='get' id='g1'><query xmlns='{NS}'/></iq>")
        self.assertEqual(answer(raw, "g1")[:2], ("error", "service-unavailable"))
        raw.send(reg_set("mallory", "longenough1", "s1"))
        self.assertEqual(answer(raw, "s1")[:2], ("error", "service-unavailable"))
        raw.close()
        self.assertFalse(can_log_in(self.srv, f"mallory@{DOMAIN}", "longenough1"))

    def test_slixmpp_register_refused(self):
        outcome, logged_in = run(slixmpp_register(self.srv, f"eve@{DOMAIN}", "longenough1"))
        # slixmpp registers only when the feature is offered: it is not, so it never asks
        # and its log-in fails for want of an account
        self.assertIsNone(outcome)
        self.assertFalse(logged_in)

    def test_slixmpp_password_change(self):
        async def go():
            c = Client(self.srv, f"alice@{DOMAIN}", "pw")
            c.register_plugin("xep_0077")
            self.assertTrue(await c.login())
            await c["xep_0077"].change_password("new-secret-1", jid=DOMAIN, timeout=10)
            await c.close()
        run(go())
        self.assertFalse(can_log_in(self.srv, f"alice@{DOMAIN}", "pw"))
        self.assertTrue(can_log_in(self.srv, f"alice@{DOMAIN}", "new-secret-1"))
        self.assertTrue(can_log_in(self.srv, f"alice@{DOMAIN}", "new-secret-1", mech="SCRAM-SHA-1"))
        raw = RawStream(self.srv.port).login("alice", "new-secret-1")  # PLAIN
        raw.close()

    def test_aioxmpp_password_change_and_refusals(self):
        async def go():
            client = aioxmpp_client(self.srv, f"bob@{DOMAIN}/a", "pw")
            async with client.connected():
                svc = client.summon(aioxmpp.ibr.RegistrationService)
                info = await svc.get_client_info()
                self.assertEqual(info.username, "bob")
                # too short for registration.min_password (8)
                with self.assertRaises(aioxmpp.errors.XMPPModifyError) as cm:
                    await svc.change_pass("short")
                self.assertEqual(cm.exception.condition, aioxmpp.ErrorCondition.NOT_ACCEPTABLE)
                # someone else's username
                iq = aioxmpp.IQ(to=aioxmpp.JID.fromstr(DOMAIN), type_=aioxmpp.IQType.SET,
                                payload=aioxmpp.ibr.Query("alice", "longenough1"))
                with self.assertRaises(aioxmpp.errors.XMPPCancelError) as cm:
                    await client.send(iq)
                self.assertEqual(cm.exception.condition, aioxmpp.ErrorCondition.NOT_ALLOWED)
                # unregistering is the administrator's
                with self.assertRaises(aioxmpp.errors.XMPPCancelError) as cm:
                    await svc.cancel_registration()
                self.assertEqual(cm.exception.condition, aioxmpp.ErrorCondition.NOT_ALLOWED)
                await svc.change_pass("bobs-new-pass")
            self.assertFalse(await aioxmpp_logs_in(self.srv, f"bob@{DOMAIN}/b", "pw"))
            self.assertTrue(await aioxmpp_logs_in(self.srv, f"bob@{DOMAIN}/b", "bobs-new-pass"))
        run(go())


class RegistrationOpenTest(ServerTest):
    users = ("taken",)
    server_options = {"registration.open": "true", "registration.per_ip_per_hour": "1000"}

    def test_feature_offered_only_under_tls(self):
        raw = RawStream(self.srv.port)
        raw.open_stream()
        feats = raw.recv_until(r"</stream:features>")
        self.assertNotIn("iq-register", feats, "never over plaintext")
        raw.close()
        raw, feats = tls_stream(self.srv.port)
        self.assertIn(FEATURE, feats)
        raw.send(f"<iq type='get' id='g1' to='{DOMAIN}'><query xmlns='{NS}'/></iq>")
        typ, cond, iq = answer(raw, "g1")
        self.assertEqual(typ, "result")
        for f in ("<instructions>", "<username/>", "<password/>"):
            self.assertIn(f, iq)
        raw.close()

    def test_plaintext_request_is_a_policy_violation(self):
        raw = RawStream(self.srv.port)
        raw.open_stream()
        raw.recv_until(r"</stream:features>")
        raw.send(reg_set("plainuser", "longenough1"))
        raw.recv_until(r"<policy-violation")
        self.assertTrue(raw.closed())
        raw.close()
        self.assertFalse(can_log_in(self.srv, f"plainuser@{DOMAIN}", "longenough1"))

    def test_slixmpp_registers_then_logs_in_with_scram(self):
        outcome, logged_in = run(slixmpp_register(self.srv, f"newbie@{DOMAIN}", "newbie-pass"))
        self.assertEqual(outcome, "result")
        self.assertTrue(logged_in, "logged in on the same stream after registering")
        self.assertTrue(can_log_in(self.srv, f"newbie@{DOMAIN}", "newbie-pass", mech="SCRAM-SHA-1"))
        self.assertFalse(can_log_in(self.srv, f"newbie@{DOMAIN}", "wrong-pass"))
        outcome, logged_in = run(slixmpp_register(self.srv, f"newbie@{DOMAIN}", "other-pass"))
        self.assertEqual(outcome, "conflict")
        self.assertTrue(can_log_in(self.srv, f"newbie@{DOMAIN}", "newbie-pass"), "the account is unchanged")

    def test_aioxmpp_registers_then_logs_in(self):
        async def go():
            jid = aioxmpp.JID.fromstr(f"axuser@{DOMAIN}")
            meta = aioxmpp.make_security_layer(None, no_verify=True)
            _, stream, _ = await aioxmpp.node.connect_xmlstream(
                jid, meta, override_peer=[("127.0.0.1", self.srv.port, aioxmpp.connector.STARTTLSConnector())])
            try:
                form = await aioxmpp.ibr.get_registration_fields(stream)
                self.assertIn((NS, "username"), aioxmpp.ibr.get_used_fields(form))
                await aioxmpp.ibr.register(stream, aioxmpp.ibr.Query("axuser", "ax-password"))
                # ibr.register does not look at the reply: the same request, read here
                iq = aioxmpp.IQ(to=aioxmpp.JID.fromstr(DOMAIN), type_=aioxmpp.IQType.SET,
                                payload=aioxmpp.ibr.Query("taken", "ax-password"))
                iq.autoset_id()
                reply = await aioxmpp.protocol.send_and_wait_for(stream, [iq], [aioxmpp.IQ], timeout=10)
                self.assertEqual(reply.type_, aioxmpp.IQType.ERROR)
                self.assertEqual(reply.error.condition, aioxmpp.ErrorCondition.CONFLICT)
            finally:
                stream.abort()
            self.assertTrue(await aioxmpp_logs_in(self.srv, f"axuser@{DOMAIN}/x", "ax-password"))
        run(go())

    def test_conflict_keeps_the_old_password(self):
        self.assertEqual(register_raw(self.srv.port, "taken", "longenough1")[:2], ("error", "conflict"))
        self.assertEqual(register_raw(self.srv.port, "TAKEN", "longenough1")[:2], ("error", "conflict"),
                         "the localpart is case-folded (PRECIS) before the check")
        self.assertTrue(can_log_in(self.srv, f"taken@{DOMAIN}", "pw"))

    def test_bad_fields(self):
        cases = [
            (None, "longenough1", "not-acceptable"),
            ("", "longenough1", "not-acceptable"),
            ("nopass", None, "not-acceptable"),
            ("nopass", "", "not-acceptable"),
            ("shortpw", "1234567", "not-acceptable"),  # min_password 8: 7 refused
            ("a@b", "longenough1", "jid-malformed"),
            ("a b", "longenough1", "jid-malformed"),
            ("x" * 1024, "longenough1", "jid-malformed"),
            ("ctl", "long\tenough1", "not-acceptable"),  # a control character
        ]
        raw, _ = tls_stream(self.srv.port)
        for i, (user, pw, cond) in enumerate(cases):
            raw.send(reg_set(user, pw, f"b{i}"))
            self.assertEqual(answer(raw, f"b{i}")[:2], ("error", cond), (user, pw))
        # exactly min_password bytes is enough
        raw.send(reg_set("eightpw", "12345678", "ok"))
        self.assertEqual(answer(raw, "ok")[:2], ("result", None))
        raw.close()
        self.assertTrue(can_log_in(self.srv, f"eightpw@{DOMAIN}", "12345678"))


class RegistrationRateTest(ServerTest):
    """registration.per_ip_per_hour = 2: the third attempt from an address is refused
    before any hashing (storage.scram_iterations high, so hashing would show)."""
    server_options = {"registration.open": "true", "registration.per_ip_per_hour": "2",
                      "storage.scram_iterations": "200000"}

    def test_n_pass_n_plus_one_refused_per_address(self):
        src = "127.0.0.2"
        self.assertEqual(register_raw(self.srv.port, "rate1", "longenough1", src)[:2], ("result", None))
        self.assertEqual(register_raw(self.srv.port, "rate2", "longenough1", src)[:2], ("result", None))
        self.assertEqual(register_raw(self.srv.port, "rate3", "longenough1", src)[:2],
                         ("error", "resource-constraint"))
        # another address has its own budget
        self.assertEqual(register_raw(self.srv.port, "rate4", "longenough1", "127.0.0.3")[:2], ("result", None))
        self.assertTrue(can_log_in(self.srv, f"rate2@{DOMAIN}", "longenough1"))
        self.assertFalse(can_log_in(self.srv, f"rate3@{DOMAIN}", "longenough1"))

    def test_flood_over_budget_costs_no_hashing(self):
        src = "127.0.0.4"
        raw, _ = tls_stream(self.srv.port, src)
        raw.send(reg_set("flood0", "longenough1", "f0"))
        self.assertEqual(answer(raw, "f0")[:2], ("result", None))
        raw.send(reg_set("flood1", "longenough1", "f1"))
        self.assertEqual(answer(raw, "f1")[:2], ("result", None))
        before = cpu_seconds(self.srv.proc.pid)
        n = 200
        raw.send("".join(reg_set(f"flood{i}x", "longenough1", f"x{i}") for i in range(n)))
        text = raw.recv_until(f"id='x{n - 1}'.*?</iq>", timeout=30)
        self.assertEqual(len(re.findall(r"<resource-constraint ", text)), n, text[-500:])
        used = cpu_seconds(self.srv.proc.pid) - before
        # one PBKDF2 pair at 200000 iterations costs far more than this whole flood
        self.assertLess(used, 1.0, f"{n} refused attempts cost {used:.2f} s of CPU")
        raw.close()

    def test_one_registration_at_a_time_per_connection(self):
        raw, _ = tls_stream(self.srv.port, "127.0.0.5")
        # the first is hashing (200,000 iterations: a third of a second) when the second
        # arrives, in the same write
        raw.send(reg_set("busy1", "longenough1", "p1") + reg_set("busy2", "longenough1", "p2"))
        self.assertEqual(answer(raw, "p2")[:2], ("error", "resource-constraint"))
        self.assertEqual(answer(raw, "p1")[:2], ("result", None))
        raw.close()
        self.assertFalse(can_log_in(self.srv, f"busy2@{DOMAIN}", "longenough1"))


class RegistrationTlsOptionalTest(ServerTest):
    """tls.required = false: registration is still never done over plaintext."""
    server_options = {"registration.open": "true", "tls.required": "false"}

    def test_plaintext_refused_tls_accepted(self):
        raw = RawStream(self.srv.port)
        raw.open_stream()
        feats = raw.recv_until(r"</stream:features>")
        self.assertIn("<mechanisms", feats)
        self.assertNotIn("iq-register", feats)
        raw.send(reg_set("clearuser", "longenough1"))
        self.assertEqual(answer(raw, "r1")[:2], ("error", "not-authorized"))
        raw.close()
        self.assertEqual(register_raw(self.srv.port, "tlsuser", "longenough1")[:2], ("result", None))
        self.assertFalse(can_log_in(self.srv, f"clearuser@{DOMAIN}", "longenough1"))
        self.assertTrue(can_log_in(self.srv, f"tlsuser@{DOMAIN}", "longenough1"))


if __name__ == "__main__":
    unittest.main()
