/**
 * buildServer: the HTTP API as a fastify instance (no listen), so tests use inject() without sockets.
 *
 * Cross-cutting rules live here and nowhere else: request ids (x-openstack-request-id), JSON bodies
 * (an empty body with a JSON content type is accepted, as otcextensions sends one), the error
 * envelope of each API family (api/errors.ts), token checks, 404 for unknown routes and 405 for a
 * known route with the wrong method, 413 for oversized bodies. A client never sees a stack trace.
 */
import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { Ajv, type Options as AjvOptions } from 'ajv';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import fastifySwagger from '@fastify/swagger';
import type { Logger as PinoLogger } from 'pino';
import { runInRequest } from '../domain/request-context.ts';
import type { Config } from '../config/config.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';
import type { AuthContext, IdentityService } from '../services/identity-service.ts';
import type { BackupService } from '../services/backup-service.ts';
import type { VolumeService } from '../services/volume-service.ts';
import type { PolicyService } from '../services/policy-service.ts';
import type { SharingService } from '../services/sharing-service.ts';
import type { ServerService } from '../services/server-service.ts';
import type { ServerBackupService } from '../services/server-backup-service.ts';
import type { CsbsPolicyService } from '../services/csbs-policy-service.ts';
import type { CsbsTagService } from '../services/csbs-tag-service.ts';
import type { QuotaService } from '../services/quota-service.ts';
import type { ExportService } from '../services/export-service.ts';
import type { AgentService } from '../services/agent-service.ts';
import type { RepositoryService } from '../services/repository-service.ts';
import { ApiError, envelope, errorResponses, isClientError, replyForError, type Envelope, type RouteErrorCodes, type ValidationCodes } from './errors.ts';
import type { Metrics } from './metrics.ts';
import { registerIdentityRoutes } from './identity/identity.routes.ts';
import { registerVersionRoutes } from './versions.routes.ts';
import { registerVolumeRoutes } from './cinder/volumes.routes.ts';
import { registerNativeBackupRoutes } from './cinder/backups.routes.ts';
import { registerQuotaRoutes } from './cinder/quotas.routes.ts';
import { registerVbsBackupRoutes } from './vbs/cloudbackups.routes.ts';
import { registerOpsRoutes } from './ops.routes.ts';
import { registerPolicyRoutes } from './vbs/policies.routes.ts';
import { registerSharingRoutes } from './vbs/sharing.routes.ts';
import { registerServerRoutes } from './nova/servers.routes.ts';
import { registerCheckpointRoutes } from './csbs/checkpoints.routes.ts';
import { registerCsbsPolicyRoutes } from './csbs/policies.routes.ts';
import { registerCsbsTagRoutes } from './csbs/tags.routes.ts';
import { registerAgentRoutes } from './agents.routes.ts';
import { registerHavenRoutes } from './haven.routes.ts';
import { registerConsole } from './console-static.ts';

export interface ApiServices {
  config: Config;
  identity: IdentityService;
  volumes: VolumeService;
  backups: BackupService;
  policies: PolicyService;
  sharing: SharingService;
  servers: ServerService;
  serverBackups: ServerBackupService;
  csbsPolicies: CsbsPolicyService;
  csbsTags: CsbsTagService;
  quotas: QuotaService;
  agents: AgentService;
  /** Backups served as NBD disks (Haven extension). */
  exports: ExportService;
  /** The repository's figures and growth (GET /haven/v1/repository). */
  repository: RepositoryService;
  metrics: Metrics;
  /** Health of the parts /healthz reports on. */
  health(): Promise<Record<string, string>>;
}

/**
 * What a route requires of the caller's token. 'cloudAdmin': the admin role on the admin project
 * (HAVEN_ADMIN_PROJECT) with a token scoped to it (identity management, cross-project powers);
 * 'projectOrCloudAdmin': scoped to the path's project, or the cloud admin (e.g. another project's
 * quotas). The admin role on any other project is a role on that project only.
 */
export type AuthMode = 'none' | 'token' | 'project' | 'projectOrCloudAdmin' | 'cloudAdmin' | 'agent';
const AUTH_MODES: readonly AuthMode[] = ['none', 'token', 'project', 'projectOrCloudAdmin', 'cloudAdmin', 'agent'];

declare module 'fastify' {
  interface FastifyContextConfig {
    envelope?: Envelope;
    auth?: AuthMode;
    errorCodes?: RouteErrorCodes;
    validation?: ValidationCodes;
  }
  interface FastifyRequest {
    auth: AuthContext | null;
    /** An agent's host, from its token (routes with auth 'agent'). */
    agentHost: string | null;
  }
}

const AJV_BASE: AjvOptions = { allErrors: false, useDefaults: true, removeAdditional: false, strict: false };

