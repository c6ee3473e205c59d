/**
 * Servers, a Nova-compatible subset (/v2.1): create with block_device_mapping_v2 volume entries
 * (boot_index 0 is the system disk), list, detail, show, delete, and volume attachments. Enough for
 * CSBS clients and for operators to describe which disks make up a VM.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type, type Static } from 'typebox';
import type { Server, ServerVolume } from '../../domain/server.ts';
import { ApiError } from '../errors.ts';
import { baseUrl, type ApiServices } from '../server.ts';
import { PathParam, ProjectParams, typed } from '../typed-routes.ts';
import { Link, NoBody } from '../wire/schemas.ts';

const CFG = { envelope: 'cinder' as const, auth: 'project' as const };
const novaTime = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

function serverLinks(base: string, s: Server) {
  return [
    { rel: 'self', href: `${base}/v2.1/${s.projectId}/servers/${s.id}` },
    { rel: 'bookmark', href: `${base}/${s.projectId}/servers/${s.id}` },
  ];
}

function serverJson(base: string, s: Server, attached: ServerVolume[]) {
  return {
    id: s.id,
    name: s.name,
    status: s.status,
    tenant_id: s.projectId,
    user_id: null,
    metadata: s.metadata,
    created: novaTime(s.createdAt),
    updated: novaTime(s.updatedAt),
    hostId: '',
    addresses: {},
    image: '',
    flavor: {},
    accessIPv4: '',
    accessIPv6: '',
    'OS-EXT-AZ:availability_zone': s.availabilityZone,
    'OS-EXT-STS:vm_state': 'active',
    'OS-EXT-STS:power_state': 1,
    'os-extended-volumes:volumes_attached': attached.map((a) => ({ id: a.volumeId, delete_on_termination: false })),
    links: serverLinks(base, s),
  };
}

const attachmentJson = (a: ServerVolume) => ({ id: a.volumeId, serverId: a.serverId, volumeId: a.volumeId, device: a.device });

// What the server operations answer (OpenAPI; the tests check real answers against these).
const ServerSummary = Type.Object({ id: Type.String(), name: Type.String(), links: Type.Array(Link) });
const ServerJson = Type.Object({
  id: Type.String(), name: Type.String(), status: Type.String(), tenant_id: Type.String(), user_id: Type.Null(), metadata: Type.Record(Type.String(), Type.String()),
  created: Type.String(), updated: Type.String(), hostId: Type.String(), addresses: Type.Object({}), image: Type.String(), flavor: Type.Object({}),
  accessIPv4: Type.String(), accessIPv6: Type.String(), 'OS-EXT-AZ:availability_zone': Type.String(), 'OS-EXT-STS:vm_state': Type.String(), 'OS-EXT-STS:power_state': Type.Integer(),
  'os-extended-volumes:volumes_attached': Type.Array(Type.Object({ id: Type.String(), delete_on_termination: Type.Boolean() })), links: Type.Array(Link),
});
const AttachmentJson = Type.Object({ id: Type.String(), serverId: Type.String(), volumeId: Type.String(), device: Type.Union([Type.String(), Type.Null()]) });

const CreateBody = Type.Object({
  server: Type.Object({
    name: Type.String({ minLength: 1, maxLength: 255 }),
    metadata: Type.Optional(Type.Record(Type.String({ maxLength: 255 }), Type.String({ maxLength: 255 }))),
    block_device_mapping_v2: Type.Optional(Type.Array(Type.Object({
      source_type: Type.Literal('volume'),
      uuid: Type.String({ minLength: 1 }),
      boot_index: Type.Optional(Type.Union([Type.Integer({ minimum: -1 }), Type.String(), Type.Null()])),
      destination_type: Type.Optional(Type.Literal('volume')),
      delete_on_termination: Type.Optional(Type.Boolean()),
      device_name: Type.Optional(Type.String()),
    }), { maxItems: 24 })),
    flavorRef: Type.Optional(Type.String()),
    imageRef: Type.Optional(Type.String()),
  }),
});
const ListQuery = Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000 })), offset: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })), name: Type.Optional(Type.String()) });
const ServerParams = Type.Object({ projectId: PathParam, serverId: PathParam });
const AttachmentParams = Type.Object({ projectId: PathParam, serverId: PathParam, volumeId: PathParam });

export function registerServerRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  const base = (req: FastifyRequest) => baseUrl(s.config, req);
  const pid = (req: { params: { projectId: string } }) => req.params.projectId;
  const sid = (req: { params: { serverId: string } }) => req.params.serverId;
  const tags = ['servers'];

  app.post('/v2.1/:projectId/servers', { config: CFG, schema: { params: ProjectParams, body: CreateBody, tags, summary: 'Create a server from existing volumes', response: { 202: Type.Object({ server: Type.Object({ id: Type.String(), links: Type.Array(Link), 'OS-DCF:diskConfig': Type.String(), security_groups: Type.Array(Type.Unknown()) }) }) } } }, async (req, reply) => {
    const b = req.body.server;
    const volumes = (b.block_device_mapping_v2 ?? []).map((m) => {
      const bi = m.boot_index === undefined || m.boot_index === null || m.boot_index === '' ? null : Number(m.boot_index);
      if (bi !== null && !Number.isInteger(bi)) throw new ApiError(400, `Invalid input received: boot_index ${String(m.boot_index)} is not an integer.`);
      return { volumeId: m.uuid, bootIndex: bi === null || bi < 0 ? null : bi };
    });
    const server = await s.servers.createServer(pid(req), { name: b.name, metadata: b.metadata, volumes });
    return reply.code(202).send({ server: { id: server.id, links: serverLinks(base(req), server), 'OS-DCF:diskConfig': 'MANUAL', security_groups: [] } });
  });
  const rows = (req: FastifyRequest & { params: { projectId: string }; query: Static<typeof ListQuery> }) =>
    s.servers.listServers(pid(req), { name: req.query.name, limit: req.query.limit ?? 1000, offset: req.query.offset ?? 0 });
  app.get('/v2.1/:projectId/servers', { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List servers', response: { 200: Type.Object({ servers: Type.Array(ServerSummary) }) } } }, async (req) => ({
    servers: (await rows(req)).map((r) => ({ id: r.id, name: r.name, links: serverLinks(base(req), r) })),
  }));
  app.get('/v2.1/:projectId/servers/detail', { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List servers with details', response: { 200: Type.Object({ servers: Type.Array(ServerJson) }) } } }, async (req) => {
    const servers = [];
    for (const r of await rows(req)) servers.push(serverJson(base(req), r, await s.servers.attachments(r.id)));
    return { servers };
  });
  app.get('/v2.1/:projectId/servers/:serverId', { config: CFG, schema: { params: ServerParams, tags, summary: 'Show a server', response: { 200: Type.Object({ server: ServerJson }) } } }, async (req) => {
    const server = await s.servers.getServer(pid(req), sid(req));
    return { server: serverJson(base(req), server, await s.servers.attachments(server.id)) };
  });
  app.delete('/v2.1/:projectId/servers/:serverId', { config: CFG, schema: { params: ServerParams, tags, summary: 'Delete a server (its volumes are detached, not deleted)', response: { 204: NoBody } } }, async (req, reply) => {
    await s.servers.deleteServer(pid(req), sid(req));
    return reply.code(204).send();
  });

  app.get('/v2.1/:projectId/servers/:serverId/os-volume_attachments', { config: CFG, schema: { params: ServerParams, tags, summary: 'List volume attachments', response: { 200: Type.Object({ volumeAttachments: Type.Array(AttachmentJson) }) } } }, async (req) => {
    const server = await s.servers.getServer(pid(req), sid(req));
    return { volumeAttachments: (await s.servers.attachments(server.id)).map(attachmentJson) };
  });
  const AttachBody = Type.Object({ volumeAttachment: Type.Object({ volumeId: Type.String({ minLength: 1 }), device: Type.Optional(Type.Union([Type.String({ pattern: '^/dev/[a-z]+$' }), Type.Null()])) }) });
  app.post('/v2.1/:projectId/servers/:serverId/os-volume_attachments', { config: CFG, schema: { params: ServerParams, body: AttachBody, tags, summary: 'Attach a volume', response: { 200: Type.Object({ volumeAttachment: AttachmentJson }) } } }, async (req) => {
    const b = req.body.volumeAttachment;
    return { volumeAttachment: attachmentJson(await s.servers.attachVolume(pid(req), sid(req), b.volumeId, b.device ?? undefined)) };
  });
  app.delete('/v2.1/:projectId/servers/:serverId/os-volume_attachments/:volumeId', { config: CFG, schema: { params: AttachmentParams, tags, summary: 'Detach a volume', response: { 202: NoBody } } }, async (req, reply) => {
    await s.servers.detachVolume(pid(req), sid(req), req.params.volumeId);
    return reply.code(202).send();
  });
}
