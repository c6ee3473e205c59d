/**
 * The world the attack suites work in, and what they read from the OpenAPI document.
 *
 * - `buildWorld`: one Haven (inject(), no sockets) with projects that each hold one of every kind
 *   of resource (volume with data, snapshot, backup and its job, VBS policy with a tag and the
 *   volume associated, a sharing, a server with the volume attached, a CSBS checkpoint and its
 *   item with a tag, a CSBS policy with a tag), a member and a project admin (the admin role on
 *   that project only, not the cloud admin); and one agent (its token, registered under its
 *   host), shared by every project: a host is not a project's resource.
 * - `fingerprint`: everything a project can see of itself (lists and shows, as its own member and
 *   as the cloud admin), to compare before and after an attack.
 * - `operations`: every operation of GET /openapi.json, with its auth mode, body and query schemas.
 * - `exampleOf`: a schema-valid instance of a body schema, id-like fields filled by a callback.
 * - `familyOf` / `assertEnvelope`: the error envelope each API family answers in.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { statSync } from 'node:fs';
import * as path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import type { LightMyRequestResponse } from 'fastify';
import { ADMIN_PASSWORD, type TestService } from '../helpers/service.ts';
import { assertCinderError, assertKeystoneError, assertNoStack, assertVbsError } from '../helpers/api.ts';
import { listFilesRecursive, MiB, overwrite, randomBytesSeeded } from '../helpers/volumes.ts';

export const PROVIDER = 'fc4d5750-22e7-4798-8a46-f48f62c4c1da';
export const NIL_UUID = '00000000-0000-4000-8000-000000000000';

export interface Who {
  token: string;
  projectId: string;
  userId: string;
}

/**
 * The agent of a host: its token (`Authorization: Bearer hvagent_…`) and its current session. One
 * for the whole world, not a project's: its values in a request are never the victim's.
 */
export interface Agent {
  host: string;
  token: string;
  /** The session of its latest registration (a new registration ends the ones before). */
  session: string;
  /** A work id no work has: a result for it must be refused (409), never a 5xx. */
  workId: string;
}

export const AGENT_HOST = 'attack-host';

/**
 * Registers the world's agent again (a fresh session, as an agent process that starts) and drains
 * it: nothing runs this agent, so no new volume may be placed on its host (an online, undrained
 * agent with fewer volumes than this process would get them, and their work would wait forever).
 */
export async function registerAgent(svc: TestService, agent: Agent): Promise<Agent> {
  agent.session = (await svc.app.agents.register(agent.host, { version: 't', volumeRoots: [], capabilities: [] })).session;
  await svc.app.agents.setDraining(agent.host, true);
  return agent;
}

/** A project with one resource of every kind; names start with `secret-<tag>` so a leak is visible. */
export interface Project {
  tag: string;
  name: string;
  member: Who;
  admin: Who;
  volume: string;
  volumePath: string;
  snapshot: string;
  backup: string;
  job: string;
  vbsPolicy: string;
  vbsTagKey: string;
  share: string;
  server: string;
  checkpoint: string;
  item: string;
  itemTagKey: string;
  csbsPolicy: string;
  csbsTagKey: string;
  /** The world's agent (the same object for every project; not the project's own). */
  agent: Agent;
}

export interface World {
  svc: TestService;
  cloudAdmin: Who;
  projects: Project[];
  /** A third project, the one the sharings go to (so neither A nor B sees the other's backup). */
  third: Who;
  agent: Agent;
}

type Json = Record<string, unknown>;

async function ok(svc: TestService, who: Who, method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, payload?: unknown, status = 200): Promise<Json> {
  const r = await svc.req({ method, url, token: who.token, ...(payload === undefined ? {} : { payload: payload as Json }) });
  assert.equal(r.statusCode, status, `${method} ${url}: ${r.body}`);
  return r.body ? (r.json() as Json) : {};
}

