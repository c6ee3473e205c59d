/**
 * The server inventory: servers with attached volumes. Attaching moves a volume available -> in-use,
 * detaching (or deleting the server) moves it back; a server's volumes are never deleted with it.
 */
import type { Catalog, CatalogQueries } from '../catalog/catalog.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { newUuid } from '../domain/ids.ts';
import { deviceName, unsafeServerName, type Server, type ServerVolume } from '../domain/server.ts';

export const MAX_VOLUMES_PER_SERVER = 24;

export class ServerService {
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly availabilityZone: string;

  constructor(catalog: Catalog, clock: Clock, availabilityZone: string) {
    this.catalog = catalog;
    this.clock = clock;
    this.availabilityZone = availabilityZone;
  }

  async createServer(projectId: string, input: { name: string; metadata?: Record<string, string> | undefined; volumes: { volumeId: string; bootIndex: number | null }[] }): Promise<Server> {
    const why = unsafeServerName(input.name);
    if (why) throw new AppError(ErrorCode.InvalidArgument, `Invalid input received: server name ${why}.`);
    if (input.volumes.length > MAX_VOLUMES_PER_SERVER) throw new AppError(ErrorCode.InvalidArgument, `A server holds at most ${MAX_VOLUMES_PER_SERVER} volumes.`);
    if (new Set(input.volumes.map((v) => v.volumeId)).size !== input.volumes.length) throw new AppError(ErrorCode.InvalidArgument, 'A volume is listed twice in block_device_mapping_v2.');
    if (input.volumes.filter((v) => v.bootIndex === 0).length > 1) throw new AppError(ErrorCode.InvalidArgument, 'Only one volume can have boot_index 0.');
    const now = this.clock.now();
    const server: Server = { id: newUuid(), projectId, name: input.name, status: 'ACTIVE', metadata: input.metadata ?? {}, availabilityZone: this.availabilityZone, createdAt: now, updatedAt: now };
    // The system disk (boot index 0) is /dev/vda; the others follow in the order given.
    const ordered = [...input.volumes].sort((a, b) => (a.bootIndex === 0 ? -1 : b.bootIndex === 0 ? 1 : 0));
    await this.catalog.transaction(async (c) => {
      await c.servers.insertServer(server);
      for (const [i, v] of ordered.entries()) await this.attachIn(c, server, v.volumeId, deviceName(i), v.bootIndex, now);
    });
    return server;
  }

  private async attachIn(c: CatalogQueries, server: Server, volumeId: string, device: string, bootIndex: number | null, now: number): Promise<ServerVolume> {
    const v = await c.volumes.getVolume(server.projectId, volumeId);
    if (!v) throw new AppError(ErrorCode.VolumeNotFound, `Volume ${volumeId} could not be found.`);
    if (!(await c.volumes.transitionVolume(v.id, ['available'], 'in-use', now))) throw new AppError(ErrorCode.VolumeInvalidState, `Invalid volume: volume ${v.id} is ${v.status}; only an available volume can be attached.`);
    const a: ServerVolume = { volumeId: v.id, serverId: server.id, device, bootIndex, attachedAt: now };
    await c.servers.attach(a);
    return a;
  }

  async getServer(projectId: string, id: string): Promise<Server> {
    const s = await this.catalog.servers.getServer(projectId, id);
    if (!s) throw new AppError(ErrorCode.ServerNotFound, `Instance ${id} could not be found.`);
    return s;
  }

  listServers(projectId: string, opts: { name?: string | undefined; limit: number; offset: number }): Promise<Server[]> {
    return this.catalog.servers.listServers(projectId, opts);
  }

  attachments(serverId: string): Promise<ServerVolume[]> {
    return this.catalog.servers.attachments(serverId);
  }

  async deleteServer(projectId: string, id: string): Promise<void> {
    await this.catalog.transaction(async (c) => {
      const s = await c.servers.getServer(projectId, id);
      if (!s) throw new AppError(ErrorCode.ServerNotFound, `Instance ${id} could not be found.`);
      for (const a of await c.servers.attachments(id)) await c.volumes.transitionVolume(a.volumeId, ['in-use'], 'available', this.clock.now());
      await c.servers.deleteServer(id);
    });
  }

  async attachVolume(projectId: string, serverId: string, volumeId: string, device?: string): Promise<ServerVolume> {
    return this.catalog.transaction(async (c) => {
      const s = await c.servers.getServer(projectId, serverId);
      if (!s) throw new AppError(ErrorCode.ServerNotFound, `Instance ${serverId} could not be found.`);
      const have = await c.servers.attachments(serverId);
      if (have.length >= MAX_VOLUMES_PER_SERVER) throw new AppError(ErrorCode.InvalidArgument, `A server holds at most ${MAX_VOLUMES_PER_SERVER} volumes.`);
      const used = new Set(have.map((a) => a.device));
      if (device !== undefined && used.has(device)) throw new AppError(ErrorCode.InvalidArgument, `Device ${device} is already in use on server ${serverId}.`);
      let name = device;
      for (let i = 0; name === undefined; i++) if (!used.has(deviceName(i))) name = deviceName(i);
      return this.attachIn(c, s, volumeId, name, have.length === 0 ? 0 : null, this.clock.now());
    });
  }

  async detachVolume(projectId: string, serverId: string, volumeId: string): Promise<void> {
    await this.catalog.transaction(async (c) => {
      const s = await c.servers.getServer(projectId, serverId);
      if (!s) throw new AppError(ErrorCode.ServerNotFound, `Instance ${serverId} could not be found.`);
      if (!(await c.servers.detach(serverId, volumeId))) throw new AppError(ErrorCode.VolumeNotFound, `Volume ${volumeId} is not attached to server ${serverId}.`);
      await c.volumes.transitionVolume(volumeId, ['in-use'], 'available', this.clock.now());
    });
  }
}
