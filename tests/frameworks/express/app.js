// The Express 5 oracle of the differential harness: Express's own router and query parser,
// express.json() for bodies, and the method-override middleware as its README shows it (the
// X-HTTP-Method-Override header, and `_method` in the query string). Echoes as JSON what it
// parsed: method (after override), req.path, the handler that matched, and the ids it bound.
//
// Prints "PORT <n>" on stdout once listening on 127.0.0.1:<n>; exits when stdin closes (the
// test process that started it is gone).
'use strict';
const express = require('express');
const methodOverride = require('method-override');

const app = express();
// Requests the app saw, by X-Fapi-Interaction-Id (the harness asks per request).
const seen = new Map();

app.get('/__seen/:id', (req, res) => res.type('text/plain').send(String(seen.get(req.params.id) || 0)));
app.use((req, res, next) => {
  const id = req.get('x-fapi-interaction-id') || '';
  seen.set(id, (seen.get(id) || 0) + 1);
  next();
});
app.use(methodOverride('X-HTTP-Method-Override'));
app.use(methodOverride('_method'));
app.use(express.json({ type: () => true }));

function echo(req, res, handler, ids) {
  res.status(handler === 'none' ? 404 : 200).json({
    framework: 'express',
    method: req.method,
    path: req.path,
    handler,
    ids,
  });
}

// Every value a binder produced (Express leaves arrays and objects in req.query as they are).
function values(name, from, v) {
  if (v === undefined || v === null) return [];
  if (Array.isArray(v)) return v.flatMap((x) => values(name, from, x));
  if (typeof v === 'object') return [{ name, from, value: JSON.stringify(v) }];
  return [{ name, from, value: String(v) }];
}

app.get('/accounts', (req, res) => echo(req, res, 'accounts.list', values('accountId', 'query', req.query.accountId)));
app.get('/accounts/:AccountId', (req, res) => echo(req, res, 'accounts.get', values('AccountId', 'path', req.params.AccountId)));
app.delete('/accounts/:AccountId', (req, res) => echo(req, res, 'accounts.delete', values('AccountId', 'path', req.params.AccountId)));
app.post('/payments', (req, res) => {
  const data = req.body && req.body.Data;
  echo(req, res, 'payments.create', values('ConsentId', 'body', data && data.ConsentId));
});
app.get('/payments/:PaymentId', (req, res) => echo(req, res, 'payments.get', values('PaymentId', 'path', req.params.PaymentId)));
app.get('/payments/:PaymentId/details', (req, res) => echo(req, res, 'payments.details', values('PaymentId', 'path', req.params.PaymentId)));
app.get('/details', (req, res) => echo(req, res, 'details.internal', []));
app.get('/statements', (req, res) => echo(req, res, 'statements.list', values('x-account-id', 'header', req.get('x-account-id'))));
app.get('/consents/:ConsentId', (req, res) => echo(req, res, 'consents.get', values('ConsentId', 'path', req.params.ConsentId)));
app.delete('/consents/:ConsentId', (req, res) => echo(req, res, 'consents.delete', values('ConsentId', 'path', req.params.ConsentId)));
app.use((req, res) => echo(req, res, 'none', []));
// A body that is not JSON: Express answers 400 without running a handler.
app.use((err, req, res, next) => res.status(err.status || 500).json({ framework: 'express', error: String(err.type || err.message) }));

const server = app.listen(0, '127.0.0.1', () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
process.stdin.on('data', () => {});
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
