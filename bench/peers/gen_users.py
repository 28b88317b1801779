#!/usr/bin/python3
"""Bulk account and roster provisioning for the peer servers (Prosody, ejabberd).

Accounts are user{first}..user{first+N-1}@DOMAIN with one password. Credentials are
SCRAM-SHA-1 (salt, iteration count, StoredKey, ServerKey) computed here with hashlib,
once, and cached; both peers get the same kind of hashed storage our server uses
(never the plain password), with the same iteration count (4096 by default, which is
also ours and ejabberd's default).

Rosters (--roster K): users in consecutive groups of K+1 are all mutual contacts with
subscription 'both' (the same layout `xmppctl populate user N PW --roster K` makes).

  gen_users.py creds    --users N --password PW [--iterations I] --out FILE
  gen_users.py prosody  --creds FILE --data DIR --domain D [--roster K]
  gen_users.py ejabberd --creds FILE --out FILE.etf --domain D [--roster K]
"""
import argparse
import base64
import hashlib
import hmac
import multiprocessing
import os
import sys


def scram_sha1(args):
    user, password, iterations = args
    salt = os.urandom(12).hex()          # printable, so it is safe in every store format
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(), iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha1).digest()
    stored_key = hashlib.sha1(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha1).digest()
    return f"{user}\t{salt}\t{iterations}\t{stored_key.hex()}\t{server_key.hex()}\n"


def read_creds(path):
    with open(path) as f:
        for line in f:
            user, salt, it, sk, svk = line.rstrip("\n").split("\t")
            yield user, salt, int(it), sk, svk


def groups(users, k):
    """Consecutive groups of k+1 users."""
    size = k + 1
    for i in range(0, len(users), size):
        yield users[i:i + size]


def cmd_creds(a):
    users = [a.user_fmt % i for i in range(a.first, a.first + a.users)]
    tmp = a.out + ".tmp"
    with multiprocessing.Pool(os.cpu_count() or 2) as pool, open(tmp, "w") as f:
        for line in pool.imap(scram_sha1, ((u, a.password, a.iterations) for u in users), 256):
            f.write(line)
    os.replace(tmp, a.out)


def lua_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_prosody(a):
    host = a.domain  # datamanager escapes non-alphanumerics; "localhost" needs none
    enc = lambda s: "".join(c if c.isalnum() else "%%%02x" % ord(c) for c in s)
    acc_dir = os.path.join(a.data, enc(host), "accounts")
    ros_dir = os.path.join(a.data, enc(host), "roster")
    os.makedirs(acc_dir, exist_ok=True)
    users = []
    for user, salt, it, sk, svk in read_creds(a.creds):
        users.append(user)
        with open(os.path.join(acc_dir, enc(user) + ".dat"), "w") as f:
            f.write("return {\n\t[\"iteration_count\"] = %d;\n\t[\"salt\"] = %s;\n"
                    "\t[\"server_key\"] = %s;\n\t[\"stored_key\"] = %s;\n};\n"
                    % (it, lua_str(salt), lua_str(svk), lua_str(sk)))
    if a.roster > 0:
        os.makedirs(ros_dir, exist_ok=True)
        for g in groups(users, a.roster):
            for u in g:
                with open(os.path.join(ros_dir, enc(u) + ".dat"), "w") as f:
                    f.write("return {\n\t[false] = { [\"version\"] = 1; [\"pending\"] = {}; };\n")
                    for c in g:
                        if c != u:
                            f.write("\t[%s] = { [\"subscription\"] = \"both\"; [\"groups\"] = {}; };\n"
                                    % lua_str(f"{c}@{host}"))
                    f.write("};\n")


# Erlang external term format (enough of it for mnesia records): the whole record list is
# written as one term, which binary_to_term/1 reads in well under a second (file:consult
# on 200,000 text terms takes ~25 s).
class Atom(str):
    pass


def etf(t, out):
    if isinstance(t, Atom):
        b = t.encode()
        out += bytes([119, len(b)]) + b
    elif isinstance(t, bytes):
        out += b"m" + len(t).to_bytes(4, "big") + t
    elif isinstance(t, str):
        etf(t.encode(), out)
    elif isinstance(t, int):
        out += bytes([97, t]) if 0 <= t < 256 else b"b" + t.to_bytes(4, "big", signed=True)
    elif isinstance(t, tuple):
        out += bytes([104, len(t)])
        for e in t:
            etf(e, out)
    elif isinstance(t, list):
        if t:
            out += b"l" + len(t).to_bytes(4, "big")
            for e in t:
                etf(e, out)
        out += b"j"
    else:
        raise TypeError(t)


def cmd_ejabberd(a):
    d = a.domain
    users, recs = [], []
    b64 = lambda raw: base64.b64encode(raw).decode()
    for user, salt, it, sk, svk in read_creds(a.creds):
        users.append(user)
        # ejabberd 23.01 keeps the #scram{} keys and the salt base64-encoded in mnesia
        recs.append((Atom("passwd"), (user, d),
                     (Atom("scram"), b64(bytes.fromhex(sk)), b64(bytes.fromhex(svk)),
                      b64(salt.encode()), Atom("sha"), it)))
    if a.roster > 0:
        for g in groups(users, a.roster):
            for u in g:
                for c in g:
                    if c != u:
                        # #roster{usj, us, jid, name, subscription, ask, groups, askmessage, xs}
                        recs.append((Atom("roster"), (u, d, (c, d, "")), (u, d), (c, d, ""), "",
                                     Atom("both"), Atom("none"), [], "", []))
    out = bytearray(b"\x83")
    etf(recs, out)
    with open(a.out, "wb") as f:
        f.write(out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("creds")
    c.add_argument("--users", type=int, required=True)
    c.add_argument("--first", type=int, default=1)
    c.add_argument("--user-fmt", default="user%d")
    c.add_argument("--password", required=True)
    c.add_argument("--iterations", type=int, default=4096)
    c.add_argument("--out", required=True)
    for name in ("prosody", "ejabberd"):
        s = sub.add_parser(name)
        s.add_argument("--creds", required=True)
        s.add_argument("--domain", default="localhost")
        s.add_argument("--roster", type=int, default=0)
        if name == "prosody":
            s.add_argument("--data", required=True)
        else:
            s.add_argument("--out", required=True)
    a = p.parse_args()
    {"creds": cmd_creds, "prosody": cmd_prosody, "ejabberd": cmd_ejabberd}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
