/**
 * Bad input generated from the OpenAPI schemas, for every operation of the document: for each
 * property of a body (at every depth) values of every wrong type, each required property missing,
 * strings too long and full of control characters, lone surrogates and the like, numbers huge,
 * negative and fractional, garbage nested deep; bodies that are not JSON, empty, arrays, strings,
 * too large or of another media type; each query parameter with wrong, huge, empty, repeated and
 * badly encoded values; each path parameter 600 characters long or odd.
 *
 * Asserted for every request: no 5xx; an input the schema refuses (checked with Ajv against the
 * document's own schema) is refused (4xx); every refusal is in the API family's envelope; a refused
 * request changed nothing (row counts of every catalog table; the repository's and the volume
 * folder's files; what the project sees of itself). Values come from a seeded generator
 * (HAVEN_ATTACK_SEED, printed), so a failure can be replayed.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { Ajv } from 'ajv';
import { startService } from '../helpers/service.ts';
import { Rng, TempDirs } from '../helpers/volumes.ts';
import { assertEnvelope, BODIES, bodyIds, branch, buildWorld, exampleOf, familyOf, filesState, fingerprint, operations, pathValue, registerAgent, rowCounter, type Operation, type Schema, type Who } from './world.ts';

const SEED = Number(process.env.HAVEN_ATTACK_SEED ?? 20240611);
const temp = new TempDirs('haven-attack-input-');
const svc = await startService(temp);
const world = await buildWorld(svc, ['alpha']);
const alpha = world.projects[0]!;
// No job runs and no schedule fires from here on: an input that turns out acceptable queues its job
// (a row counted like any other) instead of running a backup, and nothing changes behind our back.
await svc.app.runner.stop();
await svc.app.scheduler.stop();
const rowCounts = rowCounter(svc.dataDir);
// Operations that delete come last, so an input that turns out acceptable removes nothing the others use.
const ops = (await operations(svc)).sort((a, b) => Number(a.method === 'DELETE') - Number(b.method === 'DELETE'));
const repoDir = path.join(svc.dataDir, 'repository');
const volumesDir = path.join(svc.dataDir, 'volumes');

const bodyAjv = new Ajv({ strict: false, allErrors: false, coerceTypes: false, validateFormats: false });
const queryAjv = new Ajv({ strict: false, allErrors: false, coerceTypes: 'array', validateFormats: false });

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

interface Case {
  label: string;
  url: string;
  /** JSON value, or raw text with its content type. */
  payload?: Json;
  raw?: { text: string; type: string };
  /** The schema refuses it: the answer must be a 4xx. */
  invalid: boolean;
}

const STRINGS = ['\u0000', 'a\u0000b', '\u001b[31mred', '\ud800', '\udfff\ud800', '😀'.repeat(40), '\u202eevil', 'Ω≈ç√∫', '../../../etc/passwd', '<script>alert(1)</script>', "' OR 1=1 --", '%00%ff', '   ', '\r\nX-Injected: 1', 'ﬀ'.repeat(300)];
const NUMBERS = [-1, 0, -2147483649, 2 ** 53 + 2, 1e308, -1e308, 0.5, 2 ** 64];
const OTHERS: Json[] = [true, false, null, 'text', '', [], [1, 'a', null], {}, { a: { b: [{ c: null }] } }, 0, -1, 1e308];
const QUERY_VALUES = ['abc', '-1', '0', '1e400', '99999999999999999999999', '', 'x'.repeat(10000), '%00', '%ff%fe', '%E2%80%AE', 'true', '[object Object]', '..%2F..%2F', '%F0%9F%98%80'];
const PATH_VALUES = ['x'.repeat(600), '%00', '..', '%2e%2e', '%E2%80%AE', '%F0%9F%98%80'.repeat(3), ' ', '00000000-0000-4000-8000-000000000000', '-1', 'null'];

function deepNest(depth: number): Json {
  let v: Json = 'bottom';
  for (let i = 0; i < depth; i++) v = i % 2 ? { a: v } : [v];
  return v;
}

function clone<T>(v: T): T {
  return v === undefined ? v : (JSON.parse(JSON.stringify(v)) as T);
}

