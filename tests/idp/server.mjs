// A real OpenID Connect provider (oidc-provider, OpenID Certified) for the interoperability tests.
//
//   node server.mjs CONFIG.json
//
// CONFIG.json (written by tests/e2e/harness.py):
//   port        listen on 127.0.0.1:port; the issuer is http://127.0.0.1:port
//   jwks_file   the provider's private signing keys (a JWK Set). oidc-provider signs with the
//               first key of the algorithm and publishes all of them, so a rotation is a restart
//               with [new, old] (new signs, old still verifies), then with [new] alone.
//   clients     oidc-provider client metadata (client_id, client_secret, scope, ...)
//   resources   {resource indicator: {format: "jwt" | "opaque", scope, ttl}}: what
//               client_credentials issues for `resource=<indicator>` (the audience is the indicator)
//   claims      {client_id: {claim: value}}: extra claims put into that client's access tokens
//               (and into introspection answers), e.g. roles or groups
//
// Test-only endpoint: GET /__test/counts answers {path: requests} since this process started, so
// a test can count JWKS fetches and introspection calls.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;
const jwks = JSON.parse(readFileSync(config.jwks_file, 'utf8'));

function resourceServer(indicator) {
  const resource = config.resources[indicator];
  if (resource === undefined) throw new errors.InvalidTarget();
  return {
    audience: indicator,
    scope: resource.scope,
    accessTokenTTL: resource.ttl,
    accessTokenFormat: resource.format,
    ...(resource.format === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
  };
}

// Every scope a resource offers; a client's `scope` metadata then limits what it may ask for.
const scopes = new Set(Object.values(config.resources).flatMap((r) => r.scope.split(' ')));

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks,
  scopes: ['openid', ...scopes],
  cookies: { keys: [randomBytes(32).toString('base64url')] }, // no interactive flows here
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined, // the client must name the API it wants a token for
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => resourceServer(indicator),
    },
  },
  extraTokenClaims: (ctx, token) => config.claims[token.clientId],
  ttl: {
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
  },
});

const counts = {};
provider.use(async (ctx, next) => {
  if (ctx.path === '/__test/counts') {
    ctx.body = counts;
    return;
  }
  counts[ctx.path] = (counts[ctx.path] ?? 0) + 1;
  await next();
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  const kids = jwks.keys.map((key) => key.kid).join(',');
  console.log(`ready ${issuer} kids=${kids}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
