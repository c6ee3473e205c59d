/**
 * Cross-project access on every operation of the OpenAPI document, generated from it at test time
 * (an operation added tomorrow is attacked the day it is added; a path parameter this file cannot
 * map to a real resource fails its test).
 *
 * Two projects, alpha and bravo, each hold one resource of every kind. For every operation, each
 * project's member and its project admin (the admin role on that project only) attack the other:
 *   - the victim's URL: path project and every id the victim's (the body's ids too);
 *   - their own project in the path with the victim's ids in the path and the body;
 *   - their own URL with the victim's ids in the body only;
 *   - their own lists filtered by the victim's ids (all_tenants included);
 *   - identity: the victim's token as X-Subject-Token, a login scoped to the victim's project.
 * Asserted: never a 5xx; a request that names the victim's resources is refused (never 2xx) in the
 * API family's envelope; routes for the cloud admin refuse a project admin (403) and an agent's
 * token (401); routes for agents refuse a project member's or admin's token, as X-Auth-Token and
 * as a bearer token (401); no id, name or token of the victim appears in any answer (unless the
 * request itself carried it); and everything the victim sees of itself is the same after each
 * operation as before (lists, shows, quotas, roles, its volume file).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { startService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';
import { assertEnvelope, BODIES, bodyIds, buildWorld, exampleOf, familyOf, fingerprint, operations, pathValue, secretsOf, type Operation, type Project, type Who } from './world.ts';

const temp = new TempDirs('haven-attack-xp-');
const svc = await startService(temp);
const world = await buildWorld(svc, ['alpha', 'bravo']);
const ops = await operations(svc);
const [alpha, bravo] = world.projects as [Project, Project];
const baseline = new Map<Project, Record<string, unknown>>([[alpha, await fingerprint(world, alpha)], [bravo, await fingerprint(world, bravo)]]);
const secrets = new Map<Project, Set<string>>([
  [alpha, secretsOf(baseline.get(alpha)!, [baseline.get(bravo)!], alpha)],
  [bravo, secretsOf(baseline.get(bravo)!, [baseline.get(alpha)!], bravo)],
]);

/**
 * POST operations that answer per id (is this server protectable, can this backup be restored
 * there; which volumes were disassociated) rather than fail as a whole: a 2xx is right as long as
 * the answer for the other project's ids is exactly the answer for ids that exist nowhere (no
 * oracle of their existence) and nothing changes.
 */
const QUESTIONS = new Set(['POST /v1/{projectId}/providers/{providerId}/resources/action', 'POST /v2/{projectId}/backuppolicyresources/{policyId}/deleted_resources']);

interface Case {
  label: string;
  url: string;
  payload?: unknown;
  headers?: Record<string, string>;
  /** The request names the victim's project or resources: it must be refused. */
  refused: boolean;
  /** Answered per id: compare with the same request naming ids that exist nowhere. */
  question?: boolean;
  /** Sent with the world agent's bearer token only, no X-Auth-Token (cloud-admin routes: 401). */
  agentOnly?: boolean;
}

const ID_QUERY = new Set(['volume_id', 'backup_id', 'policy_id', 'checkpoint_id', 'resource_id', 'marker', 'from_project_id', 'to_project_id', 'job_id', 'project_id', 'all_tenants']);

function queryValue(name: string, p: Project): string {
  switch (name) {
    case 'volume_id': case 'resource_id': return name === 'resource_id' ? p.server : p.volume;
    case 'backup_id': case 'marker': return p.backup;
    case 'policy_id': return p.csbsPolicy;
    case 'checkpoint_id': return p.checkpoint;
    case 'job_id': return p.job;
    case 'all_tenants': return '1';
    default: return p.member.projectId;
  }
}

