/**
 * HTTPS: `haven serve` as a real process with HAVEN_TLS_CERT/KEY made in the test (a CA and server
 * certificates from the openssl CLI). HTTPS works with the CA, plain HTTP to the port gets no
 * answer, the token catalog says https, SIGHUP with a renewed certificate is picked up by new
 * connections while an open keep-alive connection goes on with the old one, and the openstack CLI
 * with --os-cacert issues a token and manages volumes. Start-up refuses a bad certificate path, a
 * key that does not match, and a non-loopback address without TLS (unless HAVEN_ALLOW_PLAINTEXT).
 */
import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';
import type { TLSSocket } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { collectCli, runCli, spawnCli, TempDirs } from '../helpers/volumes.ts';

const run = promisify(execFile);
const PASSWORD = 'tls-test-admin-password';

async function which(cmd: string): Promise<string | null> {
  try {
    return (await run('sh', ['-c', `command -v ${cmd}`])).stdout.trim() || null;
  } catch {
    return null;
  }
}

/** A CA, and server certificates it signs for 127.0.0.1 and localhost. */
async function makeCa(dir: string): Promise<{ ca: string; issue(name: string, serial: number): Promise<{ cert: string; key: string }> }> {
  const ca = path.join(dir, 'ca.pem');
  const caKey = path.join(dir, 'ca.key');
  const cnf = path.join(dir, 'openssl.cnf');
  await fs.writeFile(cnf, [
    '[req]', 'distinguished_name = dn', 'prompt = no', '[dn]', 'CN = Haven test CA',
    '[v3ca]', 'basicConstraints = critical, CA:TRUE', 'keyUsage = critical, keyCertSign, cRLSign', 'subjectKeyIdentifier = hash',
    '[leaf]', 'basicConstraints = CA:FALSE', 'keyUsage = critical, digitalSignature', 'extendedKeyUsage = serverAuth',
    'subjectAltName = DNS:localhost, IP:127.0.0.1', 'subjectKeyIdentifier = hash', 'authorityKeyIdentifier = keyid', '',
  ].join('\n'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run('openssl', ['req', '-x509', '-config', cnf, '-extensions', 'v3ca', ...ec, '-keyout', caKey, '-out', ca, '-days', '2']);
  return {
    ca,
    async issue(name, serial) {
      const key = path.join(dir, `${name}.key`);
      const csr = path.join(dir, `${name}.csr`);
      const cert = path.join(dir, `${name}.pem`);
      await run('openssl', ['req', '-new', '-config', cnf, ...ec, '-subj', `/CN=${name}`, '-keyout', key, '-out', csr]);
      await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-set_serial', String(serial), '-days', '2', '-extfile', cnf, '-extensions', 'leaf', '-out', cert]);
      return { cert, key };
    },
  };
}

interface Served {
  child: ChildProcess;
  port: number;
  url: string;
  /** Resolves when stderr has printed a line matching `re`. */
  waitFor(re: RegExp): Promise<string>;
  stop(): Promise<void>;
}

async function serve(env: Record<string, string>): Promise<Served> {
  const child = spawnCli(['serve'], { env: { HAVEN_PORT: '0', HAVEN_ADMIN_PASSWORD: PASSWORD, HAVEN_LOG_LEVEL: 'warn', HAVEN_THREADS: '1', ...env } });
  let stderr = '';
  const waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  const check = (): void => {
    for (const w of [...waiters]) {
      const m = w.re.exec(stderr);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m[0]);
      }
    }
  };
  // Standard output is not a terminal: the start-up and reload lines are JSON log lines there;
  // both streams are searched.
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    stderr += s;
    check();
  });
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    stderr += s;
    check();
  });
  const exited = new Promise<never>((_, reject) => child.once('exit', (code) => reject(new Error(`haven serve exited (${code}): ${stderr}`))));
  exited.catch(() => {}); // observed through waitFor
  const waitFor = (re: RegExp): Promise<string> => Promise.race([new Promise<string>((resolve) => {
    waiters.push({ re, resolve });
    check();
  }), exited]);
  const line = await waitFor(/"url":"[^"]+"/);
  const url = line.slice('"url":"'.length, -1);
  return {
    child, url, port: Number(new URL(url).port), waitFor,
    async stop() {
      if (child.exitCode !== null) return;
      const done = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await done;
    },
  };
}