function setAt(root: Json, at: (string | number)[], value: Json | undefined): Json {
  const out = clone(root) ?? {};
  let cur = out as Record<string | number, Json>;
  for (let i = 0; i < at.length - 1; i++) {
    const k = at[i]!;
    if (cur[k] === undefined || cur[k] === null || typeof cur[k] !== 'object') cur[k] = (typeof at[i + 1] === 'number' ? [] : {}) as Json;
    cur = cur[k] as Record<string | number, Json>;
  }
  const last = at[at.length - 1]!;
  if (value === undefined) {
    if (Array.isArray(cur)) cur.splice(Number(last), 1);
    else delete cur[last];
  } else cur[last] = value;
  return out;
}

function hasAt(root: Json, at: (string | number)[]): boolean {
  let cur: Json = root;
  for (const k of at) {
    if (cur === null || typeof cur !== 'object' || !(k in (cur as object))) return false;
    cur = (cur as Record<string | number, Json>)[k]!;
  }
  return true;
}

/** Every node of a schema (properties and array items, to a depth), with where it sits. */
function* nodes(s: Schema, at: (string | number)[] = [], depth = 0): Generator<{ at: (string | number)[]; schema: Schema; required: boolean }> {
  const b = branch(s);
  if (depth > 6) return;
  for (const [k, ps] of Object.entries(b.properties ?? {})) {
    yield { at: [...at, k], schema: branch(ps), required: b.required?.includes(k) ?? false };
    yield* nodes(ps, [...at, k], depth + 1);
  }
  if (b.items) {
    yield { at: [...at, 0], schema: branch(b.items), required: false };
    yield* nodes(b.items, [...at, 0], depth + 1);
  }
}

function jsonType(v: Json): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function pick<T>(rng: Rng, from: readonly T[], n: number): T[] {
  const pool = [...from];
  const out: T[] = [];
  while (out.length < n && pool.length) out.push(pool.splice(rng.int(pool.length), 1)[0]!);
  return out;
}

function bodyCases(op: Operation, url: string, base: Json, rng: Rng): Case[] {
  const validate = bodyAjv.compile(op.body!);
  const cases: Case[] = [];
  const add = (label: string, payload: Json) => cases.push({ label, url, payload, invalid: !validate(clone(payload)) });
  for (const n of nodes(op.body!)) {
    const where = n.at.join('.');
    const t = n.schema.type ?? (n.schema.properties ? 'object' : undefined);
    // Wrong types: one value of each JSON type the property does not have (and two more at random).
    const byType = new Map<string, Json>();
    for (const v of OTHERS) if (!byType.has(jsonType(v))) byType.set(jsonType(v), v);
    const wrong = [...byType].filter(([vt]) => vt !== t && !(t === 'number' && vt === 'integer'));
    for (const [vt, v] of pick(rng, wrong, 3)) add(`${where}: ${vt}`, setAt(base, n.at, v));
    for (const v of pick(rng, OTHERS, 1)) add(`${where}: ${JSON.stringify(v)}`, setAt(base, n.at, v));
    if (n.required && hasAt(base, n.at)) add(`${where}: missing`, setAt(base, n.at, undefined));
    if (t === 'string' || t === undefined) {
      add(`${where}: ${(n.schema.maxLength ?? 255) + 1} characters`, setAt(base, n.at, 'a'.repeat((n.schema.maxLength ?? 255) + 1)));
      if (n.at.length <= 2) add(`${where}: 70000 characters`, setAt(base, n.at, 'é'.repeat(70000)));
      for (const s of pick(rng, STRINGS, 2)) add(`${where}: ${JSON.stringify(s).slice(0, 40)}`, setAt(base, n.at, s));
    }
    if (t === 'integer' || t === 'number') for (const x of pick(rng, NUMBERS, 3)) add(`${where}: ${x}`, setAt(base, n.at, x));
    if (t === 'object' || t === 'array') add(`${where}: nested garbage`, setAt(base, n.at, deepNest(40)));
    if (t === 'array' && n.at.length <= 2) add(`${where}: 5000 items`, setAt(base, n.at, Array.from({ length: 5000 }, () => ({}))));
  }
  add('extra properties', { ...(base && typeof base === 'object' && !Array.isArray(base) ? base : {}), zz_unknown: { x: 1 }, __proto__x: 1, constructor: { prototype: { polluted: true } } });
  add('an array instead of the object', [base]);
  add('a string instead of the object', 'body');
  add('a number instead of the object', 42);
  add('null', null);
  add('garbage nested 2000 deep', deepNest(2000));
  const raw = (label: string, text: string, type = 'application/json', invalid = true) => cases.push({ label, url, raw: { text, type }, invalid });
  raw('not JSON', '{"a":');
  raw('not JSON (bare word)', 'nul');
  raw('a NUL byte', '\u0000');
  raw('empty', '', 'application/json', !validate(undefined));
  raw('another media type', JSON.stringify(base), 'text/plain');
  raw('form-encoded', 'a=1&b=2', 'application/x-www-form-urlencoded');
  raw('larger than the body limit', `{"a":"${'x'.repeat(svc.app.config.bodyLimitBytes)}"}`);
  return cases;
}

