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

  app.post('/v2.1/:projectId/servers', { config: CFG, schema: { params: ProjectParams, body: CreateBody, tags, summary: 'Create a server from existing volumes' } }, async (req, reply) => {
    const b = req.body.server;
    const volumes = (b.block_device_mapping_v2 ?? []).map((m) => {
      const bi = m.boot_index === undefined || m.boot_index === null || m.boot_index === '' ? null : Number(m.boot_index);
      if (bi !== null && !Number.isInteger(bi)) throw new ApiError(400, `Invalid input received: boot_index ${String(m.boot_index)} is not an integer.`);
      return { volumeId: m.uuid, bootIndex: bi === null || bi < 0 ? null : bi };
    });
    const server = await s.servers.createServer(pid(req), { name: b.name, metadata: b.metadata, volumes });
    return reply.code(202).send({ server: { id: server.id, links: serverLinks(base(req), server), 'OS-DCF:diskConfig': 'MANUAL', security_groups: [] } });
  });
  const list = async (req: FastifyRequest & { params: { projectId: string }; query: Static<typeof ListQuery> }, detail: boolean) => {
    const q = req.query;
    const rows = await s.servers.listServers(pid(req), { name: q.name, limit: q.limit ?? 1000, offset: q.offset ?? 0 });
    const out = [];
    for (const r of rows) out.push(detail ? serverJson(base(req), r, await s.servers.attachments(r.id)) : { id: r.id, name: r.name, links: serverLinks(base(req), r) });
    return { servers: out };
  };
  app.get('/v2.1/:projectId/servers', { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List servers' } }, async (req) => list(req, false));
  app.get('/v2.1/:projectId/servers/detail', { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List servers with details' } }, async (req) => list(req, true));
  app.get('/v2.1/:projectId/servers/:serverId', { config: CFG, schema: { params: ServerParams, tags, summary: 'Show a server' } }, async (req) => {
    const server = await s.servers.getServer(pid(req), sid(req));
    return { server: serverJson(base(req), server, await s.servers.attachments(server.id)) };
  });
  app.delete('/v2.1/:projectId/servers/:serverId', { config: CFG, schema: { params: ServerParams, tags, summary: 'Delete a server (its volumes are detached, not deleted)' } }, async (req, reply) => {
    await s.servers.deleteServer(pid(req), sid(req));
    return reply.code(204).send();
  });

  app.get('/v2.1/:projectId/servers/:serverId/os-volume_attachments', { config: CFG, schema: { params: ServerParams, tags, summary: 'List volume attachments' } }, async (req) => {
    const server = await s.servers.getServer(pid(req), sid(req));
    return { volumeAttachments: (await s.servers.attachments(server.id)).map(attachmentJson) };
  });
  const AttachBody = Type.Object({ volumeAttachment: Type.Object({ volumeId: Type.String({ minLength: 1 }), device: Type.Optional(Type.Union([Type.String({ pattern: '^/dev/[a-z]+$' }), Type.Null()])) }) });
  app.post('/v2.1/:projectId/servers/:serverId/os-volume_attachments', { config: CFG, schema: { params: ServerParams, body: AttachBody, tags, summary: 'Attach a volume' } }, async (req) => {
    const b = req.body.volumeAttachment;
    return { volumeAttachment: attachmentJson(await s.servers.attachVolume(pid(req), sid(req), b.volumeId, b.device ?? undefined)) };
  });
  app.delete('/v2.1/:projectId/servers/:serverId/os-volume_attachments/:volumeId', { config: CFG, schema: { params: AttachmentParams, tags, summary: 'Detach a volume' } }, async (req, reply) => {
    await s.servers.detachVolume(pid(req), sid(req), req.params.volumeId);
    return reply.code(202).send();
  });
}