async function makeProject(svc: TestService, tag: string, seed: number, third: Who, agent: Agent): Promise<Project> {
  const name = `secret-${tag}`;
  const member = await svc.tenant(name);
  // A project admin: the admin role on this project only.
  const u = await svc.app.identity.createUser({ name: `${name}-padmin`, password: 'tenant-password', defaultProjectId: member.projectId });
  await svc.app.identity.grantRole(member.projectId, u.id, 'admin');
  const admin = await svc.login(`${name}-padmin`, 'tenant-password', name);
  const P = member.projectId;
  const vol = (await ok(svc, member, 'POST', `/v3/${P}/volumes`, { volume: { size: 1, name: `${name}-volume` } }, 202)).volume as { id: string };
  const volumePath = await svc.volumePath(vol.id);
  await overwrite(volumePath, 0, randomBytesSeeded(1 * MiB, seed));
  const snap = (await ok(svc, member, 'POST', `/v3/${P}/snapshots`, { snapshot: { volume_id: vol.id, name: `${name}-snapshot` } }, 202)).snapshot as { id: string };
  const job = (await ok(svc, member, 'POST', `/v2/${P}/cloudbackups`, { backup: { volume_id: vol.id, name: `${name}-backup` } })).job_id as string;
  const done = await svc.waitJob(member.token, P, job);
  assert.equal(done.status, 'SUCCESS', JSON.stringify(done));
  const backup = (done.entities as { backup_id: string }).backup_id;
  const vbsPolicy = (await ok(svc, member, 'POST', `/v2/${P}/backuppolicy`, { backup_policy_name: `${name}-policy`, scheduled_policy: { start_time: '02:00', frequency: 1, rentention_num: 2, status: 'OFF' } })).backup_policy_id as string;
  const vbsTagKey = `${name}-vtag`;
  await ok(svc, member, 'POST', `/v2/${P}/backuppolicy/${vbsPolicy}/tags`, { tag: { key: vbsTagKey, value: 'v' } }, 204);
  await ok(svc, member, 'POST', `/v2/${P}/backuppolicyresources`, { backup_policy_id: vbsPolicy, resources: [{ resource_id: vol.id, resource_type: 'volume' }] });
  const shared = (await ok(svc, member, 'POST', `/v2/${P}/os-vendor-backup-sharing`, { shared: { backup_id: backup, to_project_ids: [third.projectId] } })).shared as { id: string }[];
  const server = (await ok(svc, member, 'POST', `/v2.1/${P}/servers`, { server: { name: `${name}-server`, block_device_mapping_v2: [{ source_type: 'volume', uuid: vol.id, boot_index: 0 }] } }, 202)).server as { id: string };
  const cp = (await ok(svc, member, 'POST', `/v1/${P}/providers/${PROVIDER}/resources/${server.id}/action`, { protect: { backup_name: `${name}-checkpoint` } })).checkpoint as { id: string };
  await svc.app.runner.idle();
  const items = (await ok(svc, member, 'GET', `/v1/${P}/checkpoint_items?checkpoint_id=${cp.id}`)).checkpoint_items as { id: string; status: string }[];
  assert.equal(items.length, 1);
  assert.equal(items[0]!.status, 'available', JSON.stringify(items));
  const itemTagKey = `${name}-itag`;
  await ok(svc, member, 'POST', `/v1/${P}/csbs_backup/${items[0]!.id}/tags`, { tag: { key: itemTagKey, value: 'v' } }, 204);
  const csbsPolicy = (await ok(svc, member, 'POST', `/v1/${P}/policies`, {
    policy: {
      name: `${name}-csbs`, provider_id: PROVIDER, parameters: { common: {} }, resources: [{ id: server.id, type: 'OS::Nova::Server', name: `${name}-server` }],
      scheduled_operations: [{ enabled: false, operation_type: 'backup', operation_definition: { max_backups: 3 }, trigger: { properties: { pattern: 'RRULE:FREQ=DAILY;BYHOUR=3;BYMINUTE=0' } } }],
    },
  })).policy as { id: string };
  const csbsTagKey = `${name}-ctag`;
  await ok(svc, member, 'POST', `/v1/${P}/csbs_backup_policy/${csbsPolicy.id}/tags`, { tag: { key: csbsTagKey, value: 'v' } }, 204);
  return {
    tag, name, member, admin, volume: vol.id, volumePath, snapshot: snap.id, backup, job, vbsPolicy, vbsTagKey, share: shared[0]!.id, server: server.id,
    checkpoint: cp.id, item: items[0]!.id, itemTagKey, csbsPolicy: csbsPolicy.id, csbsTagKey, agent,
  };
}

