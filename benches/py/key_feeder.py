"""The rate-limit key feeder of benches/memory.sh (part 2; python3 with the `cryptography`
package, which benches/memory.sh checks for before part 2).

  key_feeder.py PORT CERTS KEYDIR ISS AUD PATH FIRST COUNT BATCH DEADLINE_S [SAME]

Feeds distinct client_ids c<FIRST..FIRST+COUNT-1> (one fresh EdDSA access token each, signed
with KEYDIR/as.key, kid keys-1) over one TLS connection to 127.0.0.1:PORT without a client
certificate (CERTS/ca.pem, server name localhost), BATCH pipelined GET PATH requests per
write. SAME=1: COUNT requests all with the token of client FIRST (the keying check).
Prints one JSON line: {"statuses": {status: count}, "reasons": {problem reason: count} for
the answers other than 200, "seconds": the feed's duration}. Exit 1 if the proxy closes the
connection or DEADLINE_S seconds pass first.
"""
import base64, json, socket, ssl, sys, time
from cryptography.hazmat.primitives import serialization
port, certs, keydir, iss, aud, path = sys.argv[1:7]
first, count, batch, deadline = (int(x) for x in sys.argv[7:11])
same = len(sys.argv) > 11 and sys.argv[11] == "1"
deadline += time.time()
key = serialization.load_pem_private_key(open(f"{keydir}/as.key", "rb").read(), None)
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "EdDSA", "typ": "at+jwt", "kid": "keys-1"}).encode())
now = int(time.time())
def token(i):
    # client_id: 43 characters, like an x5t#S256 thumbprint.
    c = (f'{{"iss":"{iss}","aud":"{aud}","sub":"psu","client_id":"c{i:042d}",'
         f'"scope":"accounts","iat":{now},"exp":{now + 7200},"jti":"j{i}"}}').encode()
    si = head + b"." + b64(c)
    return si + b"." + b64(key.sign(si))
ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
pre = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ".encode()
buf, statuses, reasons, done, t0 = b"", {}, {}, 0, time.time()

def read_one():
    """One response from buf (reading more as needed): its status and body."""
    global buf
    while b"\r\n\r\n" not in buf:
        more = s.recv(262144)
        if not more:
            raise SystemExit("the proxy closed the connection")
        buf += more
    head_end = buf.index(b"\r\n\r\n")
    lines = buf[:head_end].decode("latin-1").split("\r\n")
    status = lines[0].split()[1]
    hdrs = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
    buf = buf[head_end + 4:]
    if "content-length" in hdrs:
        n = int(hdrs["content-length"])
        while len(buf) < n:
            buf += s.recv(262144)
        body, buf = buf[:n], buf[n:]
    elif hdrs.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += s.recv(262144)
            size_line, rest = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += s.recv(262144)
            body += rest[:size]
            buf = rest[size + 2:]
            if size == 0:
                while not buf.startswith(b"\r\n") and b"\r\n\r\n" not in buf:
                    buf += s.recv(262144)
                buf = buf[2:] if buf.startswith(b"\r\n") else buf[buf.index(b"\r\n\r\n") + 4:]
                break
    else:
        body = b""
    return status, body

while done < count:
    if time.time() > deadline:
        raise SystemExit(f"deadline passed after {done} of {count} requests")
    n = min(batch, count - done)
    ids = [first] * n if same else range(first + done, first + done + n)
    s.sendall(b"".join(pre + token(i) + b"\r\n\r\n" for i in ids))
    for _ in range(n):
        st, body = read_one()
        statuses[st] = statuses.get(st, 0) + 1
        if st != "200":
            try:
                r = json.loads(body).get("reason", "(none)")
            except ValueError:
                r = "(not json)"
            reasons[r] = reasons.get(r, 0) + 1
    done += n
print(json.dumps({"statuses": statuses, "reasons": reasons, "seconds": round(time.time() - t0, 2)}))
