/**
 * Volume inventory, Cinder-compatible subset (/v2 and /v3): volumes, os-volume-manage (admin) and
 * snapshots. Enough for openstackclient and SDKs to create, find, adopt and delete the disks Haven
 * backs up.
 */
import type { VolumeFormat } from '../../domain/model.ts';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type, type Static } from 'typebox';
import { MAX_VOLUME_GB } from '../../services/volume-service.ts';
import { ApiError } from '../errors.ts';
import { baseUrl, type ApiServices } from '../server.ts';
import { PathParam, ProjectParams, typed } from '../typed-routes.ts';
import { links, snapshotJson, volumeJson, type ApiVersion } from '../wire/cinder-wire.ts';
import { Link, NoBody as Accepted, NullableString as NullStr } from '../wire/schemas.ts';

const CFG = { envelope: 'cinder' as const, auth: 'project' as const };
const Metadata = Type.Record(Type.String({ maxLength: 255 }), Type.String({ maxLength: 255 }));
const NullableText = (max: number) => Type.Optional(Type.Union([Type.String({ maxLength: max }), Type.Null()]));
const ListQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000 })),
  // Bounded: SQLite cannot bind a larger OFFSET as an integer (an unbounded value was a 500).
  offset: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
  marker: Type.Optional(Type.String()),
  name: Type.Optional(Type.String()),
  status: Type.Optional(Type.String()),
  all_tenants: Type.Optional(Type.String()),
  volume_id: Type.Optional(Type.String()),
});
type ListQuery = Static<typeof ListQuery>;
const VolumeParams = Type.Object({ projectId: PathParam, volumeId: PathParam });
const SnapshotParams = Type.Object({ projectId: PathParam, snapshotId: PathParam });

// What the volume and snapshot operations answer (OpenAPI; the tests check real answers against these).
const Str = Type.String();
const VolumeJson = Type.Object({
  id: Str, name: NullStr, description: NullStr, status: Type.String({ description: 'creating, available, in-use, backing-up, restoring-backup, deleting, error, error_restoring, …' }),
  size: Type.Integer({ description: 'GB' }), availability_zone: Str, created_at: NullStr, updated_at: NullStr, bootable: Type.Union([Type.Literal('true'), Type.Literal('false')]),
  encrypted: Type.Boolean(), multiattach: Type.Boolean(), attachments: Type.Array(Type.Unknown()), metadata: Type.Record(Str, Str),
  volume_type: Type.Union([Type.Literal('haven'), Type.Literal('qcow2')]), snapshot_id: Type.Null(), source_volid: Type.Null(), consistencygroup_id: Type.Null(),
  replication_status: Str, user_id: Type.Null(), 'os-vol-tenant-attr:tenant_id': Str, 'os-vol-host-attr:host': Str, links: Type.Array(Link),
});
const SnapshotJson = Type.Object({
  id: Str, name: NullStr, description: NullStr, volume_id: Str, status: Str, size: Type.Integer(), created_at: NullStr, updated_at: NullStr,
  metadata: Type.Record(Str, Str), 'os-extended-snapshot-attributes:project_id': Str, 'os-extended-snapshot-attributes:progress': Str,
});

const CreateVolume = Type.Object({
  volume: Type.Object({
    size: Type.Integer({ minimum: 1, maximum: MAX_VOLUME_GB }),
    name: NullableText(255),
    description: NullableText(255),
    metadata: Type.Optional(Metadata),
    snapshot_id: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    availability_zone: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    volume_type: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    bootable: Type.Optional(Type.Boolean()),
  }),
});
const ManageVolume = Type.Object({
  volume: Type.Object({
    // qmp_socket and qmp_node (Haven's): the image is the disk of a running QEMU guest, backed up through QMP.
    ref: Type.Object({ 'source-name': Type.String({ minLength: 1, maxLength: 4096 }), qmp_socket: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })), qmp_node: Type.Optional(Type.String({ minLength: 1, maxLength: 31 })) }),
    host: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    name: NullableText(255),
    description: NullableText(255),
    metadata: Type.Optional(Metadata),
    bootable: Type.Optional(Type.Boolean()),
    availability_zone: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    volume_type: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  }),
});
const CreateSnapshot = Type.Object({
  snapshot: Type.Object({
    volume_id: Type.String({ minLength: 1 }),
    name: NullableText(255),
    description: NullableText(255),
    force: Type.Optional(Type.Union([Type.Boolean(), Type.String()])),
    metadata: Type.Optional(Metadata),
  }),
});

