// Benchmark peer: panva's node-oidc-provider (npm "oidc-provider", pinned 9.13.3 in
// package.json + package-lock.json), set up to match idp's benchmark configuration as far
// as it can, so the two can be measured side by side.
//
//   npm ci                      # or: npm install
//   PORT=3000 node server.mjs   # prints "listening on <issuer>" when ready; SIGTERM stops it
//
// Environment: PORT (default 3000), ISSUER (default http://localhost:PORT), HOST (the
// address to bind, default 127.0.0.1: a bench peer only ever listens on loopback).
//
// What is the same as idp:
//   - one RS256 signing key (RSA 2048, generated at start), ID tokens signed with RS256;
//   - opaque (random, server-side) access and refresh tokens; access tokens live 900 s,
//     codes 60 s, ID tokens 3600 s, refresh tokens 14 days idle (a new 14 days per rotation)
//     and 30 days absolute (the Grant's lifetime, like idp's refresh_token_absolute_ttl;
//     but the peer counts it from the consent that created the Grant, idp from each code);
//     client_credentials tokens 900 s;
//   - PKCE required for every client, S256 only (9.x supports nothing but S256);
//   - refresh tokens rotate on every use, and a rotated-out token presented again is
//     refused AND revokes what was issued with it (see "family" below);
//   - refresh tokens are issued to a client with the refresh_token grant without the
//     offline_access scope, and tokens do not die with the browser session;
//   - the same client: "bench" / client_secret_basic, redirect http://localhost:9999/callback;
//   - ID tokens carry the granted profile/email claims (conformIdTokenClaims: false), like
//     idp's, so the signed payloads are of similar size. (idp's also carry azp, at_hash,
//     auth_time, acr, amr, sid and updated_at, which the peer's do not: the peer's ID token is
//     a little smaller. The peer repeats the nonce in ID tokens from a refresh; idp does not.)
//
// What differs, and matters when reading the numbers:
//   - STORAGE: the peer keeps everything (sessions, interactions, codes, tokens, grants) in
//     process memory (oidc-provider's default in-memory LRU adapter). idp writes sessions,
//     consents, codes, access and refresh tokens to durable SQL (tables idp_sessions,
//     consents, authorization_codes, access_tokens, refresh_tokens) and keeps login
//     transactions and rate-limit windows in its state store (memory or Redis). Every
//     token/code/userinfo/introspection call is a hash-map hit for the peer and one or more
//     SQL round trips (with a commit where it writes) for idp. Nothing survives a peer restart,
//     and the peer cannot be scaled to more than one process as configured.
//   - LOGIN: the peer's interaction handler signs the fixed user in at once: no login form,
//     no password, no Argon2id hash (idp's login verifies a password with Argon2id, which is
//     deliberately slow and CPU-bound), no CSRF token, no rate limiting, no audit rows.
//     Compare login-heavy flows only with that in mind (or exclude login from the timing).
//   - CONSENT: the peer needs a consent interaction (a second redirect through
//     /interaction/:uid) the first time a session meets the client; it then remembers the
//     Grant in the session, so a later code flow in the same session goes straight through.
//   - REVOCATION "FAMILY": idp revokes per authorization-code family (the tokens that descend
//     from one code). The peer revokes per Grant, and one Grant is shared by every code flow
//     of that session and client: refresh-token reuse (or revoking a refresh token) kills the
//     tokens of all those flows, not only the one the token came from.
//   - TOKEN STORAGE FORM: idp stores keyed digests of tokens; the peer stores token records
//     keyed by the token id (in memory). Neither hashes with anything slow.
//   - RUNTIME: single Node.js process (one event loop, one core for JS); run idp with a
//     worker count that is stated next to the numbers. oidc-provider 9.x prints "Unsupported
//     runtime. Use Node.js v22.x" on Node 20: it runs and passes check.py on Node 20, but
//     upstream only supports 22+; say which Node ran the numbers.
//   - COOKIES: peer session cookie "_session" (+ "_session.sig", signed with cookies.keys;
//     path /, a new session id after login and again after consent); interaction cookies
//     "_interaction" (path /interaction/:uid) and "_interaction_resume" (path /auth/:uid),
//     each with its ".sig". idp's differ.
//   - No rate limiting, no client IP handling, no audit log in the peer.
//   - client_credentials scope: see the comment at `scopes` below.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

import { flushPeerKeys, redisAdapter } from './redis_adapter.mjs';

const PORT = Number.parseInt(process.env.PORT || '3000', 10);
const HOST = process.env.HOST || '127.0.0.1';
const ISSUER = process.env.ISSUER || `http://localhost:${PORT}`;
// REDIS_URL set: every session, interaction, code, token and grant lives in Redis
// (redis_adapter.mjs), the provider's production shape; unset: its in-memory adapter.
const REDIS_URL = process.env.REDIS_URL || '';

const FIXED_SUB = 'fixed-user-sub';
const FIXED_ACCOUNT = {
  sub: FIXED_SUB,
  preferred_username: 'alice',
  name: 'Alice',
  email: 'alice@example.com',
  email_verified: false, // idp says false too (it does not verify addresses)
};
const CONSENT_SCOPE = 'openid profile email offline_access';

// One RSA 2048 key, generated at start, exported as a private JWK for the provider's jwks.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `bench-${randomBytes(6).toString('hex')}`,
  alg: 'RS256',
  use: 'sig',
};

