/**
 * Identity: projects, users, role assignments and tokens (the Keystone v3 subset clients need).
 *
 * Tokens are 256 random bits; the catalog keeps only their SHA-256, so neither a catalog dump nor a
 * log line can be replayed. A token says who the user is and which project it is scoped to; what
 * the user may do is resolved again on every validation: the user and the project must exist and
 * be enabled, and the roles are those the user holds on the project now (a project-scoped token
 * whose user holds no role there any more is invalid). The resolved context is cached in memory
 * for at most TOKEN_CACHE_MS (the request path must not hit the database on every call), so a
 * revoked token, a removed role, or a deleted or disabled user or project takes effect within that
 * time on every process sharing the catalog (at once on the process that made the change).
 *
 * Cloud admin (Keystone's "admin role on the admin project"): a token scoped to the admin project
 * (HAVEN_ADMIN_PROJECT) whose user holds the admin role there. Only it manages identity and holds
 * cross-project powers; the admin role on any other project is a role on that project only.
 *
 * Audit chain: a token obtained with the `token` method records its parent's audit id; revoking a
 * token revokes every token derived from it (Keystone's audit chain).
 *
 * Password logins are throttled (login-throttle.ts) and their hashing capped (passwords.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { AppError, ErrorCode } from '../domain/errors.ts';
import type { Clock } from '../domain/clock.ts';
import { newHexId } from '../domain/ids.ts';
import { DEFAULT_DOMAIN, ROLES, type Project, type Role, type User } from '../domain/model.ts';
import { ProjectLock, type Catalog } from '../catalog/catalog.ts';
import type { StoredToken } from '../catalog/identity-queries.ts';
import { HashingGate, hashPassword, verifyPassword } from './passwords.ts';
import { LOGIN_LIMITS, LoginThrottle, type LoginLimits } from './login-throttle.ts';

export const TOKEN_CACHE_MS = 5_000;
/** Password checks one source address may have running or queued at once (more: 429, Retry-After 1). */
const HASHING_PER_ADDRESS = 2;
const TOKEN_CACHE_MAX = 10_000;

/** Who is calling: a validated token with its user and project resolved. */
export interface AuthContext extends StoredToken {
  tokenHash: string;
  user: { id: string; name: string; domainId: string };
  project: { id: string; name: string; domainId: string } | null;
  /** The user's roles on the token's project, as of the last resolution (at most TOKEN_CACHE_MS ago). */
  roles: Role[];
  /** Admin role on the admin project, with a token scoped to it: identity management and cross-project powers. */
  isCloudAdmin: boolean;
}

export interface IdentityOptions {
  /** Name of the admin project (HAVEN_ADMIN_PROJECT), in the default domain. */
  adminProject?: string;
  loginLimits?: LoginLimits;
  /** Password hashes computed at once (default: half the cores) and logins waiting for one. */
  hashConcurrency?: number;
  hashMaxWaiting?: number;
}

export type UserRef = { id: string } | { name: string; domain: { id?: string | undefined; name?: string | undefined } };
export type ProjectRef = { id: string } | { name: string; domain: { id?: string | undefined; name?: string | undefined } };

export type AuthRequest =
  | { method: 'password'; user: UserRef; password: string; scope: ProjectRef | null }
  | { method: 'token'; token: string; scope: ProjectRef | null };

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

function domainIdOf(ref: { id?: string | undefined; name?: string | undefined }): string | null {
  if (ref.id !== undefined) return ref.id === DEFAULT_DOMAIN.id ? DEFAULT_DOMAIN.id : null;
  if (ref.name !== undefined) return ref.name.toLowerCase() === DEFAULT_DOMAIN.name.toLowerCase() ? DEFAULT_DOMAIN.id : null;
  return null;
}

const AUTH_FAILED = 'The request you have made requires authentication.';

export class IdentityService {
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly tokenTtlMs: number;
  private readonly cache = new Map<string, { ctx: AuthContext; until: number }>();
  readonly adminProject: string;
  private readonly throttle: LoginThrottle;
  private readonly hashing: HashingGate;
  /** Password checks running or queued per source address: one address cannot fill the hashing queue. */
  private readonly hashingBy = new Map<string, number>();

