// A real authorization server for tests/oidc_provider.rs: oidc-provider (OpenID-certified) over
// HTTPS on a loopback port, with RFC 7662 introspection, resource indicators (RFC 8707) whose
// access tokens are opaque, DPoP (RFC 9449) and refresh tokens.
//
// Every token comes from the provider's own endpoints: the authorization code flow is driven
// through oidc-provider's built-in development interaction pages (GET /auth, the login form,
// the consent form, the redirect with the code), then the code is exchanged at /token, as a
// client would. Nothing is minted through the provider's models.
//
// Environment (paths written by the Rust test):
//   AS_CERT, AS_KEY     the server certificate chain and key (the dev certificate: localhost)
//   AS_CA               the CA that signed it (this script's own HTTPS client trusts it)
//   AS_RS_SECRET_FILE   the secret of the resource server's client `rs-client`
//   AS_RS_CLIENT_CERT   the client certificate of the resource server's client `rs-mtls`, which
//                       authenticates with it (tls_client_auth, RFC 8705 §2: registered by its
//                       subject DN)
//   AS_DPOP_KEY         a PKCS#8 P-256 key: the DPoP key of the public client `tpp-spa`
//   AS_CLIENT_CERT, AS_CLIENT_KEY
//                       the TLS client certificate of the public client `tpp-mtls`, whose
//                       tokens are certificate-bound (RFC 8705; the proxy's test client tpp1)
//   AS_AUDIENCE         our resource (the proxy's audience), AS_OTHER_AUDIENCE another one
//   AS_JWT_AUDIENCE     a resource whose access tokens are RFC 9068 JWTs (ES256)
//
// Prints one JSON line on stdout once ready: {port, issuer, tokens, introspection}, where
// `introspection` is what the endpoint answers `rs-client` for each token (asked as the proxy
// asks: token_type_hint=access_token). Then each line `rotate` on stdin rotates the access
// token signing key as an authorization server does, without a restart: a new ES256 key is
// published first in the key set and signs from then on, the previous one stays published, and
// the one before it is withdrawn; it answers with one JSON line {rotated, kid, jwt_access} (a
// fresh client-credentials JWT from the new key). Exits when stdin closes.

import * as crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as https from 'node:https';

import Provider, { errors } from 'oidc-provider';

