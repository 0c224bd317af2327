"""The Flask/Werkzeug oracle of the differential harness.

Werkzeug's router and query parser, Flask's JSON body (request.get_json), and the method
override middleware of Flask's documentation ("Adding HTTP Method Overrides": a POST with
X-HTTP-Method-Override becomes that method). Echoes as JSON what it parsed: method (after
override), request.path, the handler (endpoint) that matched, and the ids it bound.

Prints "PORT <n>" on stdout once listening on 127.0.0.1:<n>; exits when stdin closes (the
test process that started it is gone).
"""
import json
import os
import sys
import threading

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server


class HTTPMethodOverrideMiddleware:
    """As in Flask's documentation (patterns/methodoverrides)."""

    allowed_methods = frozenset(["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"])
    bodyless_methods = frozenset(["GET", "HEAD", "OPTIONS", "DELETE"])

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if method in self.allowed_methods:
            environ["REQUEST_METHOD"] = method
        if method in self.bodyless_methods:
            environ["CONTENT_LENGTH"] = "0"
        return self.app(environ, start_response)


app = Flask(__name__)
# Requests the app saw, by X-Fapi-Interaction-Id (the harness asks per request).
SEEN = {}
LOCK = threading.Lock()


@app.before_request
def counted():
    if not request.path.startswith("/__seen/"):
        key = request.headers.get("x-fapi-interaction-id", "")
        with LOCK:
            SEEN[key] = SEEN.get(key, 0) + 1


def echo(handler, ids, status=200):
    return jsonify(framework="flask", method=request.method, path=request.path,
                   handler=handler, ids=ids), status


def ids(name, src, values):
    return [{"name": name, "from": src, "value": str(v)} for v in values if v is not None]


@app.get("/__seen/<key>")
def seen(key):
    with LOCK:
        return str(SEEN.get(key, 0))


@app.get("/accounts")
def accounts_list():
    return echo("accounts.list", ids("accountId", "query", [request.args.get("accountId")]))


@app.get("/accounts/<AccountId>")
def accounts_get(AccountId):
    return echo("accounts.get", ids("AccountId", "path", [AccountId]))


@app.delete("/accounts/<AccountId>")
def accounts_delete(AccountId):
    return echo("accounts.delete", ids("AccountId", "path", [AccountId]))


@app.post("/payments")
def payments_create():
    doc = request.get_json(force=True, silent=True)
    data = doc.get("Data") if isinstance(doc, dict) else None
    cid = data.get("ConsentId") if isinstance(data, dict) else None
    return echo("payments.create", ids("ConsentId", "body", [cid]))


@app.get("/payments/<PaymentId>")
def payments_get(PaymentId):
    return echo("payments.get", ids("PaymentId", "path", [PaymentId]))


@app.get("/payments/<PaymentId>/details")
def payments_details(PaymentId):
    return echo("payments.details", ids("PaymentId", "path", [PaymentId]))


@app.get("/details")
def details_internal():
    return echo("details.internal", [])


@app.get("/statements")
def statements_list():
    return echo("statements.list", ids("x-account-id", "header", request.headers.getlist("x-account-id")))


@app.get("/consents/<ConsentId>")
def consents_get(ConsentId):
    return echo("consents.get", ids("ConsentId", "path", [ConsentId]))


@app.delete("/consents/<ConsentId>")
def consents_delete(ConsentId):
    return echo("consents.delete", ids("ConsentId", "path", [ConsentId]))


@app.errorhandler(HTTPException)
def unrouted(e):
    # No handler ran (404, 405, or a redirect Werkzeug's router chose, e.g. for //).
    return echo("none", [], e.code or 500)


def main():
    app.wsgi_app = HTTPMethodOverrideMiddleware(app.wsgi_app)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"PORT {srv.server_port}", flush=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    main()
