#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets to tests/fuzz/corpus/<target>/.

Run from anywhere: python3 tests/fuzz/make_corpus.py. The files are committed; rerun
only to change them. Each file is one input as the target reads it (see the comment at
the top of tests/fuzz/fuzz_<target>.c for the layout, e.g. a leading mode byte)."""
import base64
import hashlib
import hmac
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ------------------------------------------------------------------ xml_stream
OPEN = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        "xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>")
OPEN_S = ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
          "from='example.com' id='abc' version='1.0' xml:lang='en'>")
XML = {
    "starttls": OPEN + "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + OPEN,
    "sasl_scram": OPEN + "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
    "biwsbj11c2VyLHI9ck9wck5HZndFYmVSV2diTkVrcU8=</auth>"
    "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>Yz1iaXdzLHI9ck9wck5HZndFYmVSV2diTkVrcU8laHZZRHBXVWEyUmFUQ0FmdXhGSWxqKWhObEYkazAscD1kSHpiWmFwV0lrNGpVaE4rVXRlOXl0YWc5empmTUhnc3FtbWl6N0FuZFZRPQ==</response>",
    "sasl_plain": OPEN + "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>" + OPEN,
    "bind": OPEN + "<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    "<resource>balcony</resource></bind></iq><iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    "im": OPEN + "<presence/><iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"
    "<message to='romeo@example.net/orchard' type='chat' xml:lang='en' id='m1'><body>Art thou not Romeo, &amp; a Montague?</body>"
    "<thread>e0ffe42b28561960c6b12b944a092794b9683a38</thread></message> \n\t "
    "<presence><show>away</show><status>&lt;gone&gt; &#x263A; &#9731;</status><priority>5</priority></presence>"
    "<message to='juliet@example.com'><body><![CDATA[<b>cdata</b> ]]]></body></message></stream:stream>",
    "server_stream": OPEN_S + "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    "<mechanism>SCRAM-SHA-256</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
    "prefixes": OPEN + "<foo:message xmlns:foo='jabber:client' to='a@b'><x:y xmlns:x='urn:x' x:attr='1' "
    "b=\"q&quot;'&apos;\" c='tab&#9;nl&#10;cr&#13;'>t</x:y><z xmlns=''/></foo:message>",
    "unicode": OPEN + "<message to='ñame@exämple.com/ρεσ'><body>日本語 𝄞 ﬁ</body></message>",
    "billion_laughs": "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>"
    "<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;'>]><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams'><message><body>&lol3;</body></message>",
    "doctype_mid": OPEN + "<!DOCTYPE x [<!ENTITY a 'b'>]><message/>",
    "entity_ref": OPEN + "<message><body>&foo;</body></message>",
    "external_entity": "<?xml version='1.0'?><!DOCTYPE s [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>" + OPEN + "<message>&xxe;</message>",
    "comment_pi": OPEN + "<message><!-- hi --></message><?pi data?>",
    "deep": OPEN + "<message>" + "<a>" * 40 + "x" + "</a>" * 40 + "</message>",
    "many_attrs": OPEN + "<message " + " ".join("a%d='%d'" % (i, i) for i in range(30)) + "/>",
    "big_text": OPEN + "<message><body>" + "A" * 20000 + "</body></message>",
    "text_at_stream": OPEN + "junk<message/>",
    "unclosed": OPEN + "<message><body>hi</message>",
    "encoding_decl": "<?xml version='1.0' encoding='UTF-16'?>" + OPEN[21:] + "<message/>",
    "two_streams": OPEN + "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message>dropped</message>",
    "attr_amp": OPEN + "<message a='&amp;#38;' b='&#38;#38;' c='&lt;&gt;&amp;'/>",
    "stream_prefix_attr": OPEN + "<message stream:x='1'/>",
    "header_prefix": "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    "xmlns:e='urn:evil'><e:message e:a='1'/>",
}


def xml_seeds():
    for name, text in XML.items():
        b = text.encode("utf-8")
        write("xml_stream", name, b"\x80" + b)      # fed at once
        write("xml_stream", name + "_split", b"\x06" + b)  # 7-byte pieces


# ------------------------------------------------------------------------- jid
JIDS = [
    "juliet@example.com", "juliet@example.com/foo", "juliet@example.com/foo bar",
    "juliet@example.com/foo@bar", "foo\\20bar@example.com", "fussball@example.com",
    "fußball@example.com", "π@example.com", "Σ@example.com/foo", "king@example.com/♚",
    "example.com", "example.com/foobar", "a.example.com/b@example.net", "EXAMPLE.COM.",
    "[::1]", "user@[2001:db8::1]/r", "192.0.2.1", "user@192.0.2.1.", "ĴŮĽÎÉŤ@例え.テスト/Ŕ",
    "xn--bcher-kva.example", "user@xn--nxasmq6b.example", "ＪＵＬＩＥＴ@ｅｘａｍｐｌｅ．ｃｏｍ",
    "user@bücher。example", "\u0644\u0627@example.com", "a\u200db@example.com",
    "\"juliet\"@example.com", "foo bar@example.com", "juliet@", "@example.com", "juliet@example.com/",
    "user@-bad-.com", "user@exa mple.com", "\u2163@example.com", "l\u00b7l@example.com",
    "\u30fb\u30a2@example.com", "a" * 1024 + "@example.com", "user@" + "a" * 64 + ".com",
]


def jid_seeds():
    for i, j in enumerate(JIDS):
        write("jid", "jid%02d" % i, j)


# ----------------------------------------------------------------- sasl_plain
PLAIN = [b"\0tim\0tanstaaftanstaaf", b"Ursel\0Kurt\0xipj3plmq", b"\0juliet\0r0m30myr0m30",
         b"juliet@example.com\0juliet\0pw", b"\0\xc3\xa9l\xc3\xa8ve\0p\xc3\xa0ss", b"\0\0pw",
         b"\0user\0", b"a\0b\0c\0d", b"\0user\0\xff\xfe", b"no-nul-at-all"]


def plain_seeds():
    for i, m in enumerate(PLAIN):
        write("sasl_plain", "raw%02d" % i, b"\0" + m)
        write("sasl_plain", "b64_%02d" % i, b"\1" + base64.b64encode(m))
    for i, t in enumerate([b"=", b"AGp1bGlldAByMG0zMG15cjBtMzA", b"AGp1bGlldAByMG0zMG15cjBtMzA=\n",
                           b"QQ==", b"QR==", b"QUI=", b"QUJ=", b"====", b"Q===", b"AA=A"]):
        write("sasl_plain", "b64_bad%02d" % i, b"\1" + t)


# ---------------------------------------------------------------------- scram
def scram_proof(h, password, salt_b64, it, cf_bare, sf, final_wp):
    hn = "sha1" if h == 0 else "sha256"
    salted = hashlib.pbkdf2_hmac(hn, password, base64.b64decode(salt_b64), it)
    ck = hmac.new(salted, b"Client Key", hn).digest()
    sk = hashlib.new(hn, ck).digest()
    am = cf_bare + b"," + sf + b"," + final_wp
    sig = hmac.new(sk, am, hn).digest()
    return base64.b64encode(bytes(a ^ b for a, b in zip(ck, sig)))


SALT = [b"QSXCR+Q6sek8bf92", b"W22ZaJ0SNY7soEsUEjb6gQ=="]
SNONCE = [b"3rfcNHYJY1ZVvWVs7j", b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"]
CNONCE = [b"fyko+d2lbbFgONRv9qkxdawL", b"rOprNGfwEbeRWgbNEkqO"]


def scram_seeds():
    # RFC 5802 §5 (SHA-1) and RFC 7677 §3 (SHA-256), verbatim
    write("scram", "rfc5802", b"\0n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL\0"
          b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
    write("scram", "rfc7677", b"\1n,,n=user,r=rOprNGfwEbeRWgbNEkqO\0"
          b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    for h in (0, 1):
        cn, sn = CNONCE[h], SNONCE[h]
        sf = b"r=" + cn + sn + b",s=" + SALT[h] + b",i=4096"
        variants = [
            (b"n,,n=user,r=" + cn, b"c=biws,r=" + cn + sn),
            (b"y,,n=user,r=" + cn, b"c=eSws,r=" + cn + sn),
            (b"n,a=user@example.com,n=user,r=" + cn, b"c=" + base64.b64encode(b"n,a=user@example.com,") + b",r=" + cn + sn),
            (b"n,a=a=2Cb=3Dc,n=us=2Cer=3D,r=" + cn + b",x=ext", b"c=" + base64.b64encode(b"n,a=a=2Cb=3Dc,") + b",r=" + cn + sn + b",e=ext"),
            (b"n,,n=\xc3\xa9l\xc3\xa8ve,r=" + cn, b"c=biws,r=" + cn + sn),
        ]
        for i, (cf, wp) in enumerate(variants):
            bare = cf[cf.index(b",", cf.index(b",") + 1) + 1:]
            p = scram_proof(h, b"pencil", SALT[h], 4096, bare, sf, wp)
            write("scram", "h%d_ok%d" % (h, i), bytes([h]) + cf + b"\0" + wp + b",p=" + p)
            write("scram", "h%d_auto%d" % (h, i), bytes([h | 4]) + cf + b"\0" + wp)
            write("scram", "h%d_unknown%d" % (h, i), bytes([h | 2]) + cf + b"\0" + wp + b",p=" + p)
        bad = [b"p=tls-unique,,n=user,r=" + cn, b"n,,m=ext,n=user,r=" + cn, b"n,,n=,r=" + cn,
               b"n,,n=u=2X,r=" + cn, b"n,,n=user,r=a\x7fb", b"n,,n=user", b"n,,r=" + cn]
        for i, cf in enumerate(bad):
            write("scram", "h%d_badfirst%d" % (h, i), bytes([h]) + cf)
        finals = [b"c=biws,r=" + cn + sn, b"c=biws,r=" + cn + sn + b",p=AAAA", b"c=biws,r=" + cn + b"x,p=AA==",
                  b"c=bi ws,r=" + cn + sn + b",p=AA==", b"c=biws,p=AA==", b"c=biws,r=" + cn + sn + b",p=AA==,x=y"]
        for i, fin in enumerate(finals):
            write("scram", "h%d_badfinal%d" % (h, i), bytes([h]) + b"n,,n=user,r=" + cn + b"\0" + fin)


# ------------------------------------------------------------------ bus_frame
def varint(v):
    out = bytearray()
    while True:
        c = v & 0x7F
        v >>= 7
        out.append(c | (0x80 if v else 0))
        if not v:
            return bytes(out)


def s(b):
    return varint(len(b)) + b


def elem(name, ns="jabber:client", attrs=(), kids=()):
    out = b"E" + s(name.encode()) + s(ns.encode()) + varint(len(attrs))
    for k, v in attrs:
        out += s(k.encode()) + s(v.encode())
    out += varint(len(kids))
    for k in kids:
        out += k
    return out


def text(t):
    return b"T" + s(t.encode())


def frame(kind, flags=0, src=(1, 2, 3), dst=(0, 0, 0), frm=b"", to=b"", arg=0, payload=b""):
    body = struct.pack("<HHQ", *src) + struct.pack("<HHQ", *dst)
    body += s(frm) + s(to) + varint(((arg << 1) ^ (arg >> 63)) & (2**64 - 1)) + payload
    return struct.pack("<BBHI", 1, kind, flags, len(body)) + body


def bus_seeds():
    msg = elem("message", attrs=[("to", "romeo@example.net"), ("type", "chat"), ("xml:lang", "en")],
               kids=[elem("body", kids=[text("Wherefore art thou?")]), elem("x", "urn:x", kids=[text("a&b<c")])])
    pres = elem("presence", kids=[elem("show", kids=[text("away")])])
    iq = elem("iq", attrs=[("type", "result"), ("id", "b1")],
              kids=[elem("bind", "urn:ietf:params:xml:ns:xmpp-bind", kids=[elem("jid", "urn:ietf:params:xml:ns:xmpp-bind", kids=[text("juliet@example.com/balcony")])])])
    frames = {
        "c2s_message": frame(1, 0, frm=b"juliet@example.com/balcony", to=b"romeo@example.net", payload=msg),
        "route_presence": frame(2, 1, frm=b"juliet@example.com/balcony", to=b"romeo@example.net", payload=pres),
        "deliver_iq": frame(3, 2, dst=(0, 1, 0xdeadbeef), to=b"juliet@example.com/balcony", payload=iq),
        "session_open": frame(4, frm=b"juliet@example.com/balcony"),
        "session_close": frame(5, arg=-1),
        "kick": frame(6, dst=(0, 1, 7), arg=1),
        "bounce": frame(7, to=b"romeo@example.net", arg=-(2**63), payload=msg),
        "deep": frame(1, payload=(lambda: (lambda f: f(f, 70))(lambda f, n: elem("a", kids=[f(f, n - 1)]) if n else text("x")))()),
    }
    for name, f in frames.items():
        write("bus_frame", name, b"\0" + f)
        write("bus_frame", "build_" + name, b"\1" + f[1:2] + f[2:4] + f[8:20] + f[20:32] + bytes(8) + bytes([26, 17]) + f[33:])
    write("bus_frame", "stream_three", b"\0" + frames["c2s_message"] + frames["kick"] + frames["deliver_iq"][:20])
    write("bus_frame", "bad_version", b"\0\2\1\0\0\0\0\0\0")
    write("bus_frame", "huge_len", b"\0\1\1\0\0\xff\xff\xff\xff")
    write("bus_frame", "nonminimal_varint", b"\0" + frame(1)[:32] + b"\x80\x00\x00\x00")


# --------------------------------------------------------------------- config
CONFIGS = {
    "full": """; xmppd configuration