/** Every attack on `op` by `attacker` (of project `x`) against project `v`. */
function casesFor(op: Operation, x: Project, v: Project, attacker: Who): Case[] {
  const url = (owner: (name: string) => Project) => op.path.replace(/\{([^}]+)\}/g, (_m, name: string) => encodeURIComponent(pathValue(op, name, owner(name)).value));
  const key = `${op.method} ${op.path}`;
  const hasBody = op.body !== null;
  const bodies = (p: Project): unknown[] => (!hasBody ? [undefined] : BODIES[key]?.(p) ?? [exampleOf(op.body!, bodyIds(op, p))]);
  const bodyNamesIds = hasBody && JSON.stringify(bodies(v)) !== JSON.stringify(bodies(x));
  const cases: Case[] = [];

  if (key === 'POST /v3/auth/tokens') {
    const user = attacker === x.admin ? `${x.name}-padmin` : `${x.name}-user`;
    return [
      { label: 'password, scoped to the victim', url: op.path, refused: true, payload: { auth: { identity: { methods: ['password'], password: { user: { name: user, domain: { name: 'Default' }, password: 'tenant-password' } } }, scope: { project: { id: v.member.projectId } } } } },
      { label: 'own token, scoped to the victim', url: op.path, refused: true, payload: { auth: { identity: { methods: ['token'], token: { id: attacker.token } }, scope: { project: { name: v.name, domain: { name: 'Default' } } } } } },
    ];
  }
  if (op.path === '/v3/auth/tokens') {
    return [{ label: 'the victim\'s token as X-Subject-Token', url: op.path, headers: { 'x-subject-token': v.member.token }, refused: true }];
  }

  // The victim's URL: every path parameter (the project too) and the body's ids are the victim's.
  const named = op.pathParams.some((n) => pathValue(op, n, v).owned);
  for (const payload of bodies(v)) cases.push({ label: 'victim\'s URL', url: url(() => v), payload, refused: named || bodyNamesIds || op.auth === 'cloudAdmin' || op.auth === 'agent' });
  // The attacker's own project in the path, the victim's ids in the rest of it (and the body).
  const others = op.pathParams.filter((n) => n !== 'projectId' && pathValue(op, n, v).owned);
  if (op.pathParams.includes('projectId') && others.length) {
    for (const payload of bodies(v)) cases.push({ label: 'own project, victim\'s ids', url: url((n) => (n === 'projectId' ? x : v)), payload, refused: true });
  }
  // The attacker's own URL with the victim's ids in the body only.
  if (bodyNamesIds) {
    for (const payload of bodies(v)) cases.push({ label: 'own URL, victim\'s ids in the body', url: url(() => x), payload, refused: !QUESTIONS.has(key), question: QUESTIONS.has(key) });
  }
  // Cloud-admin routes refuse a project admin even on its own project.
  if (op.auth === 'cloudAdmin') {
    for (const payload of bodies(x)) cases.push({ label: 'own URL (cloud admin only)', url: url(() => x), payload, refused: true });
    // Nor does an agent's token (an agent host is no cloud admin).
    for (const payload of bodies(x)) cases.push({ label: 'the agent\'s token only (cloud admin only)', url: url(() => x), payload, headers: { authorization: `Bearer ${world.agent.token}` }, refused: true, agentOnly: true });
  }
  // Agent routes take an agent token only: a user's token is no agent's, whatever header carries it.
  if (op.auth === 'agent') {
    for (const payload of bodies(x)) {
      cases.push({ label: 'own token as an agent bearer token', url: url(() => x), payload, headers: { authorization: `Bearer ${attacker.token}` }, refused: true });
    }
  }
  // Lists filtered by the victim's ids: an answer is fine, the victim's data in it is not.
  if (op.method === 'GET') {
    for (const q of op.query.filter((q) => ID_QUERY.has(q.name))) {
      cases.push({ label: `own list, ?${q.name}= of the victim`, url: `${url(() => x)}?${q.name}=${encodeURIComponent(queryValue(q.name, v))}`, refused: op.auth === 'cloudAdmin' });
    }
  }
  return cases;
}

