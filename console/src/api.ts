/**
 * The console talks to the same API as every other client (same origin, same TLS): Keystone for
 * the login, then Cinder, VBS, CSBS, Nova and Haven's own admin routes with X-Auth-Token.
 * The token lives in sessionStorage: it is gone when the tab closes, and never sent to another origin.
 */

export const CSBS_PROVIDER = 'fc4d5750-22e7-4798-8a46-f48f62c4c1da';

export interface Project {
  id: string;
  name: string;
}

export interface Session {
  token: string;
  /** The login's own token, from which every later token of the session (project switches) was made:
   * revoking it at logout revokes them all (Keystone revokes a token's descendants with it). */
  rootToken: string;
  expiresAt: string;
  user: string;
  domain: string;
  project: Project;
  roles: string[];
  /** The cloud admin (the admin role on the admin project): agents, quotas, repository, adopt. */
  admin: boolean;
}

/** An error answer of the API, with the message its envelope carries (every family has its own). */
export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly code: string | null) {
    super(message);
  }
}

/** The message of any of the API family's error envelopes: Keystone/VBS {error: {message}},
 * Cinder {badRequest: {message}}, CSBS {error: {message, code}}, Haven {error: {message}}. */
function envelopeMessage(body: unknown): { message: string; code: string | null } | null {
  if (!body || typeof body !== 'object') return null;
  for (const v of [body, ...Object.values(body as Record<string, unknown>)]) {
    if (!v || typeof v !== 'object') continue;
    const o = v as Record<string, unknown>;
    const message = o.message ?? o.error_msg ?? o.errorMessage;
    if (typeof message === 'string') {
      const code = o.code ?? o.error_code;
      return { message, code: typeof code === 'string' ? code : typeof code === 'number' ? String(code) : null };
    }
  }
  return null;
}

let session: Session | null = null;
const listeners = new Set<(s: Session | null) => void>();

export function currentSession(): Session | null {
  return session;
}

export function onSession(fn: (s: Session | null) => void): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function setSession(s: Session | null): void {
  session = s;
  if (s) sessionStorage.setItem('haven.session', JSON.stringify(s));
  else sessionStorage.removeItem('haven.session');
  for (const fn of listeners) fn(s);
}

export function restoreSession(): Session | null {
  const raw = sessionStorage.getItem('haven.session');
  if (!raw) return null;
  try {
    const s = JSON.parse(raw) as Session;
    if (Date.parse(s.expiresAt) > Date.now()) {
      session = s;
      return s;
    }
  } catch {
    // a damaged entry: log in again
  }
  sessionStorage.removeItem('haven.session');
  return null;
}

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | number | boolean | undefined | null>;
  /** Don't sign out on 401 (the login form's own calls). */
  noAuth?: boolean;
}

async function send(method: string, path: string, opts: RequestOptions = {}, token = session?.token): Promise<Response> {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const url = q.size ? `${path}?${q}` : path;
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (token && !opts.noAuth) headers['X-Auth-Token'] = token;
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(url, { method, headers, ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}) });
  } catch {
    throw new ApiError(0, 'Haven did not answer: is the service running?', null);
  }
  if (res.ok) return res;
  const text = await res.text();
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: the status says it
  }
  const env = envelopeMessage(parsed);
  if (res.status === 401 && !opts.noAuth && session) setSession(null);
  throw new ApiError(res.status, env?.message ?? `${res.status} ${res.statusText}`, env?.code ?? null);
}

/** A call of the API in the current project's scope; `{p}` in the path is the project id. */
export async function api<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
  const p = session?.project.id ?? '';
  const res = await send(method, path.replaceAll('{p}', encodeURIComponent(p)), opts);
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

interface TokenBody {
  token: {
    expires_at: string;
    user: { name: string; domain: { name: string } };
    project?: { id: string; name: string };
    roles?: { name: string }[];
  };
}

async function tokenRequest(auth: unknown): Promise<Session> {
  const res = await send('POST', '/v3/auth/tokens', { body: { auth }, noAuth: true });
  const token = res.headers.get('X-Subject-Token');
  const body = (await res.json()) as TokenBody;
  if (!token) throw new ApiError(500, 'the login answer carried no token', null);
  const t = body.token;
  const roles = (t.roles ?? []).map((r) => r.name);
  return {
    token,
    rootToken: token,
    expiresAt: t.expires_at,
    user: t.user.name,
    domain: t.user.domain.name,
    project: t.project ? { id: t.project.id, name: t.project.name } : { id: '', name: '' },
    roles,
    admin: roles.includes('admin') && t.project !== undefined && (await isCloudAdmin(token)),
  };
}

/** Whether the token may use the cloud admin's routes: asked of the API, which alone decides. */
async function isCloudAdmin(token: string): Promise<boolean> {
  try {
    await send('GET', '/haven/v1/agents', { noAuth: false }, token);
    return true;
  } catch {
    return false;
  }
}

/** Logs in with a password. Without a project, it scopes to the first project the user has. */
export async function login(user: string, password: string, domain: string, project: string): Promise<Session> {
  const identity = { methods: ['password'], password: { user: { name: user, domain: { name: domain }, password } } };
  if (project) {
    const s = await tokenRequest({ identity, scope: { project: { name: project, domain: { name: domain } } } });
    setSession(s);
    return s;
  }
  const unscoped = await tokenRequest({ identity });
  const projects = await listProjects(unscoped.token);
  const first = projects[0];
  if (!first) {
    await revoke(unscoped.token);
    throw new ApiError(401, `${user} has no role on any project: ask an admin to assign one`, null);
  }
  return switchProject(first.id, unscoped.token, unscoped.token);
}

/** The projects the token's user has a role on (the project switcher). */
export async function listProjects(token = session?.token): Promise<Project[]> {
  const res = await send('GET', '/v3/auth/projects', {}, token);
  const body = (await res.json()) as { projects: Project[] };
  return body.projects.map((p) => ({ id: p.id, name: p.name })).sort((a, b) => a.name.localeCompare(b.name));
}

/** A token for another of the user's projects (Keystone's token method), replacing the session. */
export async function switchProject(projectId: string, token = session?.token, root = session?.rootToken ?? token): Promise<Session> {
  const s = await tokenRequest({ identity: { methods: ['token'], token: { id: token } }, scope: { project: { id: projectId } } });
  const next = { ...s, rootToken: root ?? s.token };
  setSession(next);
  return next;
}

async function revoke(token: string): Promise<void> {
  try {
    await fetch('/v3/auth/tokens', { method: 'DELETE', headers: { 'X-Auth-Token': token, 'X-Subject-Token': token } });
  } catch {
    // the token expires by itself
  }
}

/** Ends the session: the login's token and with it every token made from it. */
export async function logout(): Promise<void> {
  const s = session;
  setSession(null);
  if (!s) return;
  await revoke(s.token);
  if (s.rootToken !== s.token) await revoke(s.rootToken);
}
