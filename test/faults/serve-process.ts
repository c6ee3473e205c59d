/**
 * `haven serve` as a real child process for the fault-injection tests: started on a data folder,
 * spoken to over HTTP (fetch), its pino log lines (stdout, JSON) watched so that a test can act at
 * a given moment of a job, and stopped with SIGTERM or killed with SIGKILL. Also: reading the
 * SQLite catalog of a data folder directly (jobs and backups in any state), and the `haven verify`
 * CLI on its repository.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { runCli, sleep, spawnCli } from '../helpers/volumes.ts';

export const SERVE_PASSWORD = 'faults-admin-password';

export interface LogLine {
  msg?: string;
  level?: number;
  jobId?: string;
  jobType?: string;
  [k: string]: unknown;
}

export interface Who {
  token: string;
  projectId: string;
}

export interface Answer {
  status: number;
  body: Record<string, unknown>;
  text: string;
}

export class ServeProcess {
  readonly child: ChildProcess;
  readonly url: string;
  readonly logs: LogLine[] = [];
  stderr = '';
  private readonly logWaiters: { test: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];

  private constructor(child: ChildProcess, url: string) {
    this.child = child;
    this.url = url;
  }

  /** Starts `haven serve` on `env` (HAVEN_DATA_DIR at least) and waits until it listens. */
  static async start(env: Record<string, string>): Promise<ServeProcess> {
    const child = spawnCli(['serve'], {
      env: { HAVEN_PORT: '0', HAVEN_ADMIN_PASSWORD: SERVE_PASSWORD, HAVEN_LOG_LEVEL: 'info', HAVEN_THREADS: '2', HAVEN_WORKER_NICE: '0', ...env },
    });
    let stderr = '';
    let stdoutBuf = '';
    let self: ServeProcess | undefined;
    const early: LogLine[] = [];
    let onEarly: ((l: LogLine) => void) | undefined;
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      stdoutBuf += s;
      let nl: number;
      while ((nl = stdoutBuf.indexOf('\n')) >= 0) {
        const line = stdoutBuf.slice(0, nl);
        stdoutBuf = stdoutBuf.slice(nl + 1);
        let parsed: LogLine;
        try {
          parsed = JSON.parse(line) as LogLine;
        } catch {
          continue; // not a log line
        }
        if (self) self.onLog(parsed);
        else {
          early.push(parsed);
          onEarly?.(parsed);
        }
      }
    });
    const url = await new Promise<string>((resolve, reject) => {
      // Standard output is not a terminal: the start-up lines are JSON log lines there.
      const listening = (l: LogLine): void => {
        if (typeof l.url === 'string' && /^Haven listening on /.test(l.msg ?? '')) resolve(l.url);
      };
      early.forEach(listening);
      onEarly = listening;
      child.stderr!.setEncoding('utf8').on('data', (s: string) => {
        stderr += s;
        if (self) self.stderr = stderr;
      });
      child.once('exit', (code, signal) => reject(new Error(`haven serve exited (${code ?? signal}) before listening: ${stderr}`)));
    });
    self = new ServeProcess(child, url);
    self.stderr = stderr;
    for (const l of early) self.onLog(l);
    return self;
  }

  private onLog(l: LogLine): void {
    this.logs.push(l);
    for (const w of [...this.logWaiters]) {
      if (w.test(l)) {
        this.logWaiters.splice(this.logWaiters.indexOf(w), 1);
        w.resolve(l);
      }
    }
  }

  /** Resolves with the first log line (already seen or to come) that passes `test`. */
  waitLog(test: (l: LogLine) => boolean, timeoutMs = 60_000): Promise<LogLine> {
    const seen = this.logs.find(test);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no such log line within ${timeoutMs} ms; stderr: ${this.stderr}`)), timeoutMs);
      this.logWaiters.push({ test, resolve: (l) => (clearTimeout(timer), resolve(l)) });
    });
  }

  async req(method: string, urlPath: string, opts: { token?: string; body?: unknown } = {}): Promise<Answer> {
    const headers: Record<string, string> = {};
    if (opts.token) headers['x-auth-token'] = opts.token;
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(this.url + urlPath, { method, headers, ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}) });
    const text = await r.text();
    let body: Record<string, unknown> = {};
    try {
      body = text ? (JSON.parse(text) as Record<string, unknown>) : {};
    } catch {
      body = {};
    }
    return { status: r.status, body, text: `${r.status} ${text}` };
  }

  async login(): Promise<Who> {
    const r = await fetch(`${this.url}/v3/auth/tokens`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ auth: { identity: { methods: ['password'], password: { user: { name: 'admin', domain: { name: 'Default' }, password: SERVE_PASSWORD } } }, scope: { project: { name: 'admin', domain: { name: 'Default' } } } } }),
    });
    const text = await r.text();
    assert.equal(r.status, 201, text);
    const body = JSON.parse(text) as { token: { project: { id: string } } };
    const token = r.headers.get('x-subject-token')!;
    return { token, projectId: body.token.project.id };
  }

  /** Adopts an image file under HAVEN_VOLUME_ROOTS (the admin is the cloud admin). */
  async adopt(who: Who, file: string, name: string): Promise<string> {
    const r = await this.req('POST', `/v3/${who.projectId}/os-volume-manage`, { token: who.token, body: { volume: { ref: { 'source-name': file }, name } } });
    assert.equal(r.status, 202, r.text);
    return (r.body.volume as { id: string }).id;
  }

  async startBackup(who: Who, volumeId: string, name: string, full = false): Promise<string> {
    const r = await this.req('POST', `/v2/${who.projectId}/cloudbackups`, { token: who.token, body: { backup: { volume_id: volumeId, name, ...(full ? { extend_param: { FullBackup: 'true' } } : {}) } } });
    assert.equal(r.status, 200, r.text);
    return String(r.body.job_id);
  }

  async startRestore(who: Who, backupId: string, volumeId: string): Promise<string> {
    const r = await this.req('POST', `/v2/${who.projectId}/cloudbackups/${backupId}/restore`, { token: who.token, body: { restore: { volume_id: volumeId } } });
    assert.equal(r.status, 200, r.text);
    return String(r.body.job_id);
  }

  async startDelete(who: Who, backupId: string): Promise<string> {
    const r = await this.req('DELETE', `/v2/${who.projectId}/cloudbackups/${backupId}`, { token: who.token });
    assert.equal(r.status, 200, r.text);
    return String(r.body.job_id);
  }

  /** Polls a job until SUCCESS or FAIL (bounded: throws after `timeoutMs`). */
  async waitJob(who: Who, jobId: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const r = await this.req('GET', `/v1/${who.projectId}/jobs/${jobId}`, { token: who.token });
      assert.equal(r.status, 200, r.text);
      if (r.body.status === 'SUCCESS' || r.body.status === 'FAIL') return r.body;
      if (Date.now() > until) throw new Error(`job ${jobId} still ${String(r.body.status)} after ${timeoutMs} ms`);
      await sleep(25);
    }
  }

  /** Whether the process has exited. */
  get exited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  async kill(): Promise<void> {
    if (this.exited) return;
    const done = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGKILL');
    await done;
  }

  /** SIGTERM: running jobs are cancelled, background GC finishes, the process exits. */
  async stop(): Promise<void> {
    if (this.exited) return;
    const done = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    await done;
  }
}

export interface CatalogRow {
  id: string;
  status: string;
}

/** Jobs and backups of a data folder's SQLite catalog, read directly (any state, any project). */
export function readCatalog(dataDir: string): { jobs: (CatalogRow & { job_type: string; fail_reason: string | null })[]; backups: (CatalogRow & { fail_reason: string | null })[]; volumes: CatalogRow[] } {
  const db = new DatabaseSync(path.join(dataDir, 'catalog.sqlite'), { readOnly: true });
  try {
    return {
      jobs: db.prepare('SELECT id, status, job_type, fail_reason FROM jobs ORDER BY created_at').all() as never,
      backups: db.prepare('SELECT id, status, fail_reason FROM backups ORDER BY created_at').all() as never,
      volumes: db.prepare('SELECT id, status FROM volumes').all() as never,
    };
  } finally {
    db.close();
  }
}

/** `haven verify --json` on a repository folder (unencrypted); returns the report and exit code. */
export async function verifyRepo(repoDir: string): Promise<{ code: number | null; report: { ok: boolean; backups: { id: string; ok: boolean }[] } & Record<string, unknown>; raw: string }> {
  const r = await runCli(['verify', '--repo', repoDir, '--json'], { timeoutMs: 120_000 });
  let report: { ok: boolean; backups: { id: string; ok: boolean }[] } & Record<string, unknown>;
  try {
    report = JSON.parse(r.stdout) as typeof report;
  } catch {
    throw new Error(`haven verify printed no JSON (exit ${r.code ?? r.signal}): ${r.stdout} ${r.stderr}`);
  }
  return { code: r.code, report, raw: `${r.stdout}${r.stderr}` };
}
