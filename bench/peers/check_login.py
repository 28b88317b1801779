#!/usr/bin/python3
"""Smoke test for a server under bench/compare.sh: log in two accounts with slixmpp
(STARTTLS, SASL PLAIN or SCRAM), fetch the roster, send one message between them.

  check_login.py --port P [--domain localhost] [--password secret] [--users user1,user2]
                 [--mech PLAIN] [--expect-roster K]
Exit 0 and one line "ok ..." when everything worked.
"""
import argparse
import asyncio
import ssl
import sys

import slixmpp


class C(slixmpp.ClientXMPP):
    def __init__(self, jid, pw, mech):
        super().__init__(jid, pw, sasl_mech=mech)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.ssl_context = ctx
        self.msgs = asyncio.Queue()
        self.add_event_handler("message", lambda m: self.msgs.put_nowait(m))

    async def login(self, port):
        fut = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", lambda e: fut.done() or fut.set_result(True))
        self.add_event_handler("failed_auth", lambda e: fut.done() or fut.set_result(False))
        self.add_event_handler("disconnected", lambda e: fut.done() or fut.set_result(False))
        self.connect(("127.0.0.1", port))
        return await asyncio.wait_for(fut, 15)


async def main(a):
    u1, u2 = a.users.split(",")
    c1 = C(f"{u1}@{a.domain}/a", a.password, a.mech)
    c2 = C(f"{u2}@{a.domain}/b", a.password, a.mech)
    for c in (c1, c2):
        if not await c.login(a.port):
            print(f"FAIL: login {c.boundjid} failed")
            return 1
    roster = await c1.get_roster()
    items = roster["roster"]["items"]
    if a.expect_roster is not None and len(items) != a.expect_roster:
        print(f"FAIL: roster of {u1} has {len(items)} items, expected {a.expect_roster}")
        return 1
    tls = "no TLS"
    so = c1.transport.get_extra_info("ssl_object") if c1.transport else None
    if so is not None:
        tls = f"{so.version()} {so.cipher()[0]}"
    elif a.require_tls:
        print(f"FAIL: {u1} is not on a TLS connection")
        return 1
    c1.send_message(mto=c2.boundjid.full, mbody="ping", mtype="chat")
    m = await asyncio.wait_for(c2.msgs.get(), 10)
    if str(m["body"]) != "ping":
        print("FAIL: wrong message body")
        return 1
    for c in (c1, c2):
        c.disconnect()
    await asyncio.sleep(0.2)
    print(f"ok: {u1},{u2} logged in ({tls}, {a.mech}), roster {len(items)} items, message delivered")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--domain", default="localhost")
    p.add_argument("--password", default="secret")
    p.add_argument("--users", default="user1,user2")
    p.add_argument("--mech", default="PLAIN")
    p.add_argument("--expect-roster", type=int)
    p.add_argument("--require-tls", type=int, default=1)
    a = p.parse_args()
    try:
        sys.exit(asyncio.run(asyncio.wait_for(main(a), 40)))
    except (asyncio.TimeoutError, OSError) as e:
        print(f"FAIL: {type(e).__name__} {e}")
        sys.exit(1)
