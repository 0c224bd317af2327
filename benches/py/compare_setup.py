"""The steps of benches/compare_haproxy.sh before anything is measured (python3; standard
library only, except `crafted-tokens`, which needs the `cryptography` package -- the shell
script runs it only when `import cryptography` works).

  compare_setup.py jwk-pem JWKS PEM
      reads the JWKS of the dev authorization server (dev-token keygen), writes its ES256 key
      'as-1' to PEM as a P-256 SubjectPublicKeyInfo (what HAProxy's jwt_verify takes).
      Prints nothing.
  compare_setup.py crafted-tokens AS_KEY CERT ISSUER AUDIENCE
      prints token cases that `dev-token` cannot produce (expired, not yet valid, another
      issuer, typ, kid, alg, ...), signed with the AS key and bound to CERT, as TSV lines:
      HAProxy's required answer, portcullis's required answer (* = recorded only), what, token.
  compare_setup.py fill-template TEMPLATE KEY=VALUE...
      prints TEMPLATE (benches/haproxy-token.cfg.tmpl) after a blank line, with every
      @@KEY@@ replaced by VALUE; exit 1 if a placeholder is left unfilled.
  compare_setup.py negotiated-tls AUDIT_LOG
      prints "tls=... cipher=... http=..." of the first request record of a portcullis audit
      log (nothing if it has none or cannot be read).
  compare_setup.py audit-rate-limited AUDIT_LOG
      exit 0 if the audit log has an allowed request with the client rate-limit class applied
      (and says so on stderr), 1 otherwise.
"""
import base64
import hashlib
import json
import re
import sys
import time


def jwk_pem(jwks, pem):
    keys = [k for k in json.load(open(jwks))["keys"] if k.get("kid") == "as-1"]
    assert len(keys) == 1, "no single key as-1 in the JWKS"
    k = keys[0]
    assert (k["kty"], k["crv"]) == ("EC", "P-256"), k
    b = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    x, y = b(k["x"]), b(k["y"])
    assert len(x) == len(y) == 32
    # A fixed DER prefix, then 04 || x || y.
    der = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + b"\x04" + x + y
    b64 = base64.b64encode(der).decode()
    with open(pem, "w") as f:
        f.write("-----BEGIN PUBLIC KEY-----\n")
        f.write("".join(b64[i:i + 64] + "\n" for i in range(0, len(b64), 64)))
        f.write("-----END PUBLIC KEY-----\n")


def crafted_tokens(key_path, cert_path, iss, aud):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    key = serialization.load_pem_private_key(open(key_path, "rb").read(), None)
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    der = x509.load_pem_x509_certificate(open(cert_path, "rb").read()).public_bytes(
        serialization.Encoding.DER)
    now = int(time.time())

    def token(header=None, **claims):
        h = {"alg": "ES256", "typ": "at+jwt", "kid": "as-1", **(header or {})}
        c = {"iss": iss, "aud": aud, "exp": now + 86400, "nbf": now, "iat": now,
             "scope": "accounts payments", "client_id": "tpp-one", "sub": "psu-1",
             "jti": f"crafted-{now}", "cnf": {"x5t#S256": b64(hashlib.sha256(der).digest())},
             **claims}
        c = {k: v for k, v in c.items() if v is not None}
        si = (b64(json.dumps(h).encode()) + "." + b64(json.dumps(c).encode())).encode()
        r, s = utils.decode_dss_signature(key.sign(si, ec.ECDSA(hashes.SHA256())))
        return si.decode() + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    for want_ha, want_pc, what, t in [
        ("200", "200", "typ application/at+jwt", token({"typ": "application/at+jwt"})),
        ("401", "401", "expired 31 s ago (beyond the 30 s skew)", token(exp=now - 31)),
        ("200", "200", "expired 10 s ago (within the 30 s skew)", token(exp=now - 10)),
        ("401", "401", "no exp", token(exp=None)),
        ("401", "401", "nbf 60 s ahead", token(nbf=now + 60)),
        ("401", "401", "iat 60 s ahead", token(iat=now + 60)),
        ("401", "401", "another issuer", token(iss="https://other-as.bank.example")),
        ("401", "401", "typ JWT", token({"typ": "JWT"})),
        ("401", "401", "kid as-2", token({"kid": "as-2"})),
        ("401", "401", "alg ES384 in the header (ES256 signature)", token({"alg": "ES384"})),
        ("*", "*", "aud an array holding the audience", token(aud=[aud, "https://x.example"])),
        ("*", "*", "a jku header", token({"jku": "https://evil.example/jwks"})),
        ("*", "*", "nbf an object", token(nbf={"a": 1})),
    ]:
        print(f"{want_ha}\t{want_pc}\t{what}\t{t}")


def fill_template(template, *assignments):
    text = open(template).read()
    for kv in assignments:
        k, v = kv.split("=", 1)
        text = text.replace(f"@@{k}@@", v)
    left = set(re.findall(r"@@[A-Z_]+@@", text))
    if left:
        sys.exit(f"unfilled placeholders in {template}: {sorted(left)}")
    sys.stdout.write("\n" + text)


def negotiated_tls(audit_log):
    # A request record names its connection ("conn": N) whose record came before it in the
    # file; a log written with audit.connection_records: false has the members inline.
    conns = {}
    try:
        for line in open(audit_log):
            r = json.loads(line)
            if r.get("kind") == "connection":
                conns[r["conn_id"]] = r
            elif r.get("kind") == "request":
                c = conns.get(r.get("conn"), r)
                print(f"tls={c['tls_version']} cipher={c['cipher']} http={r['http_version']}")
                break
    except OSError:
        pass


def audit_rate_limited(audit_log):
    for line in open(audit_log):
        r = json.loads(line)
        if (r.get("kind") == "request" and r.get("decision") == "allow"
                and (r.get("rate_limit") or {}).get("scope") == "client"):
            print(f"  audit: allowed with rate_limit {r['rate_limit']}, route {r['route_id']}",
                  file=sys.stderr)
            sys.exit(0)
    sys.exit(1)


if __name__ == "__main__":
    {"jwk-pem": jwk_pem, "crafted-tokens": crafted_tokens, "fill-template": fill_template,
     "negotiated-tls": negotiated_tls,
     "audit-rate-limited": audit_rate_limited}[sys.argv[1]](*sys.argv[2:])