  constructor(catalog: Catalog, clock: Clock, tokenTtlSeconds: number, opts: IdentityOptions = {}) {
    this.catalog = catalog;
    this.clock = clock;
    this.tokenTtlMs = tokenTtlSeconds * 1000;
    this.adminProject = opts.adminProject ?? 'admin';
    this.throttle = new LoginThrottle(clock, opts.loginLimits ?? LOGIN_LIMITS);
    const concurrency = opts.hashConcurrency ?? Math.max(1, Math.floor(availableParallelism() / 2));
    this.hashing = new HashingGate({
      concurrency,
      maxWaiting: opts.hashMaxWaiting ?? concurrency * 4,
      onBusy: () => new AppError(ErrorCode.ServiceBusy, 'Too many logins at once; retry shortly.', { details: { retryAfterSeconds: 1 } }),
    });
  }

  /**
   * First start: the admin project (`admin` unless HAVEN_ADMIN_PROJECT names another), user `admin`
   * with the admin role on it, which makes it the cloud admin. Returns whether it created the user
   * (the caller decides where the password goes; it is never logged).
   */
  async bootstrap(adminPassword: string): Promise<{ created: boolean; projectId: string }> {
    const now = this.clock.now();
    return this.catalog.transaction(async (c) => {
      // Processes starting together on one catalog take turns: the second finds what the first made.
      await c.lockKey(ProjectLock.identityBootstrap, DEFAULT_DOMAIN.id);
      let project = await c.identity.findProjectByName(DEFAULT_DOMAIN.id, this.adminProject);
      if (!project) {
        project = { id: newHexId(), name: this.adminProject, domainId: DEFAULT_DOMAIN.id, description: 'Bootstrap project', enabled: true, createdAt: now };
        await c.identity.insertProject(project);
      }
      let user = await c.identity.findUserByName(DEFAULT_DOMAIN.id, 'admin');
      const created = !user;
      if (!user) {
        user = { id: newHexId(), name: 'admin', domainId: DEFAULT_DOMAIN.id, passwordHash: await hashPassword(adminPassword), enabled: true, defaultProjectId: project.id, createdAt: now };
        await c.identity.insertUser(user);
      }
      await c.identity.grantRole(project.id, user.id, 'admin');
      return { created, projectId: project.id };
    });
  }

  /** Sets the admin user's password (HAVEN_ADMIN_PASSWORD changed between starts). */
  async resetPassword(userName: string, password: string): Promise<void> {
    const user = await this.catalog.identity.findUserByName(DEFAULT_DOMAIN.id, userName);
    if (!user) throw new AppError(ErrorCode.UserNotFound, `user ${userName} does not exist`);
    if (await verifyPassword(password, user.passwordHash)) return;
    await this.catalog.identity.setUserPassword(user.id, await hashPassword(password));
  }

  private async resolveUser(ref: UserRef): Promise<User | undefined> {
    if ('id' in ref) return this.catalog.identity.getUser(ref.id);
    const domainId = domainIdOf(ref.domain);
    return domainId === null ? undefined : this.catalog.identity.findUserByName(domainId, ref.name);
  }

  private async resolveProject(ref: ProjectRef): Promise<Project | undefined> {
    if ('id' in ref) return this.catalog.identity.getProject(ref.id);
    const domainId = domainIdOf(ref.domain);
    return domainId === null ? undefined : this.catalog.identity.findProjectByName(domainId, ref.name);
  }