[server]
domain = example.com
log_level = debug
io_threads = 2
router_workers = 2
shards = 4096

[c2s]
address = 0.0.0.0
port = 5222
tls_port = 5223

[tls]
certificate = /etc/xmppd/cert.pem
key = /etc/xmppd/key.pem
required = yes

[limits]
max_stanza_bytes = 262144
max_depth = 64
max_attrs = 64
auth_timeout = 30
idle_timeout = 600
keepalive = 90
sasl_max_failures = 3
offline_max = 1000

[storage]
backend = sqlite
path = /var/lib/xmppd/xmppd.db
scram_iterations = 4096
""",
    "minimal": "[server]\ndomain = localhost\n",
    "empty": "",
    "comments": "# comment\n; other\n[server]\ndomain = a.example ; inline\n  log_level=warn\n",
    "unknown": "[server]\nnope = 1\n",
    "bad_int": "[limits]\nmax_depth = 12x\n",
    "out_of_range": "[limits]\nmax_depth = 100000\n",
    "bool_forms": "[tls]\nrequired = OFF\n",
    "no_section": "domain = x\n",
    "syntax": "[server\ndomain\n",
    "multiline": "[server]\ndomain = a\n  continued\n",
    "crlf_bom": "\ufeff[server]\r\ndomain = example.org\r\n",
    "long_value": "[storage]\npath = /" + "x" * 300 + "\n",
}


def config_seeds():
    for name, t in CONFIGS.items():
        write("config", name, t)


if __name__ == "__main__":
    xml_seeds()
    jid_seeds()
    plain_seeds()
    scram_seeds()
    bus_seeds()
    config_seeds()