const configuration = {
  ...(REDIS_URL ? { adapter: redisAdapter(REDIS_URL) } : {}),
  clients: [
    {
      client_id: 'bench',
      client_secret: 'bench-secret-0123456789abcdefghijklmnopqrstuvwxyz',
      token_endpoint_auth_method: 'client_secret_basic',
      redirect_uris: ['http://localhost:9999/callback'],
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      scope: 'openid profile email offline_access',
    },
  ],

  jwks: { keys: [signingJwk] },

  // Signs the session/interaction cookies (koa "keygrip"); fresh each start, which is fine
  // because the in-memory sessions die with the process anyway.
  cookies: { keys: [randomBytes(32).toString('base64url')] },

  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
  },

  // client_credentials: the token endpoint only checks the requested scopes against the
  // client's "scope" allow-list (for scopes the provider knows statically: the ones below plus
  // those named in `claims`). So with no resource indicators configured, scope=profile (or
  // "profile email") on grant_type=client_credentials returns 200 with an opaque access
  // token and echoes the scope, as idp does. A scope unknown to the provider (e.g. "api")
  // is not rejected: it is silently dropped (200, token without "scope"), and so is a request
  // with no scope at all. No resourceIndicators: both sides issue opaque access tokens,
  // not JWTs.
  scopes: ['openid', 'offline_access', 'profile', 'email'],

  // idp puts the scope's profile/email claims into the ID token as well as userinfo; the
  // default (true) would keep them out of the ID token whenever an access token is issued.
  conformIdTokenClaims: false,

  // Advertise and serve what idp does: the code flow only, no PAR, no DPoP, the same client
  // assertion algorithms. (Keeps the discovery document and request surface comparable.)
  responseTypes: ['code'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['RS256', 'ES256', 'PS256'],
  },

  features: {
    devInteractions: { enabled: false },
    pushedAuthorizationRequests: { enabled: false },
    dPoP: { enabled: false },
    // Explicit policies (the defaults do the same and only print a notice): a confidential
    // client may introspect any token; a client may revoke only its own tokens (a foreign
    // token is ignored with 200, as RFC 7009 allows).
    introspection: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => client.clientAuthMethod !== 'none' || token.clientId === client.clientId,
    },
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
    },
    clientCredentials: { enabled: true },
  },

  pkce: {
    // Required for every client (idp requires it for every client too). 9.x only knows S256.
    required: () => true,
  },

  // Rotate on every use, like idp (the default rotates only in some cases).
  rotateRefreshToken: true,

  // Issue a refresh token whenever the client may use the refresh_token grant, without
  // needing offline_access (oidc-provider also drops offline_access from an authorization
  // request that lacks prompt=consent, so this is the only way to match idp).
  issueRefreshToken: async (_ctx, client, _code) => client.grantTypeAllowed('refresh_token'),

  // Tokens are not tied to the browser session (default: they are, without offline_access),
  // matching idp where a token lives by its own TTLs.
  expiresWithSession: async () => false,

  ttl: {
    AccessToken: 900,
    AuthorizationCode: 60,
    ClientCredentials: 900,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 60 * 60,
    Grant: 30 * 24 * 60 * 60,
    Session: 14 * 24 * 60 * 60,
    Interaction: 600,
  },

  async findAccount(_ctx, id) {
    if (id !== FIXED_SUB) return undefined;
    return {
      accountId: FIXED_SUB,
      async claims() {
        return { ...FIXED_ACCOUNT };
      },
    };
  },

  // default interactions.url is `/interaction/${uid}`; spelled out for the reader.
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },

  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
};

if (REDIS_URL) await flushPeerKeys(REDIS_URL);
const provider = new Provider(ISSUER, configuration);
provider.proxy = false;

// Minimal interaction handler on the provider's own koa app (no express): GET or POST
// /interaction/:uid. A "login" prompt signs the fixed user in; a "consent" prompt creates
// (or extends) a Grant with all the client's OIDC scopes. Each answers 303 back to
// /auth/:uid, which either finishes with a redirect to the client or opens the next prompt.
const INTERACTION_PATH = /^\/interaction\/([A-Za-z0-9_-]+)$/;

provider.use(async (ctx, next) => {
  const match = INTERACTION_PATH.exec(ctx.path);
  if (!match || (ctx.method !== 'GET' && ctx.method !== 'POST')) {
    await next();
    return;
  }

  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: err.message || String(err) };
    return;
  }
  if (details.uid !== match[1]) {
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: 'interaction uid mismatch' };
    return;
  }

  const { prompt, params, session } = details;
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: FIXED_SUB } };
  } else if (prompt.name === 'consent') {
    const accountId = session?.accountId ?? FIXED_SUB;
    let grant;
    if (details.grantId) grant = await provider.Grant.find(details.grantId);
    if (!grant) grant = new provider.Grant({ accountId, clientId: params.client_id });
    grant.addOIDCScope(CONSENT_SCOPE);
    const grantId = await grant.save();
    result = { consent: { grantId } };
  } else {
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: `unsupported prompt ${prompt.name}` };
    return;
  }

  // interactionFinished writes the 303 to the raw response itself; tell koa not to respond.
  ctx.respond = false;
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
});

const server = provider.listen(PORT, HOST, () => {
  console.log(`listening on ${ISSUER}`);
});

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.error(`${signal}: closing`);
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => {
    server.closeAllConnections();
    process.exit(0);
  }, 3000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
