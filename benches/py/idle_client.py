"""The idle-connection client of benches/memory.sh (part 1; python3, standard library only).

  idle_client.py PORT N CERTS PATH READY_FILE STOP_FILE DEADLINE_S

Opens N mTLS keep-alive connections to 127.0.0.1:PORT (server name localhost, CERTS/ca.pem,
TPP One's certificate CERTS/tpp1.pem + tpp1.key) and sends one GET PATH on each, reading the
answer. Once all are answered it writes their statuses ("200:N", space-separated per status)
to READY_FILE, then holds every connection idle until STOP_FILE exists (or DEADLINE_S seconds
have passed), and writes to STOP_FILE.result how many of them the proxy had closed meanwhile.
Prints nothing; exit 1 if a connection closes before its answer.
"""
import os, socket, ssl, sys, time
port, n, certs, path, ready, stop, deadline = sys.argv[1:8]
n, deadline = int(n), time.time() + float(deadline)
ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
ctx.load_cert_chain(f"{certs}/tpp1.pem", f"{certs}/tpp1.key")
req = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
conns, statuses = [], {}
for i in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"connection {i} closed before an answer")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = lines[0].split()[1]
    length = next(int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    statuses[status] = statuses.get(status, 0) + 1
    conns.append(s)
with open(ready, "w") as f:
    f.write(" ".join(f"{k}:{v}" for k, v in statuses.items()))
while not os.path.exists(stop) and time.time() < deadline:
    time.sleep(0.1)
# Still open? A closed connection reads b"" at once.
for s in conns:
    s.setblocking(False)
closed = 0
for s in conns:
    try:
        if s.recv(1) == b"":
            closed += 1
    except (ssl.SSLWantReadError, BlockingIOError):
        pass
    except OSError:
        closed += 1
with open(stop + ".result", "w") as f:
    f.write(str(closed))