export async function buildWorld(svc: TestService, tags: string[]): Promise<World> {
  const cloudAdmin = await svc.login('admin', ADMIN_PASSWORD, 'admin');
  const third = await svc.tenant('charlie');
  const t = await svc.app.agents.createToken(AGENT_HOST);
  const agent = await registerAgent(svc, { host: t.host, token: t.token, session: '', workId: randomUUID() });
  const projects: Project[] = [];
  for (const [i, tag] of tags.entries()) projects.push(await makeProject(svc, tag, 100 + i, third, agent));
  await svc.app.runner.idle();
  return { svc, cloudAdmin, projects, third, agent };
}

/** What project `p` sees of itself (and what the cloud admin sees of it), as one comparable value. */
export async function fingerprint(w: World, p: Project): Promise<Json> {
  const { svc } = w;
  await svc.app.runner.idle();
  const P = p.member.projectId;
  const as = (who: Who) => async (url: string): Promise<unknown> => {
    const r = await svc.req({ method: 'GET', url, token: who.token });
    return { status: r.statusCode, body: r.body ? r.json() : null };
  };
  const get = as(p.member);
  const admin = as(w.cloudAdmin);
  const urls = [
    `/v3/${P}/volumes/detail`, `/v3/${P}/snapshots/detail`, `/v3/${P}/backups/detail`, `/v2/${P}/backuppolicy`, `/v2/${P}/backuppolicy/${p.vbsPolicy}/tags`,
    `/v2/${P}/backuppolicy/${p.vbsPolicy}/backuptasks`, `/v2/${P}/os-vendor-backup-sharing/detail`, `/v2/${P}/cloudbackups/quota`, `/v1/${P}/jobs/${p.job}`,
    `/v2.1/${P}/servers/detail`, `/v2.1/${P}/servers/${p.server}/os-volume_attachments`, `/v1/${P}/checkpoint_items`, `/v1/${P}/policies`, `/v1/${P}/quotas`,
    `/v1/${P}/csbs_backup/${p.item}/tags`, `/v1/${P}/csbs_backup_policy/${p.csbsPolicy}/tags`, `/v3/${P}/os-quota-sets/${P}?usage=true`, `/v3/auth/projects`,
  ];
  const out: Json = {};
  for (const u of urls) out[u] = await get(u);
  out.admin = await as(p.admin)(`/v3/${P}/volumes/detail`);
  for (const u of [`/v3/projects/${P}`, `/v3/users/${p.member.userId}`, `/v3/users/${p.admin.userId}`, `/v3/projects/${P}/users/${p.member.userId}/roles`, `/v3/projects/${P}/users/${p.admin.userId}/roles`]) out[u] = await admin(u);
  const st = statSync(p.volumePath);
  out.volumeFile = { size: st.size, mtimeMs: st.mtimeMs };
  return out;
}

/**
 * Strings that belong to project `p` and to no other: every id and name in its fingerprint that
 * the other projects' fingerprints do not hold (so shared constants such as the provider id are
 * not counted), and its tokens.
 */
export function secretsOf(fp: Json, others: Json[], p: Project): Set<string> {
  const collect = (v: unknown, into: Set<string>, key = ''): void => {
    if (typeof v === 'string') {
      if ((key === 'id' || key.endsWith('_id') || key === 'name' || key === 'key') && v.length >= 8) into.add(v);
    } else if (Array.isArray(v)) for (const x of v) collect(x, into, key);
    else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) collect(x, into, k);
  };
  const mine = new Set<string>();
  collect(fp, mine);
  const theirs = new Set<string>();
  for (const o of others) collect(o, theirs);
  const out = new Set([...mine].filter((s) => !theirs.has(s)));
  for (const s of [p.member.token, p.admin.token, p.member.projectId, p.name, `${p.name}-user`, `${p.name}-padmin`, p.member.userId, p.admin.userId]) out.add(s);
  return out;
}

// ---- the OpenAPI document ----