function queryCases(op: Operation, url: string, rng: Rng): Case[] {
  const schema = { type: 'object', properties: Object.fromEntries(op.query.map((q) => [q.name, q.schema])), required: op.query.filter((q) => q.required).map((q) => q.name) };
  const validate = queryAjv.compile(schema);
  const cases: Case[] = [];
  for (const q of op.query) {
    for (const v of [...pick(rng, QUERY_VALUES, 4), 'x'.repeat(10000)]) {
      const decoded = (() => {
        try {
          return decodeURIComponent(v);
        } catch {
          return null;
        }
      })();
      cases.push({ label: `?${q.name}=${v.slice(0, 30)}`, url: `${url}?${q.name}=${v}`, invalid: decoded !== null && !validate({ [q.name]: decoded }) });
    }
    cases.push({ label: `?${q.name} twice`, url: `${url}?${q.name}=1&${q.name}=2`, invalid: !validate({ [q.name]: ['1', '2'] }) });
    cases.push({ label: `?${q.name}[a]=b`, url: `${url}?${q.name}[a]=b&${q.name}[__proto__]=x`, invalid: false });
  }
  return cases;
}

function callerOf(op: Operation): Who | null {
  if (op.auth === 'none' || op.auth === 'agent') return null;
  if (op.auth === 'cloudAdmin' || op.auth === 'projectOrCloudAdmin') return world.cloudAdmin;
  if (op.auth === 'token') return alpha.member;
  return alpha.admin;
}

/** The credential headers of a request to `op`: an agent token for agent routes, else the caller's X-Auth-Token. */
function credentialsOf(op: Operation): Record<string, string> {
  if (op.auth === 'agent') return { authorization: `Bearer ${world.agent.token}` };
  const who = callerOf(op);
  return who ? { 'x-auth-token': who.token } : {};
}

let requests = 0;
let refused = 0;
let accepted = 0;
const fivexx: string[] = [];
const covered = new Set<string>();
const acceptedLabels: string[] = [];