  /**
   * Checks a password login: throttled per user and source address (429 with a retry time), hashing
   * capped (503 when too many wait), and any other failure the same 401, revealing nothing.
   */
  private async checkPassword(ref: UserRef, password: string, source: string): Promise<User> {
    const throttled = (waitMs: number): AppError => {
      const retryAfterSeconds = Math.ceil(waitMs / 1000);
      return new AppError(ErrorCode.TooManyRequests, `Too many failed logins; retry in ${retryAfterSeconds} s.`, { details: { retryAfterSeconds } });
    };
    // A locked address is refused before any lookup: a flood from it costs next to nothing.
    const addressWaitMs = this.throttle.addressRetryAfterMs(source);
    if (addressWaitMs > 0) throw throttled(addressWaitMs);
    const user = await this.resolveUser(ref);
    // Unknown names are counted too (by name), so that answers do not tell which names exist.
    const who = user ? user.id : `unknown:${'id' in ref ? ref.id : `${domainIdOf(ref.domain) ?? '?'}/${ref.name.toLowerCase()}`}`;
    const waitMs = this.throttle.retryAfterMs(who, source);
    if (waitMs > 0) throw throttled(waitMs);
    const mine = this.hashingBy.get(source) ?? 0;
    if (mine >= HASHING_PER_ADDRESS) throw throttled(1000);
    // Counted as a failure from now on, so that attempts arriving while this hash runs see it.
    this.throttle.recordAttempt(who, source);
    this.hashingBy.set(source, mine + 1);
    let ok: boolean;
    try {
      // Hash even for an unknown user, so timing does not tell which user names exist.
      ok = await this.hashing.run(() => verifyPassword(password, user?.passwordHash ?? DUMMY_HASH));
    } catch (err) {
      if (err instanceof AppError && err.code === ErrorCode.ServiceBusy) this.throttle.recordAbandoned(who, source);
      throw err;
    } finally {
      const n = (this.hashingBy.get(source) ?? 1) - 1;
      if (n > 0) this.hashingBy.set(source, n);
      else this.hashingBy.delete(source);
    }
    if (!user || !ok) throw new AppError(ErrorCode.AuthenticationFailed, AUTH_FAILED);
    this.throttle.recordSuccess(who, source);
    if (!user.enabled) throw new AppError(ErrorCode.AuthenticationFailed, AUTH_FAILED);
    return user;
  }

  /**
   * Issues a token (POST /v3/auth/tokens). `source` is the client's address, for login throttling.
   * Any failure is the same 401, revealing nothing (429/503 when throttled).
   */
  async issueToken(req: AuthRequest, source = 'local'): Promise<{ token: string; ctx: AuthContext }> {
    let userId: string;
    let methods: string[];
    let expiresAt = this.clock.now() + this.tokenTtlMs;
    let parent: AuthContext | null = null;
    if (req.method === 'password') {
      userId = (await this.checkPassword(req.user, req.password, source)).id;
      methods = ['password'];
    } else {
      parent = await this.validateToken(req.token);
      userId = parent.userId;
      methods = [...new Set([...parent.methods, 'token'])];
      expiresAt = parent.expiresAt; // rescoping never extends a token's life (Keystone does the same)
    }
    let projectId: string | null = null;
    let roles: Role[] = [];
    if (req.scope) {
      const project = await this.resolveProject(req.scope);
      if (!project || !project.enabled) throw new AppError(ErrorCode.AuthenticationFailed, AUTH_FAILED);
      roles = await this.catalog.identity.rolesOf(project.id, userId);
      if (!roles.length) throw new AppError(ErrorCode.AuthenticationFailed, AUTH_FAILED);
      projectId = project.id;
    }
    const token = randomBytes(32).toString('base64url');
    const info: StoredToken = {
      userId, projectId, roles, methods, auditId: randomBytes(16).toString('base64url').slice(0, 22), issuedAt: this.clock.now(), expiresAt,
      parentAuditId: parent?.auditId ?? null,
      auditChainId: parent ? (parent.auditChainId ?? parent.auditId) : null,
    };
    await this.catalog.identity.insertToken(sha256(token), info);
    return { token, ctx: await this.contextOf(sha256(token), info) };
  }

  /**
   * Resolves what a token may do now: its user and project must exist and be enabled, and its roles
   * are the user's current ones on the project (none: the token is invalid).
   */
  private async contextOf(tokenHash: string, info: StoredToken): Promise<AuthContext> {
    const invalid = () => new AppError(ErrorCode.TokenInvalid, 'The token is no longer valid.');
    const user = await this.catalog.identity.getUser(info.userId);
    if (!user || !user.enabled) throw invalid();
    let project: AuthContext['project'] = null;
    let roles: Role[] = [];
    if (info.projectId) {
      const p = await this.catalog.identity.getProject(info.projectId);
      if (!p || !p.enabled) throw invalid();
      roles = await this.catalog.identity.rolesOf(p.id, user.id);
      if (!roles.length) throw invalid();
      project = { id: p.id, name: p.name, domainId: p.domainId };
    }
    const isCloudAdmin = project !== null && project.domainId === DEFAULT_DOMAIN.id && project.name === this.adminProject && roles.includes('admin');
    return { ...info, roles, tokenHash, user: { id: user.id, name: user.name, domainId: user.domainId }, project, isCloudAdmin };
  }