function pathEnvelope(url: string): Envelope {
  const p = url.split('?')[0]!;
  if (/^\/v3\/(auth|projects|users|roles|domains)(\/|$)/.test(p) || p === '/v3/') return 'keystone';
  if (/^\/v1\/[^/]+\/(policies|providers|checkpoint_items|restores|quotas|csbs_backup|csbs_backup_policy)(\/|$)/.test(p)) return 'csbs';
  if (/^\/v1\//.test(p) || /^\/v2\/[^/]+\/(backuppolicy|backuppolicyresources|cloudbackups|os-vendor-backup-sharing|jobs)(\/|$)/.test(p)) return 'vbs';
  return 'cinder';
}

/** The base URL clients reach this server at: HAVEN_PUBLIC_URL, else the request's own. */
export function baseUrl(config: Config, req: FastifyRequest): string {
  return config.publicUrl || `${req.protocol}://${req.host}`;
}

const MAX_PARAM_LENGTH = 500;

/**
 * Errors Node's HTTP parser answers before fastify sees a request (oversized headers: 431, a
 * malformed request: 400, a client too slow: 408), written raw in the envelope of the API family
 * the request line names (the parser keeps the bytes it read in err.rawPacket).
 */
function clientErrorHandler(this: FastifyInstance, error: Error, socket: Duplex): void {
  const err = error as Error & { code?: string; rawPacket?: unknown };
  if (err.code === 'ECONNRESET' || socket.destroyed) return; // nothing left to answer
  const [status, message] = err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'The request\'s header fields are too large.']
    : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'The request was not received in time.']
    : [400, 'The request is not valid HTTP.'];
  const raw = Buffer.isBuffer(err.rawPacket) ? err.rawPacket.subarray(0, 8192).toString('latin1') : '';
  const target = /^[A-Z]+ (\/\S*) HTTP\//.exec(raw)?.[1] ?? '/';
  const body = JSON.stringify(envelope(pathEnvelope(target), status, message).body);
  this.log.debug({ err }, 'client error');
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy();
}