function env(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`as.js: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

const ca = readFileSync(env('AS_CA'));
const RS = env('AS_AUDIENCE');
const OTHER = env('AS_OTHER_AUDIENCE');
const JWT = env('AS_JWT_AUDIENCE');
const rsSecret = readFileSync(env('AS_RS_SECRET_FILE'), 'utf8').trim();
const rsSubject = new crypto.X509Certificate(readFileSync(env('AS_RS_CLIENT_CERT'))).subject;
const dpopKey = crypto.createPrivateKey(readFileSync(env('AS_DPOP_KEY')));
const clientTls = { cert: readFileSync(env('AS_CLIENT_CERT')), key: readFileSync(env('AS_CLIENT_KEY')) };
const clientSubject = new crypto.X509Certificate(clientTls.cert).subject;
// The key `tpp-pkj` signs its client assertions with (private_key_jwt).
const pkjKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const appSecret = crypto.randomBytes(24).toString('hex');
const REDIRECT = 'https://tpp.example/cb';
const b64url = (b) => Buffer.from(b).toString('base64url');

// A client certificate is asked for but not required: only the token requests of `tpp-mtls`
// present one, and only one the test CA signed binds a token (getCertificate below).
const server = https.createServer({
  cert: readFileSync(env('AS_CERT')),
  key: readFileSync(env('AS_KEY')),
  ca,
  requestCert: true,
  rejectUnauthorized: false,
});
await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
const { port } = server.address();
const issuer = `https://localhost:${port}`;

const resources = {
  [RS]: { audience: RS, scope: 'accounts payments', accessTokenFormat: 'opaque', accessTokenTTL: 600 },
  [OTHER]: { audience: OTHER, scope: 'accounts', accessTokenFormat: 'opaque', accessTokenTTL: 600 },
  [JWT]: {
    audience: JWT, scope: 'accounts payments', accessTokenFormat: 'jwt', accessTokenTTL: 600, jwt: { sign: { alg: 'ES256' } },
  },
};

// The provider's signing keys: RS256 for ID tokens (the OpenID default), ES256 for access
// tokens. `es` is newest first; the first signs.
function privateJwk(kid, alg, key) {
  return {
    ...key.export({ format: 'jwk' }), kid, alg, use: 'sig',
  };
}
const rsaKey = privateJwk('rs-1', 'RS256', crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey);
let generation = 1;
const newEc = () => privateJwk(`es-${generation}`, 'ES256', crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
let es = [newEc()];

// The verified client certificate of this request, if any.
function peerCertificate(ctx) {
  const socket = ctx.req.socket;
  const peer = socket.getPeerCertificate?.();
  if (!socket.authorized || !peer?.raw) return undefined;
  return new crypto.X509Certificate(peer.raw);
}

const makeProvider = () => new Provider(issuer, {
  jwks: { keys: [...es, rsaKey] },
  clientAuthMethods: ['client_secret_basic', 'none', 'tls_client_auth', 'private_key_jwt'],
  clients: [
    // The resource server (the proxy): it only introspects.
    {
      client_id: 'rs-client',
      client_secret: rsSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
    // The resource server again, authenticating by its client certificate alone.
    {
      client_id: 'rs-mtls',
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_subject_dn: rsSubject,
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
    // A TPP authenticating with its certificate (tls_client_auth, RFC 8705 §2) whose tokens are
    // bound to it, and which asks for RFC 9396 authorization details.
    {
      client_id: 'tpp-rar',
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_subject_dn: clientSubject,
      tls_client_certificate_bound_access_tokens: true,
      authorization_details_types: ['account_information', 'payment_initiation'],
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
    // A client authenticating with a signed assertion (private_key_jwt, RFC 7523).
    {
      client_id: 'tpp-pkj',
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [{ ...pkjKey.publicKey.export({ format: 'jwk' }), kid: 'pkj-1', alg: 'ES256', use: 'sig' }] },
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
    // A confidential client: its refresh tokens are not sender-constrained.
    {
      client_id: 'tpp-app',
      client_secret: appSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      redirect_uris: [REDIRECT],
    },
    // A public client using DPoP: its access and refresh tokens are DPoP-bound (cnf.jkt).
    {
      client_id: 'tpp-spa',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [REDIRECT],
      dpop_bound_access_tokens: true,
    },
    // A public client whose tokens are bound to its TLS client certificate (cnf.x5t#S256).
    {
      client_id: 'tpp-mtls',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [REDIRECT],
      tls_client_certificate_bound_access_tokens: true,
    },
  ],
  scopes: ['openid', 'offline_access', 'accounts', 'payments'],
  findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    // RFC 9396: the details a client asks for at the token endpoint are what its access token
    // carries (a real server would apply its consent policy here).
    richAuthorizationRequests: {
      enabled: true,
      types: {
        account_information: { validate() {} },
        payment_initiation: { validate() {} },
      },
      authorizationDetailsForAccessToken: (ctx, token, source) => (source
        ? source.rar : JSON.parse(ctx.oidc.params.authorization_details)),
      authorizationDetailsForGrantSource: (ctx) => JSON.parse(ctx.oidc.params.authorization_details),
      authorizationDetailsForIntrospection: (ctx, token) => token.rar,
    },
    introspection: { enabled: true },
    clientCredentials: { enabled: true },
    dPoP: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      getCertificate: peerCertificate,
      certificateAuthorized: (ctx) => peerCertificate(ctx) !== undefined,
      certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_subject_dn'
        && peerCertificate(ctx)?.subject === expected,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RS,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        const info = resources[resource];
        if (!info) throw new errors.InvalidTarget();
        return info;
      },
    },
  },
});
// The development interactions and the default introspection policy print warnings; they go
// to stderr (the test's log file).
let provider = makeProvider();
let handler = provider.callback();
server.on('request', (req, res) => handler(req, res));

// ---------------------------------------------------------------------------------------------
// A client: HTTPS trusting only the test CA, manual redirects, a cookie jar per flow.

function request(method, url, {
  headers = {}, form, cookies, tls,
} = {}) {
  const u = new URL(url);
  const body = form ? new URLSearchParams(form).toString() : undefined;
  const h = { ...headers };
  if (body) h['content-type'] = 'application/x-www-form-urlencoded';
  if (cookies?.size) h.cookie = [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  return new Promise((resolve, reject) => {
    const req = https.request(u, {
      method, headers: h, ca, ...tls,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        for (const c of res.headers['set-cookie'] || []) {
          const [pair] = c.split(';');
          const i = pair.indexOf('=');
          cookies?.set(pair.slice(0, i), pair.slice(i + 1));
        }
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

function basic(id, secret) {
  const enc = encodeURIComponent;
  return `Basic ${Buffer.from(`${enc(id)}:${enc(secret)}`).toString('base64')}`;
}

// A client assertion for private_key_jwt (RFC 7523 §3), signed by pkjKey.
function clientAssertion(clientId) {
  const header = { typ: 'JWT', alg: 'ES256', kid: 'pkj-1' };
  const now = Math.floor(Date.now() / 1000);
  const payload = {
    iss: clientId, sub: clientId, aud: issuer, jti: crypto.randomUUID(), iat: now, exp: now + 60,
  };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  const sig = crypto.sign('sha256', Buffer.from(input), { key: pkjKey.privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${b64url(sig)}`;
}

function dpopProof(method, htu) {
  const { kty, crv, x, y } = crypto.createPublicKey(dpopKey).export({ format: 'jwk' });
  const header = { typ: 'dpop+jwt', alg: 'ES256', jwk: { kty, crv, x, y } };
  const payload = {
    jti: crypto.randomUUID(), htm: method, htu, iat: Math.floor(Date.now() / 1000),
  };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  const sig = crypto.sign('sha256', Buffer.from(input), { key: dpopKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${b64url(sig)}`;
}

async function token(form, { auth, dpop, tls } = {}) {
  const headers = {};
  if (auth) headers.authorization = auth;
  if (dpop) headers.dpop = dpopProof('POST', `${issuer}/token`);
  const r = await request('POST', `${issuer}/token`, { headers, form, tls });
  if (r.status !== 200) throw new Error(`token endpoint ${r.status}: ${r.body}`);
  return JSON.parse(r.body);
}

// The authorization code flow through the dev interaction pages: login as psu-1, consent,
// then the code at the token endpoint. Refresh tokens need offline_access, which oidc-provider
// keeps only with prompt=consent.
async function codeFlow(clientId, {
  auth, dpop, tls, resource = RS,
}) {
  const verifier = b64url(crypto.randomBytes(32));
  const cookies = new Map();
  let url = `${issuer}/auth?${new URLSearchParams({
    client_id: clientId,
    response_type: 'code',
    redirect_uri: REDIRECT,
    scope: 'openid offline_access accounts payments',
    prompt: 'consent',
    resource,
    state: crypto.randomUUID(),
    code_challenge: b64url(crypto.createHash('sha256').update(verifier).digest()),
    code_challenge_method: 'S256',
  })}`;
  for (let step = 0; step < 12; step += 1) {
    let r = await request('GET', url, { cookies });
    if (r.status === 200 && new URL(url).pathname.startsWith('/interaction/')) {
      const prompt = /name="prompt" value="(\w+)"/.exec(r.body)?.[1];
      const form = prompt === 'login' ? { prompt, login: 'psu-1', password: 'any' } : { prompt };
      r = await request('POST', url, { form, cookies });
    }
    if (![302, 303].includes(r.status)) throw new Error(`${url}: ${r.status} ${r.body.slice(0, 500)}`);
    const next = new URL(r.headers.location, url);
    if (next.href.startsWith(REDIRECT)) {
      const code = next.searchParams.get('code');
      if (!code) throw new Error(`no code: ${next.href}`);
      return token({
        grant_type: 'authorization_code', code, redirect_uri: REDIRECT, code_verifier: verifier, resource,
        ...(auth ? {} : { client_id: clientId }),
      }, { auth, dpop, tls });
    }
    url = next.href;
  }
  throw new Error('the authorization flow did not end');
}

async function introspect(t) {
  const r = await request('POST', `${issuer}/token/introspection`, {
    headers: { authorization: basic('rs-client', rsSecret), accept: 'application/json' },
    form: { token: t, token_type_hint: 'access_token' },
  });
  if (r.status !== 200) throw new Error(`introspection ${r.status}: ${r.body}`);
  return JSON.parse(r.body);
}

try {
  const appAuth = basic('tpp-app', appSecret);
  const app = await codeFlow('tpp-app', { auth: appAuth });
  const spa = await codeFlow('tpp-spa', { dpop: true });
  const mtls = await codeFlow('tpp-mtls', { tls: clientTls });
  const other = await token(
    { grant_type: 'client_credentials', resource: OTHER, scope: 'accounts' },
    { auth: appAuth },
  );
  // RFC 9068 JWT access tokens: client credentials (unbound), and through the code flow bound
  // to a DPoP key and to the client certificate.
  const jwtApp = await token(
    { grant_type: 'client_credentials', resource: JWT, scope: 'accounts payments' },
    { auth: appAuth },
  );
  const jwtSpare = await token(
    { grant_type: 'client_credentials', resource: JWT, scope: 'accounts' },
    { auth: appAuth },
  );
  const jwtSpa = await codeFlow('tpp-spa', { dpop: true, resource: JWT });
  const jwtRar = await token({
    grant_type: 'client_credentials',
    client_id: 'tpp-rar',
    resource: JWT,
    scope: 'accounts',
    authorization_details: JSON.stringify([
      { type: 'account_information', accounts: ['acc-1'] },
      // Two payment grants: each binds its debtor, creditor and amount together.
      {
        type: 'payment_initiation',
        actions: ['initiate', 'status'],
        debtorAccount: { iban: 'DE02100100109307118603' },
        creditorAccount: { iban: 'DE89370400440532013000' },
        instructedAmount: { currency: 'EUR', amount: '123.50' },
      },
      {
        type: 'payment_initiation',
        actions: ['initiate'],
        debtorAccount: { iban: 'DE02100100109307118603' },
        creditorAccount: { iban: 'GB33BUKB20201555555555' },
        instructedAmount: { currency: 'EUR', amount: '5.00' },
      },
    ]),
  }, { tls: clientTls });
  const jwtPkj = await token({
    grant_type: 'client_credentials',
    resource: JWT,
    scope: 'accounts',
    client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
    client_assertion: clientAssertion('tpp-pkj'),
  });
  const jwtMtls = await codeFlow('tpp-mtls', { tls: clientTls, resource: JWT });
  const tokens = {
    access: app.access_token,
    refresh: app.refresh_token,
    dpop_access: spa.access_token,
    dpop_refresh: spa.refresh_token,
    mtls_access: mtls.access_token,
    mtls_refresh: mtls.refresh_token,
    other_audience: other.access_token,
  };
  const jwts = {
    jwt_access: jwtApp.access_token,
    jwt_spare: jwtSpare.access_token,
    jwt_rar: jwtRar.access_token,
    jwt_pkj: jwtPkj.access_token,
    jwt_dpop_access: jwtSpa.access_token,
    jwt_mtls_access: jwtMtls.access_token,
  };
  for (const [k, v] of Object.entries({ ...tokens, ...jwts })) {
    if (typeof v !== 'string') throw new Error(`no ${k} from the token endpoint`);
  }
  const introspection = {};
  for (const [k, v] of Object.entries(tokens)) introspection[k] = await introspect(v);
  Object.assign(tokens, jwts);
  const token_types = {
    access: app.token_type,
    dpop_access: spa.token_type,
    mtls_access: mtls.token_type,
    other_audience: other.token_type,
  };
  console.log(JSON.stringify({
    port, issuer, tokens, token_types, introspection,
  }));
} catch (e) {
  console.error(`as.js: ${e.stack || e}`);
  process.exit(1);
}

// Key rotation on request: publish a new key first (it signs from now on), keep the previous
// one published, withdraw the one before. Grants and clients live in memory per provider, so
// the new provider answers client credentials at once.
async function rotate() {
  generation += 1;
  es = [newEc(), es[0]];
  provider = makeProvider();
  handler = provider.callback();
  const t = await token(
    { grant_type: 'client_credentials', resource: JWT, scope: 'accounts payments' },
    { auth: basic('tpp-app', appSecret) },
  );
  console.log(JSON.stringify({ rotated: generation, kid: es[0].kid, jwt_access: t.access_token }));
}

let pending = '';
process.stdin.on('data', (chunk) => {
  pending += chunk;
  let i;
  while ((i = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, i).trim();
    pending = pending.slice(i + 1);
    if (line === 'rotate') {
      rotate().catch((e) => { console.error(`as.js: rotate: ${e.stack || e}`); process.exit(1); });
    }
  }
});
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