  /** Forgets every cached context: the next validation of each token resolves it again. */
  private invalidateCache(): void {
    this.cache.clear();
  }

  /** The context of a token validated within the last few seconds, without I/O; null otherwise. */
  peekToken(token: string): AuthContext | null {
    const now = this.clock.now();
    const hit = this.cache.get(sha256(token));
    return hit && hit.until > now && hit.ctx.expiresAt > now ? hit.ctx : null;
  }

  /** The context of a valid token, or TokenInvalid (unknown, expired or revoked). */
  async validateToken(token: string): Promise<AuthContext> {
    const now = this.clock.now();
    const hash = sha256(token);
    const hit = this.cache.get(hash);
    if (hit && hit.until > now) {
      if (hit.ctx.expiresAt <= now) throw new AppError(ErrorCode.TokenInvalid, 'The token has expired.');
      return hit.ctx;
    }
    const info = await this.catalog.identity.getToken(hash);
    if (!info) throw new AppError(ErrorCode.TokenInvalid, 'The token is not valid.');
    if (info.expiresAt <= now) throw new AppError(ErrorCode.TokenInvalid, 'The token has expired.');
    const ctx = await this.contextOf(hash, info);
    if (this.cache.size >= TOKEN_CACHE_MAX) this.cache.clear();
    this.cache.set(hash, { ctx, until: now + TOKEN_CACHE_MS });
    return ctx;
  }

  /** Revokes a token and every token derived from it, at any depth (Keystone's audit chain). */
  async revokeToken(token: string): Promise<void> {
    const revoked = new Set(await this.catalog.identity.deleteTokenTree(sha256(token)));
    if (!revoked.size) throw new AppError(ErrorCode.TokenInvalid, 'The token is not valid.');
    for (const [hash, hit] of this.cache) if (revoked.has(hit.ctx.auditId)) this.cache.delete(hash);
  }

  async purgeExpiredTokens(): Promise<number> {
    return this.catalog.identity.deleteExpiredTokens(this.clock.now());
  }

  async createProject(input: { name: string; description?: string | undefined; enabled?: boolean | undefined; domainId?: string | undefined }): Promise<Project> {
    const domainId = input.domainId ?? DEFAULT_DOMAIN.id;
    if (domainId !== DEFAULT_DOMAIN.id) throw new AppError(ErrorCode.InvalidArgument, `domain ${domainId} does not exist (Haven has one domain, "${DEFAULT_DOMAIN.id}")`);
    const p: Project = { id: newHexId(), name: input.name, domainId, description: input.description ?? '', enabled: input.enabled ?? true, createdAt: this.clock.now() };
    return this.catalog.transaction(async (c) => {
      if (await c.identity.findProjectByName(domainId, p.name)) throw new AppError(ErrorCode.NameConflict, `a project named ${p.name} already exists`);
      await c.identity.insertProject(p);
      return p;
    });
  }

  listProjects(): Promise<Project[]> {
    return this.catalog.identity.listProjects();
  }

  async getProject(id: string): Promise<Project> {
    const p = await this.catalog.identity.getProject(id);
    if (!p) throw new AppError(ErrorCode.ProjectNotFound, `Could not find project: ${id}.`);
    return p;
  }

  async findProject(idOrName: string): Promise<Project> {
    const p = (await this.catalog.identity.getProject(idOrName)) ?? (await this.catalog.identity.findProjectByName(DEFAULT_DOMAIN.id, idOrName));
    if (!p) throw new AppError(ErrorCode.ProjectNotFound, `Could not find project: ${idOrName}.`);
    return p;
  }

  async createUser(input: { name: string; password: string; defaultProjectId?: string | null | undefined; enabled?: boolean | undefined; domainId?: string | undefined }): Promise<User> {
    const domainId = input.domainId ?? DEFAULT_DOMAIN.id;
    if (domainId !== DEFAULT_DOMAIN.id) throw new AppError(ErrorCode.InvalidArgument, `domain ${domainId} does not exist (Haven has one domain, "${DEFAULT_DOMAIN.id}")`);
    if (input.defaultProjectId) await this.getProject(input.defaultProjectId);
    const u: User = { id: newHexId(), name: input.name, domainId, passwordHash: await this.hashing.run(() => hashPassword(input.password)), enabled: input.enabled ?? true, defaultProjectId: input.defaultProjectId ?? null, createdAt: this.clock.now() };
    return this.catalog.transaction(async (c) => {
      if (await c.identity.findUserByName(domainId, u.name)) throw new AppError(ErrorCode.NameConflict, `a user named ${u.name} already exists`);
      await c.identity.insertUser(u);
      return u;
    });
  }