export async function buildServer(services: ApiServices, opts: { logger?: PinoLogger; https?: { cert: Buffer; key: Buffer } } = {}): Promise<FastifyInstance> {
  const { config } = services;
  const app = Fastify({
    ...(opts.logger ? { loggerInstance: opts.logger as unknown as FastifyBaseLogger } : { logger: false }),
    ...(opts.https ? { https: { cert: opts.https.cert, key: opts.https.key } } : {}),
    bodyLimit: config.bodyLimitBytes,
    genReqId: () => `req-${randomUUID()}`,
    // One line per request, when it is answered (onResponse below), not one when it comes and one when it goes.
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    routerOptions: { ignoreTrailingSlash: true, ignoreDuplicateSlashes: true, maxParamLength: MAX_PARAM_LENGTH },
    clientErrorHandler,
    // Errors the router raises before a route is found: a path parameter too long (414), a path
    // that is not valid percent-encoding (400).
    frameworkErrors: (err: FastifyError, req: FastifyRequest, reply: FastifyReply) => {
      const tooLong = err.code === 'FST_ERR_MAX_PARAM_LENGTH';
      const out = envelope(pathEnvelope(req.url), tooLong ? 414 : 400, tooLong ? `The request URI is too long: a path parameter is longer than ${MAX_PARAM_LENGTH} characters.` : 'The request path is not valid (bad percent-encoding).');
      void reply.code(out.statusCode).type('application/json').send(out.body);
    },
  }) as unknown as FastifyInstance;
  // Bodies are validated as sent (a string is not an integer); query strings are coerced from text.
  const bodyAjv = new Ajv({ ...AJV_BASE, coerceTypes: false });
  const queryAjv = new Ajv({ ...AJV_BASE, coerceTypes: 'array' });
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? bodyAjv : queryAjv).compile(schema));

  // Each route's response schemas by status ("GET /v2/:projectId/cloudbackups"): the tests check
  // real answers against them (test/helpers/service.ts).
  const responseSchemas = new Map<string, Record<string, unknown>>();
  app.decorate('responseSchemas', responseSchemas);
  app.decorateRequest('auth', null);
  app.decorateRequest('agentHost', null);
  app.addHook('onRequest', (req, reply, done) => {
    reply.header('x-openstack-request-id', req.id);
    // The rest of the request runs in its context: the jobs it creates record its id.
    runInRequest(req.id, done);
  });

  app.removeAllContentTypeParsers();
  app.addContentTypeParser(['application/json', 'application/openstack-images-v2.1-json-patch'], { parseAs: 'string' }, (_req, body, done) => {
    const text = (body as string).trim();
    if (!text) return done(null, undefined); // otcextensions posts "" with a JSON content type
    try {
      done(null, JSON.parse(text) as unknown);
    } catch (err) {
      // Not the parser's message: it quotes the body around the error, which may hold a password.
      const at = /position (\d+)/.exec((err as Error).message)?.[1];
      done(new ApiError(400, `The request body is not valid JSON${at ? ` (error at position ${at})` : ''}.`) as unknown as FastifyError, undefined);
    }
  });
  // Some clients send bodiless POSTs with a form or text content type; such bodies are ignored.
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    if (!(body as string).trim()) return done(null, undefined);
    done(new ApiError(415, 'Request bodies must be JSON (Content-Type: application/json).') as unknown as FastifyError, undefined);
  });

  // Response schemas document the API (OpenAPI) and are checked against real answers in the tests;
  // they never shape what is sent: fast-json-stringify would silently drop a field a schema forgot,
  // and a client would lose it. Every reply is JSON.stringify of what the handler returned.
  app.setSerializerCompiler(() => (data: unknown) => JSON.stringify(data));

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Haven API', version: '0.1.0', description: 'OTC VBS / Cinder backup / Keystone-compatible API of Haven' },
      components: { securitySchemes: { token: { type: 'apiKey', in: 'header', name: 'X-Auth-Token' } } },
      security: [{ token: [] }],
    },
  });

  // Token checks, per the route's auth mode: before the body is even parsed, so an unauthenticated
  // client learns nothing (not even the request schema) from a 400. Callback-style hooks with a
  // synchronous path for cached tokens: this runs on every request.
  const checkScope = (req: FastifyRequest, mode: AuthMode, ctx: AuthContext): void => {
    req.auth = ctx;
    if (mode === 'project' || (mode === 'projectOrCloudAdmin' && !ctx.isCloudAdmin)) {
      const pid = (req.params as { projectId?: string }).projectId;
      if (!ctx.project || ctx.project.id !== pid) throw new ApiError(403, `The token is not scoped to project ${pid ?? ''}.`, 'VolumeBackup.0042');
    } else if (mode === 'cloudAdmin') {
      if (!ctx.isCloudAdmin) throw new ApiError(403, `You are not authorized to perform the requested action: the admin role on the admin project (${services.identity.adminProject}) is required.`, 'VolumeBackup.0042');
    }
  };
  // Authentication is the default: every route states its mode (registration fails otherwise), and
  // a request that matched no route (404/405) is the only one answered without a token.
  app.addHook('onRoute', (r) => {
    const mode = (r.config as { auth?: unknown } | undefined)?.auth;
    if (!AUTH_MODES.includes(mode as AuthMode)) throw new Error(`Route ${[r.method].flat().join(',')} ${r.url} states no auth mode (config.auth: one of ${AUTH_MODES.join(', ')}); opting out is auth: 'none'.`);
    // The OpenAPI document says it too: x-haven-auth per operation, no security for public ones.
    // Every API route's errors come in its family's envelope (replyForError): documented as such.
    const api = /^\/(v1|v2|v2\.1|v3|haven)\//.test(r.url);
    const response = { ...(api ? errorResponses(pathEnvelope(r.url)) : {}), ...(r.schema?.response as object | undefined) };
    r.schema = { ...r.schema, ...{ 'x-haven-auth': mode }, ...(mode === 'none' ? { security: [] } : {}), ...(Object.keys(response).length ? { response } : {}) };
    for (const m of [r.method].flat()) responseSchemas.set(`${String(m)} ${r.url}`, response as Record<string, unknown>);
  });
  app.addHook('onRequest', (req, _reply, done) => {
    const mode = req.routeOptions.config.auth ?? (req.is404 ? 'none' : 'project');
    if (mode === 'none') return done();
    if (mode === 'agent') {
      // Agents carry their own credential (services/agent-service.ts), never a user's token.
      const bearer = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
      if (!bearer) return done(new ApiError(401, 'The request you have made requires an agent token (Authorization: Bearer hvagent_…).') as unknown as FastifyError);
      services.agents.authenticate(bearer).then(
        (a) => {
          req.agentHost = a.host;
          done();
        },
        (err: unknown) => done((isClientError(err) ? new ApiError(401, 'The agent token is not valid.') : err) as FastifyError),
      );
      return;
    }
    const token = req.headers['x-auth-token'];
    if (typeof token !== 'string' || !token) return done(new ApiError(401, 'The request you have made requires authentication.', 'AutoBackup.0002') as unknown as FastifyError);
    const cached = services.identity.peekToken(token);
    if (cached) {
      try {
        checkScope(req, mode, cached);
      } catch (err) {
        return done(err as FastifyError);
      }
      return done();
    }
    services.identity.validateToken(token).then(
      (ctx) => {
        try {
          checkScope(req, mode, ctx);
          done();
        } catch (err) {
          done(err as FastifyError);
        }
      },
      (err: unknown) => done((isClientError(err) ? new ApiError(401, 'The request you have made requires authentication.', 'AutoBackup.0003') : err) as FastifyError),
    );
  });

  app.setErrorHandler((err: FastifyError & { validation?: { instancePath: string; keyword: string; message?: string; params: Record<string, unknown> }[]; validationContext?: string }, req, reply) => {
    const cfg = req.routeOptions.config;
    const kind = cfg.envelope ?? pathEnvelope(req.url);
    let out;
    if (err.validation?.length) {
      const v = err.validation[0]!;
      const missing = v.keyword === 'required' ? `/${String(v.params.missingProperty)}` : '';
      const where = `${v.instancePath}${missing}`;
      const codes = cfg.validation;
      const byPath = codes?.paths?.[where.replace(/\/\d+(?=\/|$)/g, '/*')];
      const rule = byPath?.[v.keyword] ?? byPath?.['*'];
      const code = (typeof rule === 'string' ? rule : rule?.[0]) ?? codes?.fallback;
      const field = `${err.validationContext ?? 'request'}${where.replaceAll('/', '.')}`;
      const text = typeof rule === 'object' ? rule[1] : v.keyword === 'required' ? 'is required' : (v.message ?? 'is invalid');
      const msg = `${field} ${text}`;
      out = envelope(kind, 400, `Invalid input received: ${msg}.`, code);
    } else if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      out = envelope(kind, 413, `Request body is larger than ${config.bodyLimitBytes} bytes.`);
    } else if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      out = envelope(kind, 415, 'Request bodies must be JSON (Content-Type: application/json).');
    } else if (err instanceof ApiError || (err as unknown) instanceof AppError) {
      out = replyForError(kind, err, cfg.errorCodes);
    } else if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
      out = envelope(kind, err.statusCode, err.message);
    } else {
      out = replyForError(kind, err, cfg.errorCodes);
    }
    // A login refused while password hashing is saturated is load, not a fault.
    if (out.statusCode >= 500 && !((err as unknown) instanceof AppError && (err as unknown as AppError).code === ErrorCode.ServiceBusy)) req.log.error({ err }, 'request failed');
    // Throttled (429) and busy (503) answers say when to come back.
    const retryAfter = (err as unknown) instanceof AppError ? (err as unknown as AppError).details?.retryAfterSeconds : undefined;
    if (typeof retryAfter === 'number') void reply.header('retry-after', String(retryAfter));
    void reply.code(out.statusCode).type('application/json').send(out.body);
  });

  // 405 for a known path with another method, 404 otherwise.
  const routes: { method: string; re: RegExp }[] = [];
  app.addHook('onRoute', (r) => {
    const re = new RegExp(`^${r.url.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/:[A-Za-z_]+/g, '[^/]+')}/?$`);
    for (const m of [r.method].flat()) routes.push({ method: String(m), re });
  });
  app.setNotFoundHandler((req: FastifyRequest, reply: FastifyReply) => {
    const p = req.url.split('?')[0]!.replace(/\/{2,}/g, '/');
    const allowed = [...new Set(routes.filter((r) => r.re.test(p)).map((r) => r.method))].filter((m) => m !== 'HEAD');
    const kind = pathEnvelope(req.url);
    if (allowed.length) {
      const out = envelope(kind, 405, `Method ${req.method} is not allowed for ${p}; allowed: ${allowed.join(', ')}.`);
      return reply.code(405).header('allow', allowed.join(', ')).send(out.body);
    }
    const out = envelope(kind, 404, `The resource could not be found: ${p}`);
    return reply.code(404).send(out.body);
  });

  app.addHook('onResponse', (req, reply, done) => {
    services.metrics.observeRequest(req.method, req.routeOptions.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000);
    req.log.info({ method: req.method, url: req.url.split('?')[0], statusCode: reply.statusCode, responseTimeMs: Math.round(reply.elapsedTime * 10) / 10 }, 'request');
    done();
  });

  registerOpsRoutes(app, services);
  registerVersionRoutes(app, services);
  registerIdentityRoutes(app, services);
  registerVolumeRoutes(app, services);
  registerNativeBackupRoutes(app, services);
  registerQuotaRoutes(app, services);
  registerVbsBackupRoutes(app, services);
  registerPolicyRoutes(app, services);
  registerSharingRoutes(app, services);
  registerServerRoutes(app, services);
  registerCheckpointRoutes(app, services);
  registerCsbsPolicyRoutes(app, services);
  registerCsbsTagRoutes(app, services);
  registerAgentRoutes(app, services);
  registerHavenRoutes(app, services);
  await registerConsole(app);
  return app;
}