describe('bad input generated from the OpenAPI schemas, on every operation', () => {
  after(async () => {
    rowCounts.close();
    await svc.close();
    temp.cleanup();
  });
  console.log(`bad input: seed ${SEED} (HAVEN_ATTACK_SEED)`);

  for (const op of ops) {
    it(`${op.method} ${op.path}`, async () => {
      const key = `${op.method} ${op.path}`;
      const rng = new Rng(SEED ^ [...key].reduce((h, c) => Math.imul(h, 31) + c.charCodeAt(0), 7));
      const credentials = credentialsOf(op);
      // A fresh session of the world's agent (an accepted registration replaced the one before),
      // drained again (an accepted undrain took it back): valid bodies get past the session check.
      await registerAgent(svc, world.agent);
      const url = op.path.replace(/\{([^}]+)\}/g, (_m, name: string) => encodeURIComponent(pathValue(op, name, alpha).value));
      const cases: Case[] = [];
      if (op.body) {
        const base = (key === 'POST /v3/auth/tokens'
          ? { auth: { identity: { methods: ['password'], password: { user: { name: `${alpha.name}-user`, domain: { name: 'Default' }, password: 'not-the-password' } } } } }
          : BODIES[key]?.(alpha)[0] ?? exampleOf(op.body, bodyIds(op, alpha))) as Json;
        cases.push(...bodyCases(op, url, base, rng));
      }
      if (op.query.length) cases.push(...queryCases(op, url, rng));
      for (const name of op.pathParams) {
        for (const v of PATH_VALUES) {
          const bad = op.path.replace(/\{([^}]+)\}/g, (_m, n: string) => (n === name ? v : encodeURIComponent(pathValue(op, n, alpha).value)));
          cases.push({ label: `{${name}} = ${v.slice(0, 20)}${v.length > 20 ? `… (${v.length})` : ''}`, url: bad, invalid: v.length > 500, ...(op.body ? { payload: exampleOf(op.body, bodyIds(op, alpha)) as Json } : {}) });
        }
      }
      if (!op.body && !op.query.length && !op.pathParams.length) {
        // Nothing to generate from the schemas; a body where none is expected must still be harmless.
        cases.push({ label: 'an unexpected body', url, raw: { text: '{"zz":', type: 'application/json' }, invalid: false });
      }

      let rows = rowCounts.counts();
      let changedOnPurpose = false;
      const files = async () => `${await filesState(repoDir)}\n--\n${await filesState(volumesDir)}`;
      const filesBefore = await files();
      const seen = await fingerprint(world, alpha);
      for (const c of cases) {
        requests++;
        const r = await svc.req({
          method: op.method as 'GET', url: c.url,
          ...(c.raw ? { payload: c.raw.text, headers: { ...credentials, 'content-type': c.raw.type } } : c.payload !== undefined ? { payload: JSON.stringify(c.payload), headers: { ...credentials, 'content-type': 'application/json' } } : { headers: credentials }),
        });
        const what = `${op.method} ${c.url.slice(0, 200)} [${c.label}]: ${r.statusCode} ${r.body.slice(0, 300)}`;
        if (r.statusCode >= 500) fivexx.push(what);
        assert.ok(r.statusCode < 500, `5xx (seed ${SEED}): ${what}`);
        if (c.invalid) assert.ok(r.statusCode >= 400, `an input the schema refuses was accepted (seed ${SEED}): ${what}`);
        if (c.label.startsWith(`{`) && c.label.includes('(600)')) assert.equal(r.statusCode, 414, what);
        // The agent's token gets every input of an agent route past authentication, to validation.
        if (op.auth === 'agent') assert.notEqual(r.statusCode, 401, `the agent token was refused: ${what}`);
        // A result for work that does not exist (or a valid session that holds no work) is a conflict.
        if (key === 'POST /haven/v1/agent/work/{workId}/result' && !c.invalid && r.statusCode < 500 && r.statusCode !== 404) assert.equal(r.statusCode, 409, what);
        if (r.statusCode >= 400) {
          refused++;
          // The family of the path as the server reads it ('..' and '%2e%2e' are resolved first).
          assertEnvelope(familyOf(new URL(c.url, 'http://haven').pathname), r);
          assert.deepEqual(rowCounts.counts(), rows, `a refused request changed the catalog: ${what}`);
        } else {
          accepted++;
          acceptedLabels.push(`${op.method} ${op.path} [${c.label}] ${r.statusCode}`);
          changedOnPurpose = true;
          rows = rowCounts.counts();
        }
      }
      if (!changedOnPurpose) {
        assert.equal(await files(), filesBefore, `${key}: refused requests changed the repository or the volumes`);
        assert.deepEqual(await fingerprint(world, alpha), seen, `${key}: refused requests changed what the project sees`);
      }
      covered.add(key);
    });
  }

  it('every operation had bad input; no 5xx', () => {
    console.log(`bad input: ${covered.size} operations, ${requests} requests (${refused} refused, ${accepted} accepted as valid), ${fivexx.length} 5xx; seed ${SEED}`);
    if (process.env.HAVEN_ATTACK_VERBOSE) console.log(acceptedLabels.join('\n'));
    assert.equal(covered.size, ops.length);
    assert.deepEqual(fivexx, []);
  });
});