export function registerVolumeRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  for (const version of ['v2', 'v3'] as ApiVersion[]) {
    const base = (req: FastifyRequest) => baseUrl(s.config, req);
    const pid = (req: { params: { projectId: string } }) => req.params.projectId;
    const tags = ['volumes'];
    const page = (q: ListQuery) => ({ limit: q.limit ?? 1000, offset: q.offset ?? 0 });

    app.post(`/${version}/:projectId/volumes`, { config: CFG, schema: { params: ProjectParams, body: CreateVolume, tags, summary: 'Create a volume (a sparse raw file)', response: { 202: Type.Object({ volume: VolumeJson }) } } }, async (req, reply) => {
      const b = req.body.volume;
      const v = await s.volumes.createVolume(pid(req), { sizeGb: b.size, name: b.name, description: b.description, metadata: b.metadata, snapshotId: b.snapshot_id, bootable: b.bootable, format: formatOfVolumeType(b.volume_type) });
      return reply.code(202).send({ volume: volumeJson(base(req), version, v, s.config.hostName) });
    });
    app.get(`/${version}/:projectId/volumes`, { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List volumes', response: { 200: Type.Object({ volumes: Type.Array(Type.Object({ id: Str, name: NullStr, links: Type.Array(Link) })) }) } } }, async (req) => {
      const q = req.query;
      const vols = await s.volumes.listVolumes(pid(req), { name: q.name, status: q.status, ...page(q) });
      return { volumes: vols.map((v) => ({ id: v.id, name: v.name, links: links(base(req), version, v.projectId, 'volumes', v.id) })) };
    });
    app.get(`/${version}/:projectId/volumes/detail`, { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List volumes with details', response: { 200: Type.Object({ volumes: Type.Array(VolumeJson) }) } } }, async (req) => {
      const q = req.query;
      const vols = await s.volumes.listVolumes(pid(req), { name: q.name, status: q.status, ...page(q) });
      return { volumes: vols.map((v) => volumeJson(base(req), version, v, s.config.hostName)) };
    });
    app.get(`/${version}/:projectId/volumes/:volumeId`, { config: CFG, schema: { params: VolumeParams, tags, summary: 'Show a volume', response: { 200: Type.Object({ volume: VolumeJson }) } } }, async (req) => {
      const v = await s.volumes.getVolume(pid(req), req.params.volumeId);
      return { volume: volumeJson(base(req), version, v, s.config.hostName) };
    });
    app.delete(`/${version}/:projectId/volumes/:volumeId`, { config: CFG, schema: { params: VolumeParams, tags, summary: 'Delete a volume (an adopted file is only forgotten)', response: { 202: Accepted } } }, async (req, reply) => {
      await s.volumes.deleteVolume(pid(req), req.params.volumeId);
      return reply.code(202).send();
    });
    // Adopting a host file is a cloud-admin power (admin role on the admin project); the cloud admin
    // may adopt into any existing project, named by the path.
    app.post(`/${version}/:projectId/os-volume-manage`, { config: { ...CFG, auth: 'projectOrCloudAdmin' as const }, schema: { params: ProjectParams, body: ManageVolume, tags, summary: 'Adopt an existing image file or block device (cloud admin)', response: { 202: Type.Object({ volume: VolumeJson }) } } }, async (req, reply) => {
      if (!req.auth!.isCloudAdmin) throw new ApiError(403, `Policy does not allow volume_extension:volume_manage to be performed: the admin role on the admin project (${s.identity.adminProject}) is required.`);
      if (req.auth!.project?.id !== pid(req)) await s.identity.getProject(pid(req));
      const b = req.body.volume;
      if ((b.ref.qmp_socket === undefined) !== (b.ref.qmp_node === undefined)) throw new ApiError(400, 'ref.qmp_socket and ref.qmp_node go together: the running guest\'s QMP socket and the block node of this disk');
      const qmp = b.ref.qmp_socket !== undefined ? { socket: b.ref.qmp_socket, node: b.ref.qmp_node! } : undefined;
      const v = await s.volumes.manageVolume(pid(req), { qmp, host: b.host, sourceName: b.ref['source-name'], name: b.name, description: b.description, metadata: b.metadata, bootable: b.bootable, format: formatOfVolumeType(b.volume_type) });
      return reply.code(202).send({ volume: volumeJson(base(req), version, v, s.config.hostName) });
    });

    const stags = ['snapshots'];
    app.post(`/${version}/:projectId/snapshots`, { config: CFG, schema: { params: ProjectParams, body: CreateSnapshot, tags: stags, summary: 'Snapshot a volume', response: { 202: Type.Object({ snapshot: SnapshotJson }) } } }, async (req, reply) => {
      const b = req.body.snapshot;
      const force = b.force === true || (typeof b.force === 'string' && b.force.toLowerCase() === 'true');
      const snap = await s.volumes.createSnapshot(pid(req), { volumeId: b.volume_id, name: b.name, description: b.description, force });
      return reply.code(202).send({ snapshot: snapshotJson(snap) });
    });
    const listSnaps = async (req: { params: { projectId: string }; query: ListQuery }) => {
      const q = req.query;
      return s.volumes.listSnapshots(pid(req), { volumeId: q.volume_id, ...page(q) });
    };
    app.get(`/${version}/:projectId/snapshots`, { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags: stags, summary: 'List snapshots', response: { 200: Type.Object({ snapshots: Type.Array(SnapshotJson) }) } } }, async (req) => ({ snapshots: (await listSnaps(req)).map(snapshotJson) }));
    app.get(`/${version}/:projectId/snapshots/detail`, { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags: stags, summary: 'List snapshots with details', response: { 200: Type.Object({ snapshots: Type.Array(SnapshotJson) }) } } }, async (req) => ({ snapshots: (await listSnaps(req)).map(snapshotJson) }));
    app.get(`/${version}/:projectId/snapshots/:snapshotId`, { config: CFG, schema: { params: SnapshotParams, tags: stags, summary: 'Show a snapshot', response: { 200: Type.Object({ snapshot: SnapshotJson }) } } }, async (req) => ({ snapshot: snapshotJson(await s.volumes.getSnapshot(pid(req), req.params.snapshotId)) }));
    app.delete(`/${version}/:projectId/snapshots/:snapshotId`, { config: CFG, schema: { params: SnapshotParams, tags: stags, summary: 'Delete a snapshot', response: { 202: Accepted } } }, async (req, reply) => {
      await s.volumes.deleteSnapshot(pid(req), req.params.snapshotId);
      return reply.code(202).send();
    });
  }
}

/**
 * The image format a Cinder volume type asks for: "qcow2" makes (or adopts) a qcow2 image, "raw" a
 * raw one; any other type (clients send their cloud's names) leaves the default, raw, as before
 * volume types meant anything here.
 */
function formatOfVolumeType(t: string | null | undefined): VolumeFormat | undefined {
  return t === 'qcow2' || t === 'raw' ? t : undefined;
}