export interface Schema {
  type?: string;
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  additionalProperties?: Schema | boolean;
  anyOf?: Schema[];
  oneOf?: Schema[];
  allOf?: Schema[];
  enum?: unknown[];
  const?: unknown;
  nullable?: boolean;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  not?: Schema;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  maxItems?: number;
  uniqueItems?: boolean;
}

export interface Operation {
  method: string;
  path: string;
  auth: string;
  pathParams: string[];
  query: { name: string; schema: Schema; required: boolean }[];
  body: Schema | null;
}

export async function operations(svc: TestService): Promise<Operation[]> {
  const r = await svc.req({ method: 'GET', url: '/openapi.json' });
  assert.equal(r.statusCode, 200);
  const doc = r.json() as { paths: Record<string, Record<string, { 'x-haven-auth'?: string; parameters?: { in: string; name: string; schema: Schema; required?: boolean }[]; requestBody?: { content: Record<string, { schema: Schema }> } }>> };
  const out: Operation[] = [];
  for (const [p, ops] of Object.entries(doc.paths)) {
    for (const [m, op] of Object.entries(ops)) {
      assert.ok(op['x-haven-auth'], `${m} ${p} does not state its auth mode`);
      out.push({
        method: m.toUpperCase(), path: p, auth: op['x-haven-auth'],
        pathParams: [...p.matchAll(/\{([^}]+)\}/g)].map((x) => x[1]!),
        query: (op.parameters ?? []).filter((x) => x.in === 'query').map((x) => ({ name: x.name, schema: x.schema, required: x.required === true })),
        body: op.requestBody?.content['application/json']?.schema ?? null,
      });
    }
  }
  return out;
}

/** Strings tried, in order, for a string schema with a pattern. */
const CANDIDATES = ['k1', 'x', '02:00', '/dev/vdb', '5', NIL_UUID, 'RRULE:FREQ=DAILY;BYHOUR=3;BYMINUTE=0'];

function stringFor(s: Schema): string {
  const fits = (v: string) => (!s.pattern || new RegExp(s.pattern, 'u').test(v)) && !(s.not?.pattern && new RegExp(s.not.pattern, 'u').test(v)) && v.length >= (s.minLength ?? 0) && v.length <= (s.maxLength ?? Infinity);
  const found = CANDIDATES.find(fits);
  if (found) return found;
  return 'x'.repeat(Math.max(1, s.minLength ?? 1));
}

/** The schema a union stands for when a value is needed: the first branch that is not null only. */
export function branch(s: Schema): Schema {
  const alts = s.anyOf ?? s.oneOf;
  if (alts) return branch(alts.find((a) => !(a.enum?.length === 1 && a.enum[0] === null)) ?? alts[0]!);
  if (s.allOf) return s.allOf.reduce<Schema>((acc, x) => ({ ...acc, ...x, properties: { ...acc.properties, ...x.properties }, required: [...(acc.required ?? []), ...(x.required ?? [])] }), {});
  return s;
}

/**
 * A schema-valid value of `s`. `idFor(name, path)` may give the value of a string property (an id
 * of the victim, say); properties it gives values for are included even when optional.
 */
export function exampleOf(s: Schema, idFor: (name: string, at: string[]) => unknown, at: string[] = []): unknown {
  const b = branch(s);
  if (b.const !== undefined) return b.const;
  if (b.enum?.length) return b.enum[0];
  const type = b.type ?? (b.properties ? 'object' : 'string');
  switch (type) {
    case 'object': {
      const o: Json = {};
      for (const [k, ps] of Object.entries(b.properties ?? {})) {
        const given = idFor(k, at);
        if (given !== undefined) o[k] = given;
        else if (b.required?.includes(k) || wantsIds(ps, idFor, [...at, k])) o[k] = exampleOf(ps, idFor, [...at, k]);
      }
      return o;
    }
    case 'array': {
      const n = Math.max(b.minItems ?? 0, b.items && wantsIds(b.items, idFor, at) ? 1 : 0);
      return Array.from({ length: n }, () => exampleOf(b.items ?? {}, idFor, at));
    }
    case 'integer':
    case 'number':
      return Math.max(b.minimum ?? 1, Math.min(1, b.maximum ?? 1));
    case 'boolean':
      return false;
    default:
      return stringFor(b);
  }
}

