/**
 * Haven's own API for agents (/haven/v1/agent/*, with an agent token: `Authorization: Bearer
 * hvagent_…`) and the cloud admin's view of them (/haven/v1/agents, with a cloud-admin token).
 * services/agent-service.ts holds the rules; agent/agent.ts is the client.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import type { AgentView } from '../services/agent-service.ts';
import type { ApiServices } from './server.ts';
import { PathParam, typed } from './typed-routes.ts';
import { NoBody } from './wire/schemas.ts';

const Text = (max: number) => Type.String({ minLength: 1, maxLength: max });
const Session = Type.String({ pattern: '^[0-9a-f]{32}$' });
const WireError = Type.Object({ code: Text(64), message: Type.String({ maxLength: 65536 }), details: Type.Optional(Type.Record(Type.String(), Type.Unknown())) });
const Register = Type.Object({
  // Printable text only: these are shown to the admin and written to logs.
  version: Type.String({ minLength: 1, maxLength: 64, pattern: '^[\\x21-\\x7e]+$' }),
  volume_roots: Type.Array(Type.String({ minLength: 1, maxLength: 4096, pattern: '^/[^\\x00-\\x1f\\x7f]*$' }), { maxItems: 256 }),
  capabilities: Type.Array(Type.String({ minLength: 1, maxLength: 64, pattern: '^[a-z0-9-]+$' }), { maxItems: 32 }),
  instance: Type.Optional(Type.String({ pattern: '^[0-9a-f]{32}$' })),
});
const Heartbeat = Type.Object({
  session: Session,
  work: Type.Array(Type.Object({ id: Text(64), done: Type.Integer({ minimum: 0 }), total: Type.Integer({ minimum: 0 }) }), { maxItems: 1024 }),
});
const Claim = Type.Object({ session: Session, slots: Type.Integer({ minimum: 0, maximum: 64 }), quick_slots: Type.Optional(Type.Integer({ minimum: 0, maximum: 16 })) });
const Result = Type.Object({ session: Session, ok: Type.Boolean(), result: Type.Optional(Type.Unknown()), error: Type.Optional(WireError) });
const HostParams = Type.Object({ host: PathParam });
const WorkParams = Type.Object({ workId: PathParam });
const CreateToken = Type.Object({ host: Text(253) });

const AGENT = { auth: 'agent' as const };
const ADMIN = { auth: 'cloudAdmin' as const };

/** The agent's host, from its token (the auth hook put it there). */
const hostOf = (req: FastifyRequest): string => req.agentHost!;

// What the agent operations answer (OpenAPI; the tests check real answers against these).
const Time = Type.String({ description: 'ISO 8601' });
const AgentJson = Type.Object({
  host: Type.String(), version: Type.String(), embedded: Type.Boolean(), online: Type.Boolean(), draining: Type.Boolean(), registered_at: Time, last_heartbeat: Time,
  volume_roots: Type.Array(Type.String()), capabilities: Type.Array(Type.String()), volumes: Type.Integer({ description: 'volumes on this host' }),
  running_jobs: Type.Array(Type.Object({ work_id: Type.String(), job_id: Type.Union([Type.String(), Type.Null()]), kind: Type.String(), progress_done: Type.Integer(), progress_total: Type.Integer(), started_at: Time })),
});

export function agentJson(a: AgentView) {
  return {
    host: a.host, version: a.version, embedded: a.embedded, online: a.online, draining: a.draining, registered_at: new Date(a.registeredAt).toISOString(),
    last_heartbeat: new Date(a.heartbeatAt).toISOString(), volume_roots: a.volumeRoots, capabilities: a.capabilities, volumes: a.volumes,
    running_jobs: a.running.map((w) => ({ work_id: w.id, job_id: w.jobId, kind: w.kind, progress_done: w.progressDone, progress_total: w.progressTotal, started_at: new Date(w.updatedAt).toISOString() })),
  };
}

