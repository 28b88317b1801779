// xmpp.js 0.14 (@xmpp/client: SASL2, Bind2, FAST, XEP-0198) against xmppd; run by
// tests/integration/test_sasl2.py (XmppJsTest), which starts the server and the account.
//
//   node sasl2_fast.js PORT USER PASSWORD
//
// 1. alice logs in with SASL2 + Bind2 (tag "js") and a password, asks for a FAST token
//    (xmpp.js does when it has none), enables XEP-0198 inline in the bind;
// 2. a second client, same user agent, NO password, logs in with the token only (FAST),
//    and xmpp.js checks the server's HT "Responder" proof;
// 3. the first client's socket is dropped; while it is away the second sends it a
//    message; xmpp.js reconnects (FAST + XEP-0198 <resume/> inline in <authenticate/>)
//    and gets <resumed/>, then the message.
// Prints one line per step ("STEP name {json}") and "OK" last; exits 1 on any failure.
import { webcrypto } from "node:crypto";
import { client, xml } from "@xmpp/client";

globalThis.crypto ??= webcrypto; // node 18 (Debian 12) has it only behind a flag

process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0"; // the test's self-signed certificate

const [port, user, password] = process.argv.slice(2);
const ua = globalThis.crypto.randomUUID();
const userAgent = () => xml("user-agent", { id: ua }, xml("software", {}, "xmppd-test"), xml("device", {}, "node"));
const deadline = setTimeout(() => fail("timeout"), 30_000);
let token = null;

function step(name, data = {}) {
  console.log(`STEP ${name} ${JSON.stringify(data)}`);
}

function fail(why) {
  console.log(`FAIL ${why}`);
  process.exit(1);
}

function make(opts) {
  const x = client({
    service: `xmpp://127.0.0.1:${port}`,
    domain: "localhost",
    resource: "js",
    userAgent: userAgent(),
    ...opts,
  });
  x.on("error", (err) => step("error", { message: String(err && err.message) }));
  x.fast.saveToken = async (t) => {
    token = t;
    step("token", { mechanism: t.mechanism, expiry: t.expiry, length: t.token.length });
  };
  x.fast.fetchToken = async () => token;
  return x;
}

function sasl2Used(x) {
  // what the first <authenticate/> looked like, seen on the wire
  const sent = [];
  x.on("send", (el) => sent.push(el));
  return sent;
}

const a = make({ username: user, password });
const aSent = sasl2Used(a);
const online = new Promise((resolve) => a.once("online", resolve));
await a.start();
const aJid = await online;
const auth = aSent.find((el) => el.is("authenticate", "urn:xmpp:sasl:2"));
if (!auth) fail("no SASL2 <authenticate/>");
step("sasl2", { mechanism: auth.attrs.mechanism, jid: aJid.toString() });
if (!/^js\.[A-Za-z0-9]{8}$/.test(aJid.getResource())) fail(`Bind2 resource ${aJid.getResource()}`);
if (!a.streamManagement.enabled || !a.streamManagement.id) fail("XEP-0198 not enabled inline");
step("bind2", { resource: aJid.getResource(), sm_id: a.streamManagement.id });
if (!token) fail("no FAST token");

// 2. the token alone
const b = make({ username: user });
const bSent = sasl2Used(b);
const bOnline = new Promise((resolve) => b.once("online", resolve));
await b.start();
const bJid = await bOnline;
const bAuth = bSent.find((el) => el.is("authenticate", "urn:xmpp:sasl:2"));
if (!bAuth || bAuth.attrs.mechanism !== "HT-SHA-256-NONE") fail(`FAST not used: ${bAuth && bAuth.toString()}`);
step("fast", { mechanism: bAuth.attrs.mechanism, jid: bJid.toString() });

// 3. drop a's connection, send it a message meanwhile, see it resume
const resumed = new Promise((resolve) => a.streamManagement.once("resumed", resolve));
const got = new Promise((resolve) =>
  a.on("stanza", (st) => {
    if (st.is("message") && st.getChildText("body") === "while away") resolve(st);
  }),
);
const aSentBefore = aSent.length;
a.socket.socket.destroy(); // the TLS socket (@xmpp/tls wraps it): no </stream:stream>, a drop
// sent whether or not the server has seen the drop yet: written to the dead connection
// it is unacknowledged (XEP-0198), so the resumption sends it again
await b.send(xml("message", { to: aJid.toString(), type: "chat" }, xml("body", {}, "while away")));
await resumed;
const rAuth = aSent.slice(aSentBefore).find((el) => el.is("authenticate", "urn:xmpp:sasl:2"));
if (!rAuth || rAuth.attrs.mechanism !== "HT-SHA-256-NONE") fail(`reconnect not FAST: ${rAuth && rAuth.toString()}`);
if (!rAuth.getChild("resume", "urn:xmpp:sm:3")) fail("no inline <resume/>");
step("resumed", { mechanism: rAuth.attrs.mechanism, jid: a.jid.toString() });
await got;
step("message", {});
if (a.jid.toString() !== aJid.toString()) fail("resumed under another JID");

clearTimeout(deadline);
await b.stop();
await a.stop();
console.log("OK");
process.exit(0);