let attempts = 0;
let refusedAttempts = 0;
const leaks: string[] = [];
const covered = new Set<string>();
const statuses = new Map<number, number>();

describe('cross-project access on every operation of the OpenAPI document', () => {
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  for (const op of ops) {
    it(`${op.method} ${op.path} (${op.auth})`, async () => {
      let cases = 0;
      for (const [x, v] of [[alpha, bravo], [bravo, alpha]] as const) {
        for (const attacker of [x.member, x.admin]) {
          for (const c of casesFor(op, x, v, attacker)) {
            cases++;
            attempts++;
            const r = await svc.req({ method: op.method as 'GET', url: c.url, ...(c.agentOnly ? {} : { token: attacker.token }), ...(c.headers ? { headers: c.headers } : {}), ...(c.payload !== undefined ? { payload: c.payload as object } : {}) });
            const what = `${op.method} ${c.url} (${c.label}) by ${attacker === x.admin ? 'the project admin' : 'a member'} of ${x.name}: ${r.statusCode} ${r.body.slice(0, 300)}`;
            statuses.set(r.statusCode, (statuses.get(r.statusCode) ?? 0) + 1);
            assert.ok(r.statusCode < 500, `5xx: ${what}`);
            if (c.refused) {
              refusedAttempts++;
              assert.ok(r.statusCode >= 400, `not refused: ${what}`);
            }
            if (c.question && r.statusCode < 400) {
              // The same request with every id of the victim swapped for one that exists nowhere.
              let text = JSON.stringify(c.payload);
              const swaps = [...secrets.get(v)!].filter((s) => text.includes(s)).map((s) => [s, randomUUID()] as const);
              for (const [s, fresh] of swaps) text = text.replaceAll(s, fresh);
              const ghost = await svc.req({ method: op.method as 'GET', url: c.url, token: attacker.token, payload: JSON.parse(text) as object });
              attempts++;
              let back = ghost.body;
              for (const [s, fresh] of swaps) back = back.replaceAll(fresh, s);
              assert.equal(`${ghost.statusCode} ${back}`, `${r.statusCode} ${r.body}`, `the answer tells the other project's ids from ids that exist nowhere: ${what}`);
            }
            if (op.auth === 'cloudAdmin') assert.equal(r.statusCode, c.agentOnly ? 401 : 403, `a cloud-admin route let a project member or admin (or an agent) through: ${what}`);
            if (op.auth === 'agent') assert.equal(r.statusCode, 401, `an agent route took a project member's or admin's token: ${what}`);
            if (r.statusCode >= 400) assertEnvelope(familyOf(op.path), r);
            const sent = `${c.url} ${JSON.stringify(c.payload ?? null)} ${JSON.stringify(c.headers ?? {})}`;
            for (const s of secrets.get(v)!) {
              if (r.body.includes(s) && !sent.includes(s)) leaks.push(`${what} holds ${s}`);
            }
          }
        }
      }
      assert.ok(cases > 0, `no case was generated for ${op.method} ${op.path}`);
      covered.add(`${op.method} ${op.path}`);
      for (const p of [alpha, bravo]) assert.deepEqual(await fingerprint(world, p), baseline.get(p), `${p.name} changed after ${op.method} ${op.path}`);
      assert.deepEqual(leaks, []);
    });
  }

  it('every operation of the document was attacked; 0 leaks', () => {
    console.log(`cross-project: ${covered.size} operations, ${attempts} attempts (${refusedAttempts} naming the other project's resources), ${leaks.length} leaks; answers ${[...statuses].sort((a, b) => a[0] - b[0]).map(([k, n]) => `${k}: ${n}`).join(', ')}`);
    assert.equal(covered.size, ops.length, `operations without a passing case: ${ops.map((o) => `${o.method} ${o.path}`).filter((k) => !covered.has(k)).join(', ')}`);
    assert.ok(ops.length >= 120, `only ${ops.length} operations in the document`);
    assert.equal(leaks.length, 0, leaks.join('\n'));
  });
});