export function registerAgentRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  const tags = ['agents'];
  app.post('/haven/v1/agent/register', { config: AGENT, schema: { body: Register, tags, summary: 'An agent starts (agent token)', response: { 200: Type.Object({ host: Type.String(), session: Type.String(), lease_seconds: Type.Number() }) } } }, async (req) => {
    const b = req.body;
    const r = await s.agents.register(hostOf(req), { version: b.version, volumeRoots: b.volume_roots, capabilities: b.capabilities, instance: b.instance ?? null });
    return { host: hostOf(req), session: r.session, lease_seconds: r.leaseMs / 1000 };
  });
  app.post('/haven/v1/agent/heartbeat', { config: AGENT, schema: { body: Heartbeat, tags, summary: 'An agent is alive and renews its work\'s leases (agent token)', response: { 200: Type.Object({ stop: Type.Array(Type.Object({ id: Type.String(), reason: Type.String() }), { description: 'work to stop, and why' }), draining: Type.Boolean() }) } } }, async (req) => {
    const r = await s.agents.heartbeat(hostOf(req), req.body.session, req.body.work);
    return { stop: r.stop, draining: r.draining };
  });
  app.post('/haven/v1/agent/claim', { config: AGENT, schema: { body: Claim, tags, summary: 'An agent takes queued work of its host (agent token)', response: { 200: Type.Object({ work: Type.Array(Type.Object({ id: Type.String(), kind: Type.String(), request: Type.Unknown({ description: 'the work\'s order, by kind (services/volume-host.ts)' }) })) }) } } }, async (req) => {
    return { work: await s.agents.claim(hostOf(req), req.body.session, req.body.slots, req.body.quick_slots ?? 0) };
  });
  app.post('/haven/v1/agent/work/:workId/result', { config: AGENT, schema: { params: WorkParams, body: Result, tags, summary: 'An agent ends work with its result (agent token)', response: { 204: NoBody } } }, async (req, reply) => {
    const b = req.body;
    await s.agents.finish(hostOf(req), b.session, req.params.workId, b.ok ? { ok: true, result: b.result ?? null } : { ok: false, error: b.error ?? { code: 'INTERNAL_ERROR', message: 'the agent gave no reason' } });
    return reply.code(204).send();
  });

  app.get('/haven/v1/agents', { config: ADMIN, schema: { tags, summary: 'List agents: host, version, last heartbeat, volumes, running jobs (cloud admin)', response: { 200: Type.Object({ agents: Type.Array(AgentJson) }) } } }, async () => {
    return { agents: (await s.agents.list()).map(agentJson) };
  });
  app.get('/haven/v1/agents/:host', { config: ADMIN, schema: { params: HostParams, tags, summary: 'Show an agent (cloud admin)', response: { 200: Type.Object({ agent: AgentJson }) } } }, async (req) => {
    return { agent: agentJson(await s.agents.get(req.params.host)) };
  });
  app.post('/haven/v1/agents/:host/drain', { config: ADMIN, schema: { params: HostParams, tags, summary: 'Drain a host: no new work or volumes; running work finishes (cloud admin)', response: { 200: Type.Object({ agent: AgentJson }) } } }, async (req) => {
    return { agent: agentJson(await s.agents.setDraining(req.params.host, true)) };
  });
  app.post('/haven/v1/agents/:host/undrain', { config: ADMIN, schema: { params: HostParams, tags, summary: 'Take a drained host back (cloud admin)', response: { 200: Type.Object({ agent: AgentJson }) } } }, async (req) => {
    return { agent: agentJson(await s.agents.setDraining(req.params.host, false)) };
  });
  app.get('/haven/v1/agents/tokens', { config: ADMIN, schema: { tags, summary: 'List agent tokens: id, host, created, revoked (never the secret) (cloud admin)', response: { 200: Type.Object({ agent_tokens: Type.Array(Type.Object({ id: Type.String(), host: Type.String(), created_at: Time, revoked_at: Type.Union([Time, Type.Null()]) })) }) } } }, async () => {
    return { agent_tokens: (await s.agents.listTokens()).map((t) => ({ id: t.id, host: t.host, created_at: new Date(t.createdAt).toISOString(), revoked_at: t.revokedAt === null ? null : new Date(t.revokedAt).toISOString() })) };
  });
  app.delete('/haven/v1/agents/tokens/:tokenId', { config: ADMIN, schema: { params: Type.Object({ tokenId: PathParam }), tags, summary: 'Revoke an agent token (cloud admin)', response: { 204: NoBody } } }, async (req, reply) => {
    await s.agents.revokeToken(req.params.tokenId);
    return reply.code(204).send();
  });
  app.post('/haven/v1/agents/tokens', { config: ADMIN, schema: { body: CreateToken, tags, summary: 'Issue an agent token for a host (cloud admin); shown once', response: { 201: Type.Object({ agent_token: Type.Object({ id: Type.String(), host: Type.String(), token: Type.String({ description: 'the secret: shown this once' }) }) }) } } }, async (req, reply) => {
    const t = await s.agents.createToken(req.body.host);
    return reply.code(201).send({ agent_token: { id: t.id, host: t.host, token: t.token } });
  });
}
