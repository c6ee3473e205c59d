/** Catalog statements for servers and their attached volumes. */
import type { Server, ServerVolume } from '../domain/server.ts';
import type { SqlExecutor } from './sql.ts';
import { LIMIT_OFFSET } from './paging.ts';

interface ServerRow { id: string; project_id: string; name: string; status: Server['status']; metadata: string; availability_zone: string; created_at: number; updated_at: number }
interface AttachmentRow { volume_id: string; server_id: string; device: string; boot_index: number | null; attached_at: number }

const toServer = (r: ServerRow): Server => ({
  id: r.id, projectId: r.project_id, name: r.name, status: r.status, metadata: JSON.parse(r.metadata) as Record<string, string>, availabilityZone: r.availability_zone,
  createdAt: Number(r.created_at), updatedAt: Number(r.updated_at),
});
const toAttachment = (r: AttachmentRow): ServerVolume => ({ volumeId: r.volume_id, serverId: r.server_id, device: r.device, bootIndex: r.boot_index === null ? null : Number(r.boot_index), attachedAt: Number(r.attached_at) });

export class ServerQueries {
  private readonly db: SqlExecutor;
  constructor(db: SqlExecutor) {
    this.db = db;
  }

  async insertServer(s: Server): Promise<void> {
    await this.db.run('INSERT INTO servers (id, project_id, name, status, metadata, availability_zone, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)', [s.id, s.projectId, s.name, s.status, JSON.stringify(s.metadata), s.availabilityZone, s.createdAt, s.updatedAt]);
  }

  async getServer(projectId: string, id: string): Promise<Server | undefined> {
    const r = await this.db.get<ServerRow>('SELECT * FROM servers WHERE id = ? AND project_id = ?', [id, projectId]);
    return r && toServer(r);
  }

  async getServerById(id: string): Promise<Server | undefined> {
    const r = await this.db.get<ServerRow>('SELECT * FROM servers WHERE id = ?', [id]);
    return r && toServer(r);
  }

  async listServers(projectId: string, opts: { name?: string | undefined; limit: number; offset: number }): Promise<Server[]> {
    const params: (string | number)[] = [projectId];
    let where = 'project_id = ?';
    if (opts.name !== undefined) (where += ' AND name = ?', params.push(opts.name));
    params.push(opts.limit, opts.offset);
    return (await this.db.all<ServerRow>(`SELECT * FROM servers WHERE ${where} ORDER BY created_at DESC, id DESC ${LIMIT_OFFSET}`, params)).map(toServer);
  }

  async deleteServer(id: string): Promise<void> {
    await this.db.run('DELETE FROM server_volumes WHERE server_id = ?', [id]);
    await this.db.run('DELETE FROM servers WHERE id = ?', [id]);
  }

  async attach(a: ServerVolume): Promise<void> {
    await this.db.run('INSERT INTO server_volumes (volume_id, server_id, device, boot_index, attached_at) VALUES (?, ?, ?, ?, ?)', [a.volumeId, a.serverId, a.device, a.bootIndex, a.attachedAt]);
  }

  async detach(serverId: string, volumeId: string): Promise<boolean> {
    return (await this.db.run('DELETE FROM server_volumes WHERE server_id = ? AND volume_id = ?', [serverId, volumeId])).changes === 1;
  }

  async attachments(serverId: string): Promise<ServerVolume[]> {
    return (await this.db.all<AttachmentRow>('SELECT * FROM server_volumes WHERE server_id = ? ORDER BY device', [serverId])).map(toAttachment);
  }

  async attachmentOfVolume(volumeId: string): Promise<ServerVolume | undefined> {
    const r = await this.db.get<AttachmentRow>('SELECT * FROM server_volumes WHERE volume_id = ?', [volumeId]);
    return r && toAttachment(r);
  }
}
