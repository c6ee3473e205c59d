/** Catalog statements for projects, users, role assignments and tokens: one method per statement. */
import type { Project, Role, TokenInfo, User } from '../domain/model.ts';
import type { SqlExecutor } from './sql.ts';

interface ProjectRow { id: string; name: string; domain_id: string; description: string; enabled: number; created_at: number }
interface UserRow { id: string; name: string; domain_id: string; password_hash: string; enabled: number; default_project_id: string | null; created_at: number }
interface TokenRow { user_id: string; project_id: string | null; roles: string; methods: string; audit_id: string; parent_audit_id: string | null; audit_chain_id: string | null; issued_at: number; expires_at: number }

/**
 * A token as the catalog keeps it. `roles` are those held at issue time, kept for the token body of
 * older builds only: authorization resolves roles from role_assignments on every validation.
 * `parentAuditId` is the audit id of the token this one was obtained from (the `token` method),
 * `auditChainId` the audit id of the first token of that chain (Keystone's audit_ids[1]).
 */
export interface StoredToken extends TokenInfo {
  parentAuditId: string | null;
  auditChainId: string | null;
}

const toProject = (r: ProjectRow): Project => ({ id: r.id, name: r.name, domainId: r.domain_id, description: r.description, enabled: !!r.enabled, createdAt: Number(r.created_at) });
const toUser = (r: UserRow): User => ({ id: r.id, name: r.name, domainId: r.domain_id, passwordHash: r.password_hash, enabled: !!r.enabled, defaultProjectId: r.default_project_id, createdAt: Number(r.created_at) });

export class IdentityQueries {
  private readonly db: SqlExecutor;
  constructor(db: SqlExecutor) {
    this.db = db;
  }

  async insertProject(p: Project): Promise<void> {
    await this.db.run('INSERT INTO projects (id, name, domain_id, description, enabled, created_at) VALUES (?, ?, ?, ?, ?, ?)', [p.id, p.name, p.domainId, p.description, p.enabled ? 1 : 0, p.createdAt]);
  }

  async getProject(id: string): Promise<Project | undefined> {
    const r = await this.db.get<ProjectRow>('SELECT * FROM projects WHERE id = ?', [id]);
    return r && toProject(r);
  }

  async findProjectByName(domainId: string, name: string): Promise<Project | undefined> {
    const r = await this.db.get<ProjectRow>('SELECT * FROM projects WHERE domain_id = ? AND name = ?', [domainId, name]);
    return r && toProject(r);
  }

  async listProjects(): Promise<Project[]> {
    return (await this.db.all<ProjectRow>('SELECT * FROM projects ORDER BY name')).map(toProject);
  }

  async insertUser(u: User): Promise<void> {
    await this.db.run('INSERT INTO users (id, name, domain_id, password_hash, enabled, default_project_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)', [u.id, u.name, u.domainId, u.passwordHash, u.enabled ? 1 : 0, u.defaultProjectId, u.createdAt]);
  }

  async getUser(id: string): Promise<User | undefined> {
    const r = await this.db.get<UserRow>('SELECT * FROM users WHERE id = ?', [id]);
    return r && toUser(r);
  }

  async findUserByName(domainId: string, name: string): Promise<User | undefined> {
    const r = await this.db.get<UserRow>('SELECT * FROM users WHERE domain_id = ? AND name = ?', [domainId, name]);
    return r && toUser(r);
  }

  async listUsers(): Promise<User[]> {
    return (await this.db.all<UserRow>('SELECT * FROM users ORDER BY name')).map(toUser);
  }

  async setUserEnabled(id: string, enabled: boolean): Promise<number> {
    return (await this.db.run('UPDATE users SET enabled = ? WHERE id = ?', [enabled ? 1 : 0, id])).changes;
  }

  /** Its role assignments and tokens go with it (ON DELETE CASCADE). */
  async deleteUser(id: string): Promise<number> {
    return (await this.db.run('DELETE FROM users WHERE id = ?', [id])).changes;
  }

  async setProjectEnabled(id: string, enabled: boolean): Promise<number> {
    return (await this.db.run('UPDATE projects SET enabled = ? WHERE id = ?', [enabled ? 1 : 0, id])).changes;
  }

  async setUserPassword(id: string, passwordHash: string): Promise<void> {
    await this.db.run('UPDATE users SET password_hash = ? WHERE id = ?', [passwordHash, id]);
  }

  async grantRole(projectId: string, userId: string, role: Role): Promise<void> {
    await this.db.run('INSERT INTO role_assignments (project_id, user_id, role) VALUES (?, ?, ?) ON CONFLICT DO NOTHING', [projectId, userId, role]);
  }

  async revokeRole(projectId: string, userId: string, role: Role): Promise<number> {
    return (await this.db.run('DELETE FROM role_assignments WHERE project_id = ? AND user_id = ? AND role = ?', [projectId, userId, role])).changes;
  }

  async rolesOf(projectId: string, userId: string): Promise<Role[]> {
    const rows = await this.db.all<{ role: Role }>('SELECT role FROM role_assignments WHERE project_id = ? AND user_id = ? ORDER BY role', [projectId, userId]);
    return rows.map((r) => r.role);
  }

  async insertToken(hash: string, t: StoredToken): Promise<void> {
    await this.db.run(
      'INSERT INTO tokens (token_hash, user_id, project_id, roles, methods, audit_id, parent_audit_id, audit_chain_id, issued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      [hash, t.userId, t.projectId, JSON.stringify(t.roles), JSON.stringify(t.methods), t.auditId, t.parentAuditId, t.auditChainId, t.issuedAt, t.expiresAt],
    );
  }

  async getToken(hash: string): Promise<StoredToken | undefined> {
    const r = await this.db.get<TokenRow>('SELECT user_id, project_id, roles, methods, audit_id, parent_audit_id, audit_chain_id, issued_at, expires_at FROM tokens WHERE token_hash = ?', [hash]);
    return r && {
      userId: r.user_id, projectId: r.project_id, roles: JSON.parse(r.roles) as Role[], methods: JSON.parse(r.methods) as string[], auditId: r.audit_id,
      parentAuditId: r.parent_audit_id, auditChainId: r.audit_chain_id, issuedAt: Number(r.issued_at), expiresAt: Number(r.expires_at),
    };
  }

  /**
   * Deletes the token and every token derived from it, at any depth (children have
   * parent_audit_id = the parent's audit_id), in one statement. Returns the audit ids deleted
   * (empty: no such token).
   */
  async deleteTokenTree(hash: string): Promise<string[]> {
    const rows = await this.db.all<{ audit_id: string }>(
      `WITH RECURSIVE tree (audit_id) AS (
         SELECT audit_id FROM tokens WHERE token_hash = ?
         UNION
         SELECT t.audit_id FROM tokens t JOIN tree ON t.parent_audit_id = tree.audit_id
       )
       DELETE FROM tokens WHERE audit_id IN (SELECT audit_id FROM tree) RETURNING audit_id`,
      [hash],
    );
    return rows.map((r) => r.audit_id);
  }

  async deleteExpiredTokens(nowMs: number): Promise<number> {
    return (await this.db.run('DELETE FROM tokens WHERE expires_at <= ?', [nowMs])).changes;
  }
}
