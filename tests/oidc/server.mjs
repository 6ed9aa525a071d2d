// A real OAuth 2.0 authorization server (oidc-provider from npm) for sipward's end-to-end test.
// Clients "alice" and "bob" get access tokens by the client-credentials grant; each token carries a
// `username` claim (the client id) in its introspection response. "sipward-rs" is the resource
// server that introspects (client_secret_basic). On start it mints tokens, revokes one, and prints
// one JSON line: {"port", "alice", "bob", "revoked"}. It listens on 127.0.0.1 only.
import Provider from 'oidc-provider';

const users = ['alice', 'bob'];
const clients = [
  { client_id: 'sipward-rs', client_secret: 'sipward-rs-secret' },
  ...users.map((u) => ({ client_id: u, client_secret: `${u}-secret` })),
].map((c) => ({ ...c, grant_types: ['client_credentials'], response_types: [], redirect_uris: [], token_endpoint_auth_method: 'client_secret_basic' }));

const provider = new Provider('http://127.0.0.1', {
  clients,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async (ctx, client) => client.clientId === 'sipward-rs' || client.clientId === ctx.oidc.entities.AccessToken?.clientId },
    revocation: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
  },
  ttl: { ClientCredentials: 600 },
  extraTokenClaims: async (ctx, token) => ({ username: token.clientId }),
});

const server = provider.listen(0, '127.0.0.1', async () => {
  const base = `http://127.0.0.1:${server.address().port}`;
  const basic = (id) => `Basic ${Buffer.from(`${id}:${id}-secret`).toString('base64')}`;
  const mint = async (id) => {
    const r = await fetch(`${base}/token`, {
      method: 'POST',
      headers: { authorization: basic(id), 'content-type': 'application/x-www-form-urlencoded' },
      body: 'grant_type=client_credentials',
    });
    const body = await r.json();
    if (!body.access_token) throw new Error(`minting for ${id} failed: ${JSON.stringify(body)}`);
    return body.access_token;
  };
  const out = { port: server.address().port, alice: await mint('alice'), bob: await mint('bob'), revoked: await mint('alice') };
  const rv = await fetch(`${base}/token/revocation`, {
    method: 'POST',
    headers: { authorization: basic('alice'), 'content-type': 'application/x-www-form-urlencoded' },
    body: `token=${out.revoked}`,
  });
  if (rv.status !== 200) throw new Error(`revocation failed: ${rv.status}`);
  console.log(JSON.stringify(out));
});