interface Got {
  status: number;
  body: string;
  socket: TLSSocket;
  serial: string;
}

function get(url: string, opts: https.RequestOptions & { method?: string; body?: string; headers?: Record<string, string> }): Promise<Got> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { ...opts, method: opts.method ?? 'GET' }, (res) => {
      let body = '';
      const socket = res.socket as TLSSocket;
      const serial = socket.getPeerCertificate().serialNumber;
      res.setEncoding('utf8').on('data', (s: string) => (body += s));
      res.on('end', () => resolve({ status: res.statusCode!, body, socket, serial }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

const loginBody = JSON.stringify({ auth: { identity: { methods: ['password'], password: { user: { name: 'admin', domain: { name: 'Default' }, password: PASSWORD } } }, scope: { project: { name: 'admin', domain: { name: 'Default' } } } } });

describe('HTTPS (HAVEN_TLS_CERT, HAVEN_TLS_KEY)', async () => {
  const temp = new TempDirs('haven-tls-');
  const openstack = await which('openstack');
  const noOpenstack = openstack ? false : 'the openstack CLI is not installed (apt-get install python3-openstackclient)';
  if (noOpenstack && process.env.CI === 'true') throw new Error(`${noOpenstack}: required under CI`);
  let certs: Awaited<ReturnType<typeof makeCa>>;
  let caPem: Buffer;
  let first: { cert: string; key: string };
  let second: { cert: string; key: string };
  let svc: Served;
  let certFile: string;
  let keyFile: string;
  before(async () => {
    const dir = temp.make('pki');
    certs = await makeCa(dir);
    caPem = await fs.readFile(certs.ca);
    first = await certs.issue('server1', 1001);
    second = await certs.issue('server2', 1002);
    // The files Haven reads: a renewal replaces their contents, as certbot's symlinks do.
    certFile = path.join(dir, 'haven.pem');
    keyFile = path.join(dir, 'haven.key');
    await fs.copyFile(first.cert, certFile);
    await fs.copyFile(first.key, keyFile);
    svc = await serve({ HAVEN_DATA_DIR: temp.make('data'), HAVEN_TLS_CERT: certFile, HAVEN_TLS_KEY: keyFile });
  });
  after(async () => {
    await svc?.stop();
    temp.cleanup();
  });

  it('serves HTTPS verified by the CA, and the token catalog says https', async () => {
    assert.match(svc.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const root = await get(`${svc.url}/`, { ca: caPem, agent: false });
    assert.equal(root.status, 300, root.body);
    assert.equal(root.serial, '03E9'); // 1001
    const login = await get(`${svc.url}/v3/auth/tokens`, { ca: caPem, agent: false, method: 'POST', body: loginBody, headers: { 'content-type': 'application/json' } });
    assert.equal(login.status, 201, login.body);
    const urls = (JSON.parse(login.body) as { token: { catalog: { endpoints: { url: string }[] }[] } }).token.catalog.flatMap((c) => c.endpoints.map((e) => e.url));
    assert.ok(urls.length > 0);
    for (const u of urls) assert.ok(u.startsWith(`https://127.0.0.1:${svc.port}`), u);
    // Without the CA the certificate is refused: it really is the test CA's.
    await assert.rejects(get(`${svc.url}/`, { agent: false }), /self-signed|unable to (get|verify)/i);
  });

  it('plain HTTP to the port gets no HTTP answer', async () => {
    const outcome = await new Promise<string>((resolve) => {
      const req = http.get(`http://127.0.0.1:${svc.port}/`, (res) => resolve(`answered ${res.statusCode}`));
      req.on('error', (err) => resolve(`error ${(err as NodeJS.ErrnoException).code ?? err.message}`));
    });
    assert.match(outcome, /^error /, outcome);
  });

  it('SIGHUP with a renewed certificate: new connections get it, an open keep-alive connection is not dropped', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: caPem });
    try {
      const before = await get(`${svc.url}/`, { agent });
      assert.equal(before.status, 300);
      assert.equal(before.serial, '03E9');
      await fs.copyFile(second.cert, certFile);
      await fs.copyFile(second.key, keyFile);
      const reloaded = svc.waitFor(/TLS certificate reloaded: .*server2/);
      svc.child.kill('SIGHUP');
      await reloaded;
      const fresh = await get(`${svc.url}/`, { ca: caPem, agent: false });
      assert.equal(fresh.status, 300);
      assert.equal(fresh.serial, '03EA'); // 1002
      const again = await get(`${svc.url}/`, { agent });
      assert.equal(again.status, 300);
      assert.equal(again.socket, before.socket, 'the keep-alive connection was replaced');
      assert.equal(again.serial, '03E9');
      assert.equal(svc.child.exitCode, null);
    } finally {
      agent.destroy();
    }
  });

  it('SIGHUP with a key that does not match keeps the current certificate', async () => {
    await fs.copyFile(first.key, keyFile); // certFile holds server2's certificate
    const refused = svc.waitFor(/TLS certificate NOT reloaded.*does not belong/);
    svc.child.kill('SIGHUP');
    await refused;
    const r = await get(`${svc.url}/`, { ca: caPem, agent: false });
    assert.equal(r.status, 300);
    assert.equal(r.serial, '03EA');
    await fs.copyFile(second.key, keyFile);
  });

  it('the openstack CLI with --os-cacert issues a token and manages volumes', { skip: noOpenstack }, async () => {
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: temp.make('home'), LANG: 'C.UTF-8' };
    const os = async (...args: string[]): Promise<unknown> => {
      const r = await run(openstack!, ['--os-cacert', certs.ca, '--os-auth-url', `${svc.url}/v3`, '--os-identity-api-version', '3', '--os-volume-api-version', '3',
        '--os-username', 'admin', '--os-password', PASSWORD, '--os-project-name', 'admin', '--os-user-domain-name', 'Default', '--os-project-domain-name', 'Default',
        ...args, '-f', 'json'], { env, timeout: 120_000 });
      return JSON.parse(r.stdout) as unknown;
    };
    const token = (await os('token', 'issue')) as { id: string; expires: string };
    assert.match(token.id, /\S{20,}/);
    const created = (await os('volume', 'create', '--size', '1', 'tls-web1')) as { id: string; name: string };
    assert.equal(created.name, 'tls-web1');
    const listed = (await os('volume', 'list')) as { ID: string; Name: string }[];
    assert.deepEqual(listed.map((v) => [v.ID, v.Name]), [[created.id, 'tls-web1']]);
    // Without the CA, the CLI refuses the server.
    await assert.rejects(run(openstack!, ['--os-auth-url', `${svc.url}/v3`, '--os-username', 'admin', '--os-password', PASSWORD, '--os-project-name', 'admin',
      '--os-user-domain-name', 'Default', '--os-project-domain-name', 'Default', 'token', 'issue'], { env, timeout: 120_000 }), /SSL|certificate/i);
  });

  describe('start-up refusals', () => {
    const start = (env: Record<string, string>) => collectCli(spawnCli(['serve'], { env: { HAVEN_PORT: '0', HAVEN_ADMIN_PASSWORD: PASSWORD, HAVEN_DATA_DIR: temp.make('data'), ...env } }), 60_000);

    it('a certificate file that does not exist', async () => {
      const r = await start({ HAVEN_TLS_CERT: '/nonexistent/haven.pem', HAVEN_TLS_KEY: keyFile });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /HAVEN_TLS_CERT \/nonexistent\/haven\.pem cannot be read: it does not exist/);
    });

    it('a key that does not belong to the certificate', async () => {
      const r = await start({ HAVEN_TLS_CERT: first.cert, HAVEN_TLS_KEY: second.key });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /the key in .*server2\.key does not belong to the certificate in .*server1\.pem/);
    });

    it('only one of the two', async () => {
      const r = await runCli(['serve'], { env: { HAVEN_PORT: '0', HAVEN_DATA_DIR: temp.make('data'), HAVEN_TLS_CERT: first.cert } });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /HAVEN_TLS_CERT and HAVEN_TLS_KEY go together: HAVEN_TLS_KEY is not set/);
    });

    it('a non-loopback address without TLS, unless HAVEN_ALLOW_PLAINTEXT=true', async () => {
      const r = await start({ HAVEN_HOST: '0.0.0.0' });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /refusing to listen on 0\.0\.0\.0 without TLS/);
      const allowed = await serve({ HAVEN_HOST: '0.0.0.0', HAVEN_ALLOW_PLAINTEXT: 'true', HAVEN_DATA_DIR: temp.make('data') });
      try {
        assert.match(allowed.url, /^http:\/\//);
      } finally {
        await allowed.stop();
      }
    });
  });
});
