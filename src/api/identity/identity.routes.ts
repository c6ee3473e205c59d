/**
 * Keystone v3 subset: tokens (password and token methods, project scope by id or by name and
 * domain), and the admin calls operators need to manage tenants (projects, users, role
 * assignments). Response shapes follow Keystone, so keystoneauth, openstackclient, gophercloud and
 * the OTC SDKs authenticate unchanged.
 *
 * Identity management is the cloud admin's alone (the admin role on the admin project, as in
 * Keystone's default policy); the admin role on another project grants nothing here.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type, type Static } from 'typebox';
import { DEFAULT_DOMAIN, ROLES, type Project, type User } from '../../domain/model.ts';
import { IdentityService, type AuthContext, type AuthRequest, type ProjectRef, type UserRef } from '../../services/identity-service.ts';
import { ApiError } from '../errors.ts';
import { baseUrl, type ApiServices } from '../server.ts';
import { PathParam, ProjectParams, typed } from '../typed-routes.ts';
import { keystoneTime } from '../wire/time.ts';
import { serviceCatalog } from './service-catalog.ts';
import { NoBody } from '../wire/schemas.ts';

const KS = { envelope: 'keystone' as const };
const Domain = Type.Object({ id: Type.Optional(Type.String()), name: Type.Optional(Type.String()) });
const NamedOrId = Type.Object({ id: Type.Optional(Type.String({ minLength: 1 })), name: Type.Optional(Type.String({ minLength: 1 })), domain: Type.Optional(Domain) });

const AuthBody = Type.Object({
  auth: Type.Object({
    identity: Type.Object({
      methods: Type.Array(Type.String(), { minItems: 1 }),
      password: Type.Optional(Type.Object({ user: Type.Intersect([NamedOrId, Type.Object({ password: Type.String() })]) })),
      token: Type.Optional(Type.Object({ id: Type.String({ minLength: 1 }) })),
    }),
    scope: Type.Optional(Type.Union([Type.Object({ project: NamedOrId }), Type.Object({ domain: Domain }), Type.Literal('unscoped'), Type.Object({ system: Type.Unknown() })])),
  }),
});

const UserParams = Type.Object({ userId: PathParam });
const ProjectUserParams = Type.Object({ projectId: PathParam, userId: PathParam });
const AssignmentParams = Type.Object({ projectId: PathParam, userId: PathParam, roleId: PathParam });

const roleId = (r: string) => `role-${r}`;
const roleRefs = (roles: readonly string[]) => roles.map((r) => ({ id: roleId(r), name: r }));

function ref(o: { id?: string | undefined; name?: string | undefined; domain?: { id?: string | undefined; name?: string | undefined } | undefined }, what: string): UserRef & ProjectRef {
  if (o.id) return { id: o.id };
  if (o.name) {
    if (!o.domain || (!o.domain.id && !o.domain.name)) throw new ApiError(400, `Expecting to find domain in ${what}. The server could not comply with the request since it is either malformed or otherwise incorrect.`);
    return { name: o.name, domain: o.domain };
  }
  throw new ApiError(400, `Expecting to find id or name in ${what}.`);
}

export function tokenBody(s: ApiServices, req: FastifyRequest, ctx: AuthContext) {
  const domain = { id: DEFAULT_DOMAIN.id, name: DEFAULT_DOMAIN.name };
  const token = {
    methods: ctx.methods,
    user: { domain, id: ctx.user.id, name: ctx.user.name, password_expires_at: null },
    // Keystone: [this token's audit id, the audit id of the first token of its chain] for a token
    // obtained with the token method.
    audit_ids: ctx.auditChainId ? [ctx.auditId, ctx.auditChainId] : [ctx.auditId],
    expires_at: keystoneTime(ctx.expiresAt),
    issued_at: keystoneTime(ctx.issuedAt),
    ...(ctx.project
      ? { project: { domain, id: ctx.project.id, name: ctx.project.name }, is_domain: false, roles: roleRefs(ctx.roles), catalog: serviceCatalog(baseUrl(s.config, req), s.config.region, ctx.project.id) }
      : {}),
  };
  return { token };
}

// What the identity operations answer (OpenAPI; the tests check real answers against these).
const Str = Type.String();
const DomainRef = Type.Object({ id: Str, name: Str });
const RoleRef = Type.Object({ id: Str, name: Str });
const CatalogEntry = Type.Object({ id: Str, type: Str, name: Str, endpoints: Type.Array(Type.Object({ id: Str, interface: Str, region: Str, region_id: Str, url: Str })) });
const TokenJson = Type.Object({ token: Type.Object({
  methods: Type.Array(Str), user: Type.Object({ domain: DomainRef, id: Str, name: Str, password_expires_at: Type.Null() }), audit_ids: Type.Array(Str),
  expires_at: Str, issued_at: Str, project: Type.Optional(Type.Object({ domain: DomainRef, id: Str, name: Str })), is_domain: Type.Optional(Type.Boolean()),
  roles: Type.Optional(Type.Array(RoleRef)), catalog: Type.Optional(Type.Array(CatalogEntry)),
}, { description: 'project, roles and catalog when the token is scoped to a project' }) });
const ListLinks = Type.Object({ self: Str, next: Type.Null(), previous: Type.Null() });
const ProjectJson = Type.Object({
  id: Str, name: Str, domain_id: Str, description: Str, enabled: Type.Boolean(), is_domain: Type.Literal(false), parent_id: Str,
  tags: Type.Array(Str), options: Type.Object({}), links: Type.Object({ self: Str }),
});
const UserJson = Type.Object({
  id: Str, name: Str, domain_id: Str, enabled: Type.Boolean(), default_project_id: Type.Optional(Str), password_expires_at: Type.Null(), options: Type.Object({}),
  links: Type.Object({ self: Str }),
});

const projectJson = (req: FastifyRequest, s: ApiServices, p: Project) => ({
  id: p.id, name: p.name, domain_id: p.domainId, description: p.description, enabled: p.enabled, is_domain: false as const, parent_id: p.domainId, tags: [] as string[], options: {},
  links: { self: `${baseUrl(s.config, req)}/v3/projects/${p.id}` },
});
const userJson = (req: FastifyRequest, s: ApiServices, u: User) => ({
  id: u.id, name: u.name, domain_id: u.domainId, enabled: u.enabled, ...(u.defaultProjectId ? { default_project_id: u.defaultProjectId } : {}), password_expires_at: null, options: {},
  links: { self: `${baseUrl(s.config, req)}/v3/users/${u.id}` },
});

export function registerIdentityRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  app.post('/v3/auth/tokens', { config: { ...KS, auth: 'none' }, schema: { body: AuthBody, tags: ['identity'], summary: 'Issue a token (password or token method)', response: { 201: TokenJson } } }, async (req, reply) => {
    const { identity, scope } = req.body.auth;
    let projectScope: ProjectRef | null = null;
    if (scope && typeof scope === 'object') {
      if ('project' in scope) projectScope = ref(scope.project, 'scope.project');
      else throw new ApiError(400, 'Only project scope is supported (Haven has no domain or system scope).');
    }
    let authReq: AuthRequest;
    if (identity.methods.includes('password')) {
      if (!identity.password) throw new ApiError(400, 'Expecting to find password in identity.');
      authReq = { method: 'password', user: ref(identity.password.user, 'identity.password.user'), password: identity.password.user.password, scope: projectScope };
    } else if (identity.methods.includes('token')) {
      if (!identity.token) throw new ApiError(400, 'Expecting to find token in identity.');
      authReq = { method: 'token', token: identity.token.id, scope: projectScope };
    } else {
      throw new ApiError(401, `Unsupported authentication method: ${identity.methods.join(', ')} (password and token are supported).`);
    }
    const { token, ctx } = await s.identity.issueToken(authReq, req.ip);
    return reply.code(201).header('x-subject-token', token).send(tokenBody(s, req, ctx));
  });

  const subject = async (req: FastifyRequest): Promise<{ token: string; ctx: AuthContext }> => {
    const token = req.headers['x-subject-token'];
    if (typeof token !== 'string' || !token) throw new ApiError(400, 'X-Subject-Token header is required.');
    const ctx = await s.identity.validateToken(token).catch(() => {
      throw new ApiError(404, 'Could not find token.');
    });
    // Only the token's own user or the cloud admin may look at or revoke it.
    if (!req.auth!.isCloudAdmin && req.auth!.user.id !== ctx.user.id) throw new ApiError(403, 'You are not authorized to perform the requested action.');
    return { token, ctx };
  };
  app.head('/v3/auth/tokens', { config: { ...KS, auth: 'token' }, schema: { tags: ['identity'], summary: 'Check a token (X-Subject-Token)' } }, async (req, reply) => {
    const { token } = await subject(req);
    return reply.code(200).header('x-subject-token', token).send();
  });
  app.get('/v3/auth/tokens', { config: { ...KS, auth: 'token' }, schema: { tags: ['identity'], summary: 'Validate a token (X-Subject-Token)', response: { 200: TokenJson } } }, async (req, reply) => {
    const { token, ctx } = await subject(req);
    return reply.header('x-subject-token', token).send(tokenBody(s, req, ctx));
  });
  app.delete('/v3/auth/tokens', { config: { ...KS, auth: 'token' }, schema: { tags: ['identity'], summary: 'Revoke a token (X-Subject-Token) and every token obtained from it', response: { 204: NoBody } } }, async (req, reply) => {
    const { token } = await subject(req);
    await s.identity.revokeToken(token);
    return reply.code(204).send();
  });

  app.get('/v3/auth/catalog', { config: { ...KS, auth: 'token' }, schema: { tags: ['identity'], summary: 'The service catalog of the token\'s project', response: { 200: Type.Object({ catalog: Type.Array(CatalogEntry), links: Type.Object({ self: Str }) }) } } }, async (req) => {
    const ctx = req.auth!;
    return { catalog: ctx.project ? serviceCatalog(baseUrl(s.config, req), s.config.region, ctx.project.id) : [], links: { self: `${baseUrl(s.config, req)}/v3/auth/catalog` } };
  });
  app.get('/v3/auth/projects', { config: { ...KS, auth: 'token' }, schema: { tags: ['identity'], summary: 'The projects the token\'s user has a role on', response: { 200: Type.Object({ projects: Type.Array(ProjectJson), links: ListLinks }) } } }, async (req) => {
    const ctx = req.auth!;
    const all = await s.identity.listProjects();
    const mine = [];
    for (const p of all) if (await s.identity.hasRole(p.id, ctx.user.id, 'member') || await s.identity.hasRole(p.id, ctx.user.id, 'admin')) mine.push(projectJson(req, s, p));
    return { projects: mine, links: { self: `${baseUrl(s.config, req)}/v3/auth/projects`, next: null, previous: null } };
  });

  // Identity management: the cloud admin only.
  const ADMIN = { ...KS, auth: 'cloudAdmin' as const };
  const ProjectBody = Type.Object({ project: Type.Object({ name: Type.String({ minLength: 1, maxLength: 64 }), description: Type.Optional(Type.String({ maxLength: 255 })), enabled: Type.Optional(Type.Boolean()), domain_id: Type.Optional(Type.String()) }) });
  app.post('/v3/projects', { config: ADMIN, schema: { body: ProjectBody, tags: ['identity'], summary: 'Create a project', response: { 201: Type.Object({ project: ProjectJson }) } } }, async (req, reply) => {
    const b = req.body.project;
    const p = await s.identity.createProject({ name: b.name, description: b.description, enabled: b.enabled, domainId: b.domain_id });
    return reply.code(201).send({ project: projectJson(req, s, p) });
  });
  app.get('/v3/projects', { config: ADMIN, schema: { querystring: Type.Object({ name: Type.Optional(Type.String()) }), tags: ['identity'], summary: 'List projects', response: { 200: Type.Object({ projects: Type.Array(ProjectJson), links: ListLinks }) } } }, async (req) => {
    const { name } = req.query;
    const all = (await s.identity.listProjects()).filter((p) => name === undefined || p.name === name);
    return { projects: all.map((p) => projectJson(req, s, p)), links: { self: `${baseUrl(s.config, req)}/v3/projects`, next: null, previous: null } };
  });
  app.get('/v3/projects/:projectId', { config: { ...KS, auth: 'token' }, schema: { params: ProjectParams, tags: ['identity'], summary: 'Show a project', response: { 200: Type.Object({ project: ProjectJson }) } } }, async (req) => {
    const { projectId } = req.params;
    if (!req.auth!.isCloudAdmin && req.auth!.project?.id !== projectId) throw new ApiError(403, 'You are not authorized to perform the requested action.');
    return { project: projectJson(req, s, await s.identity.getProject(projectId)) };
  });

  const Enabled = Type.Object({ enabled: Type.Optional(Type.Boolean()) });
  app.patch('/v3/projects/:projectId', { config: ADMIN, schema: { params: ProjectParams, body: Type.Object({ project: Enabled }), tags: ['identity'], summary: 'Enable or disable a project', response: { 200: Type.Object({ project: ProjectJson }) } } }, async (req) => {
    const { projectId } = req.params;
    const { enabled } = req.body.project;
    const p = enabled === undefined ? await s.identity.getProject(projectId) : await s.identity.setProjectEnabled(projectId, enabled);
    return { project: projectJson(req, s, p) };
  });

  const UserBody = Type.Object({ user: Type.Object({ name: Type.String({ minLength: 1, maxLength: 255 }), password: Type.String({ minLength: 1 }), default_project_id: Type.Optional(Type.String()), enabled: Type.Optional(Type.Boolean()), domain_id: Type.Optional(Type.String()) }) });
  app.post('/v3/users', { config: ADMIN, schema: { body: UserBody, tags: ['identity'], summary: 'Create a user', response: { 201: Type.Object({ user: UserJson }) } } }, async (req, reply) => {
    const b = req.body.user;
    const u = await s.identity.createUser({ name: b.name, password: b.password, defaultProjectId: b.default_project_id, enabled: b.enabled, domainId: b.domain_id });
    return reply.code(201).send({ user: userJson(req, s, u) });
  });
  app.get('/v3/users', { config: ADMIN, schema: { querystring: Type.Object({ name: Type.Optional(Type.String()) }), tags: ['identity'], summary: 'List users', response: { 200: Type.Object({ users: Type.Array(UserJson), links: ListLinks }) } } }, async (req) => {
    const { name } = req.query;
    const all = (await s.identity.listUsers()).filter((u) => name === undefined || u.name === name);
    return { users: all.map((u) => userJson(req, s, u)), links: { self: `${baseUrl(s.config, req)}/v3/users`, next: null, previous: null } };
  });
  app.get('/v3/users/:userId', { config: ADMIN, schema: { params: UserParams, tags: ['identity'], summary: 'Show a user', response: { 200: Type.Object({ user: UserJson }) } } }, async (req) => ({ user: userJson(req, s, await s.identity.getUser(req.params.userId)) }));
  app.patch('/v3/users/:userId', { config: ADMIN, schema: { params: UserParams, body: Type.Object({ user: Enabled }), tags: ['identity'], summary: 'Enable or disable a user', response: { 200: Type.Object({ user: UserJson }) } } }, async (req) => {
    const { userId } = req.params;
    const { enabled } = req.body.user;
    const u = enabled === undefined ? await s.identity.getUser(userId) : await s.identity.setUserEnabled(userId, enabled);
    return { user: userJson(req, s, u) };
  });
  app.delete('/v3/users/:userId', { config: ADMIN, schema: { params: UserParams, tags: ['identity'], summary: 'Delete a user (its role assignments and tokens go with it)', response: { 204: NoBody } } }, async (req, reply) => {
    await s.identity.deleteUser(req.params.userId);
    return reply.code(204).send();
  });
  app.get('/v3/roles', { config: { ...KS, auth: 'token' }, schema: { tags: ['identity'], summary: 'List roles', response: { 200: Type.Object({ roles: Type.Array(Type.Object({ id: Str, name: Str, domain_id: Type.Null(), links: Type.Object({ self: Str }) })) }) } } }, async (req) => ({ roles: ROLES.map((r) => ({ id: roleId(r), name: r, domain_id: null, links: { self: `${baseUrl(s.config, req)}/v3/roles/${roleId(r)}` } })) }));

  const roleOf = (r: string) => IdentityService.parseRole(r.startsWith('role-') ? r.slice(5) : r);
  const assignment = async (req: { params: Static<typeof AssignmentParams> }) => {
    const { projectId, userId, roleId: r } = req.params;
    return { projectId, userId, role: roleOf(r) };
  };
  app.put('/v3/projects/:projectId/users/:userId/roles/:roleId', { config: ADMIN, schema: { params: AssignmentParams, tags: ['identity'], summary: 'Grant a role on a project', response: { 204: NoBody } } }, async (req, reply) => {
    const a = await assignment(req);
    await s.identity.grantRole(a.projectId, a.userId, a.role);
    return reply.code(204).send();
  });
  app.head('/v3/projects/:projectId/users/:userId/roles/:roleId', { config: ADMIN, schema: { params: AssignmentParams, tags: ['identity'], summary: 'Check a role assignment' } }, async (req, reply) => {
    const a = await assignment(req);
    if (!(await s.identity.hasRole(a.projectId, a.userId, a.role))) throw new ApiError(404, 'Could not find role assignment.');
    return reply.code(204).send();
  });
  app.delete('/v3/projects/:projectId/users/:userId/roles/:roleId', { config: ADMIN, schema: { params: AssignmentParams, tags: ['identity'], summary: 'Revoke a role', response: { 204: NoBody } } }, async (req, reply) => {
    const a = await assignment(req);
    await s.identity.revokeRole(a.projectId, a.userId, a.role);
    return reply.code(204).send();
  });
  app.get('/v3/projects/:projectId/users/:userId/roles', { config: ADMIN, schema: { params: ProjectUserParams, tags: ['identity'], summary: 'List roles of a user on a project', response: { 200: Type.Object({ roles: Type.Array(RoleRef) }) } } }, async (req) => {
    const { projectId, userId } = req.params;
    const roles = ROLES.filter(() => true);
    const have = [];
    for (const r of roles) if (await s.identity.hasRole(projectId, userId, r)) have.push({ id: roleId(r), name: r });
    return { roles: have };
  });
}
