/**
 * Version discovery as Cinder answers it (vbs.md §10): GET / lists v2 and v3 (300 Multiple
 * Choices); GET /v2 and /v3 describe one version. cinderclient and openstacksdk call GET / first;
 * keystoneauth reads GET /v3 and accepts the same document for identity v3.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { baseUrl, type ApiServices } from './server.ts';

/** The newest Cinder microversion whose features Haven implements (with_count, name~: 3.45). */
export const MAX_MICROVERSION = '3.45';

function versionDoc(base: string, v: 'v2' | 'v3') {
  const mediaTypes = [{ base: 'application/json', type: 'application/vnd.openstack.volume+json;version=1' }];
  const links = [
    { rel: 'describedby', href: 'https://docs.openstack.org/', type: 'text/html' },
    { rel: 'self', href: `${base}/${v}/` },
  ];
  return v === 'v2'
    ? { id: 'v2.0', status: 'SUPPORTED', version: '', min_version: '', updated: '2014-06-28T12:20:21Z', links, 'media-types': mediaTypes }
    : { id: 'v3.0', status: 'CURRENT', version: MAX_MICROVERSION, min_version: '3.0', updated: '2023-02-08T12:20:21Z', links, 'media-types': mediaTypes };
}

/** Version discovery is public: clients read it before they have a token. */
const PUBLIC = { envelope: 'cinder' as const, auth: 'none' as const };

export function registerVersionRoutes(app: FastifyInstance, s: ApiServices): void {
  const base = (req: FastifyRequest) => baseUrl(s.config, req);
  app.get('/', { config: PUBLIC, schema: { hide: true } }, async (req, reply) => reply.code(300).send({ versions: [versionDoc(base(req), 'v2'), versionDoc(base(req), 'v3')] }));
  app.get('/v2', { config: PUBLIC, schema: { hide: true } }, async (req) => ({ versions: [versionDoc(base(req), 'v2')] }));
  app.get('/v3', { config: PUBLIC, schema: { hide: true } }, async (req) => ({ versions: [versionDoc(base(req), 'v3')] }));
  // Haven has no images; the empty image service only lets clients that build an image client start.
  app.get('/image', { config: PUBLIC, schema: { hide: true } }, async (req, reply) => reply.code(300).send({ versions: [{ id: 'v2.0', status: 'CURRENT', links: [{ rel: 'self', href: `${base(req)}/image/v2/` }] }] }));
  app.get('/image/v2/images', { config: { envelope: 'cinder', auth: 'token' }, schema: { hide: true } }, async () => ({ images: [], first: '/v2/images', schema: '/v2/schemas/images' }));
}