  listUsers(): Promise<User[]> {
    return this.catalog.identity.listUsers();
  }

  async getUser(id: string): Promise<User> {
    const u = await this.catalog.identity.getUser(id);
    if (!u) throw new AppError(ErrorCode.UserNotFound, `Could not find user: ${id}.`);
    return u;
  }

  async findUser(idOrName: string): Promise<User> {
    const u = (await this.catalog.identity.getUser(idOrName)) ?? (await this.catalog.identity.findUserByName(DEFAULT_DOMAIN.id, idOrName));
    if (!u) throw new AppError(ErrorCode.UserNotFound, `Could not find user: ${idOrName}.`);
    return u;
  }

  /** Enables or disables a user; takes effect at once on this process, within TOKEN_CACHE_MS on the others. */
  async setUserEnabled(id: string, enabled: boolean): Promise<User> {
    if (!enabled && (await this.isBootstrapAdmin(id))) throw new AppError(ErrorCode.Forbidden, 'The bootstrap admin cannot be disabled (it is the way back in).');
    if (!(await this.catalog.identity.setUserEnabled(id, enabled))) throw new AppError(ErrorCode.UserNotFound, `Could not find user: ${id}.`);
    this.invalidateCache();
    return this.getUser(id);
  }

  /** Deletes a user, its role assignments and tokens; its tokens stop working as setUserEnabled's. */
  async deleteUser(id: string): Promise<void> {
    if (await this.isBootstrapAdmin(id)) throw new AppError(ErrorCode.Forbidden, 'The bootstrap admin cannot be deleted (it is the way back in).');
    if (!(await this.catalog.identity.deleteUser(id))) throw new AppError(ErrorCode.UserNotFound, `Could not find user: ${id}.`);
    this.invalidateCache();
  }

  /** Enables or disables a project; its tokens stop (or resume) working as setUserEnabled's. */
  async setProjectEnabled(id: string, enabled: boolean): Promise<Project> {
    const p = await this.getProject(id);
    if (!enabled && p.name === this.adminProject && p.domainId === DEFAULT_DOMAIN.id) throw new AppError(ErrorCode.Forbidden, 'The admin project cannot be disabled (it is the way back in).');
    await this.catalog.identity.setProjectEnabled(id, enabled);
    this.invalidateCache();
    return this.getProject(id);
  }

  private async isBootstrapAdmin(userId: string): Promise<boolean> {
    const u = await this.catalog.identity.getUser(userId);
    return u !== undefined && u.name === 'admin' && u.domainId === DEFAULT_DOMAIN.id;
  }

  static parseRole(r: string): Role {
    const role = r.toLowerCase();
    if (!(ROLES as readonly string[]).includes(role)) throw new AppError(ErrorCode.RoleNotFound, `Could not find role: ${r}.`);
    return role as Role;
  }

  async grantRole(projectId: string, userId: string, role: Role): Promise<void> {
    await this.getProject(projectId);
    await this.getUser(userId);
    await this.catalog.identity.grantRole(projectId, userId, role);
    this.invalidateCache();
  }

  /** Takes effect at once on this process, within TOKEN_CACHE_MS on the others. */
  async revokeRole(projectId: string, userId: string, role: Role): Promise<void> {
    const removed = await this.catalog.identity.revokeRole(projectId, userId, role);
    this.invalidateCache();
    if (!removed) throw new AppError(ErrorCode.RoleNotFound, `user ${userId} has no role ${role} on project ${projectId}`);
  }

  async hasRole(projectId: string, userId: string, role: Role): Promise<boolean> {
    return (await this.catalog.identity.rolesOf(projectId, userId)).includes(role);
  }
}

// A valid hash of a random password: verifying against it costs what a real check costs.
const DUMMY_HASH = 'scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=';