/** Whether a sub-schema holds a property `idFor` fills in (so an optional part is worth sending). */
function wantsIds(s: Schema, idFor: (name: string, at: string[]) => unknown, at: string[], depth = 0): boolean {
  if (depth > 6) return false;
  const b = branch(s);
  if (b.properties) return Object.entries(b.properties).some(([k, ps]) => idFor(k, at) !== undefined || wantsIds(ps, idFor, [...at, k], depth + 1));
  if (b.items) return wantsIds(b.items, idFor, at, depth + 1);
  return false;
}

// ---- the values a project's requests carry ----

/** The value of a path parameter for project `p`; public values (the provider, a role) are marked. */
export function pathValue(op: Operation, name: string, p: Project): { value: string; owned: boolean } {
  const at = op.path;
  switch (name) {
    case 'projectId': return { value: p.member.projectId, owned: true };
    // The defaults are the service's, the same whatever the id (an id is echoed, never looked up).
    case 'targetId': return { value: p.member.projectId, owned: !at.endsWith('/defaults') };
    case 'volumeId': return { value: p.volume, owned: true };
    case 'snapshotId': return { value: p.snapshot, owned: true };
    case 'backupId': return { value: p.backup, owned: true };
    case 'jobId': return { value: p.job, owned: true };
    case 'serverId': return { value: p.server, owned: true };
    case 'checkpointId': return { value: p.checkpoint, owned: true };
    case 'itemId': return { value: p.item, owned: true };
    case 'userId': return { value: p.member.userId, owned: true };
    case 'policyId': return { value: at.startsWith('/v1/') ? p.csbsPolicy : p.vbsPolicy, owned: true };
    case 'providerId': return { value: PROVIDER, owned: false };
    case 'roleId': return { value: 'role-member', owned: false };
    // Revoking a token that does not exist: 404 (the world's own agent token stays valid for the agent routes).
    case 'tokenId': return { value: '0123456789abcdef0123456789abcdef', owned: false };
    // The agent's host and work are the world's, not a project's.
    case 'host': return { value: p.agent.host, owned: false };
    case 'workId': return { value: p.agent.workId, owned: false };
  }
  if (name === 'resourceId') {
    if (at.includes('/csbs_backup_policy/')) return { value: p.csbsPolicy, owned: true };
    if (at.includes('/csbs_backup/')) return { value: p.item, owned: true };
    if (at.includes('/resources/')) return { value: p.server, owned: true };
  }
  if (name === 'key') {
    if (at.includes('/csbs_backup_policy/')) return { value: p.csbsTagKey, owned: true };
    if (at.includes('/csbs_backup/')) return { value: p.itemTagKey, owned: true };
    if (at.includes('/backuppolicy/')) return { value: p.vbsTagKey, owned: true };
  }
  if (name === 'id' && at.includes('/os-vendor-backup-sharing/')) return { value: p.share, owned: true };
  throw new Error(`${op.method} ${op.path}: no resource is known for the path parameter {${name}}; map it in test/attack/world.ts (pathValue) to the victim's real id`);
}

/** Body fields that name a resource, filled with project `p`'s ids. */
export function bodyIds(op: Operation, p: Project) {
  const csbs = op.path.startsWith('/v1/');
  return (name: string, at: string[]): unknown => {
    switch (name) {
      case 'volume_id': case 'volumeId': case 'uuid': return p.volume;
      case 'snapshot_id': return p.snapshot;
      case 'backup_id': return p.backup;
      case 'backup_policy_id': case 'plan_id': case 'policy_id': return csbs ? p.csbsPolicy : p.vbsPolicy;
      case 'server_id': return p.server;
      case 'checkpoint_id': return p.checkpoint;
      case 'checkpoint_item_id': return p.item;
      case 'resource_id': return csbs ? p.server : p.volume;
      case 'project_id': return p.member.projectId;
      case 'provider_id': return PROVIDER;
      case 'id': return at[at.length - 1] === 'resources' ? p.server : undefined;
      case 'pattern': return 'RRULE:FREQ=DAILY;BYHOUR=3;BYMINUTE=0';
      // Not ids, but a value the handler checks before it looks the ids up.
      case 'resource_type': case 'type': return csbs ? 'OS::Nova::Server' : 'volume';
      case 'value': return 'v1';
      // The agent's current session (agent routes), so a body gets past the session check.
      case 'session': return op.path.startsWith('/haven/v1/agent/') ? p.agent.session : undefined;
      default: return undefined;
    }
  };
}

/** Bodies the schema alone cannot give (exactly one of several actions): every one of them is sent. */
export const BODIES: Record<string, (p: Project) => unknown[]> = {
  'POST /v1/{projectId}/providers/{providerId}/resources/action': (p) => [
    { check_protectable: [{ resource_id: p.server, resource_type: 'OS::Nova::Server' }] },
    { check_restorable: [{ checkpoint_item_id: p.item, target: { resource_id: p.server, resource_type: 'OS::Nova::Server', volumes: [{ backup_id: p.backup, volume_id: p.volume }] } }] },
  ],
  'POST /v2/{projectId}/backups/{backupId}/action': () => [{ 'os-reset_status': { status: 'error' } }, { 'os-force_delete': {} }],
  'POST /v3/{projectId}/backups/{backupId}/action': () => [{ 'os-reset_status': { status: 'error' } }, { 'os-force_delete': {} }],
};

// ---- envelopes ----

export type Family = 'cinder' | 'vbs' | 'keystone' | 'csbs';

/** The API family a path belongs to (what its errors look like), from the references. */
export function familyOf(p: string): Family {
  // '/v3/' too: keystoneauth discovers identity there (the server answers it in Keystone's envelope).
  if (/^\/v3\/(auth|projects|users|roles)(\/|$)/.test(p) || p === '/v3/') return 'keystone';
  if (/^\/v1\/[^/]+\/(policies|providers|checkpoint_items|restores|quotas|csbs_backup|csbs_backup_policy)(\/|$)/.test(p)) return 'csbs';
  if (/^\/v1\//.test(p) || /^\/v2\/[^/]+\/(backuppolicy|backuppolicyresources|cloudbackups|os-vendor-backup-sharing|jobs)(\/|$)/.test(p)) return 'vbs';
  return 'cinder';
}

/** An error answer in the family's own envelope, with its own status; returns the message. */
export function assertEnvelope(family: Family, r: LightMyRequestResponse): string {
  assert.ok(r.statusCode >= 400 && r.statusCode < 600, `not an error: ${r.statusCode} ${r.body}`);
  if (family === 'cinder') return assertCinderError(r, r.statusCode);
  if (family === 'vbs') return assertVbsError(r, r.statusCode);
  if (family === 'keystone') return assertKeystoneError(r, r.statusCode);
  assert.equal(r.statusCode, r.statusCode);
  assert.match(String(r.headers['content-type']), /^application\/json/, r.body);
  const body = r.json() as { error_code?: unknown; error_msg?: unknown };
  assert.deepEqual(Object.keys(body).sort(), ['error_code', 'error_msg'], r.body);
  assert.match(String(body.error_code), /^[A-Za-z]+\.\d{4}$/, r.body);
  assert.equal(typeof body.error_msg, 'string');
  assertNoStack(r);
  return body.error_msg as string;
}

// ---- catalog and repository state ----

/** Row counts of every catalog table, read through a second, read-only connection (close it after). */
export function rowCounter(dataDir: string): { counts(): Record<string, number>; close(): void } {
  const db = new DatabaseSync(path.join(dataDir, 'catalog.sqlite'), { readOnly: true });
  const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map((t) => t.name);
  assert.ok(tables.length >= 20, `only ${tables.length} catalog tables`);
  const count = db.prepare(tables.map((t) => `SELECT '${t}' AS t, count(*) AS n FROM "${t}"`).join(' UNION ALL '));
  return {
    counts: () => Object.fromEntries((count.all() as { t: string; n: number }[]).map((r) => [r.t, r.n])),
    close: () => db.close(),
  };
}

/** Every file of a folder with its size and modification time. */
export async function filesState(dir: string): Promise<string> {
  const out: string[] = [];
  for (const rel of await listFilesRecursive(dir)) {
    const st = statSync(path.join(dir, rel));
    out.push(`${rel} ${st.size} ${st.mtimeMs}`);
  }
  return out.join('\n');
}
