/**
 * A real S3 implementation on loopback for tests and benchmarks: OpenStack Swift (Debian's
 * swift-proxy, swift-object, swift-container and swift-account, 2.30) with its s3api middleware and
 * tempauth. Unlike s3rver it checks every request's signature and answers as a production S3 gateway
 * does, refusals included (it does not honour `If-None-Match: *` on PUT).
 *
 * startSwift(temp) builds, in a fresh folder of `temp`:
 * - one-replica rings (account, container, object) whose one device is a folder (`srv/d0`); the
 *   object server keeps metadata in user xattrs, so that folder must be on a file system that has
 *   them (ext4, xfs, btrfs, tmpfs; checked first, with a message naming the folder);
 * - the four servers on free loopback ports, each one process (workers = 0; `workers` gives the proxy
 *   and the object server that many worker processes, for benchmarks on several cores), running as
 *   the user that started them (Swift's default, `swift`, could not read the temp folder), mount_check off,
 *   fallocate off (a test machine's disk is small), logging to `logs/<server>.log` in that folder;
 * - s3api with path-style addressing, region us-east-1, listings paged at 100 keys (TestS3.listPageKeys),
 *   and a tempauth user whose access key and
 *   secret are the S3 credentials (TestS3.credentials), then the bucket (TestS3.bucket).
 * It is ready in a second or two. Startup failures throw with the tail of every server's log.
 * close() stops the servers; they are also killed when this process exits, and (PR_SET_PDEATHSIG
 * set before exec) when it dies without running exit handlers.
 *
 * Needs: Linux, /usr/bin/python3 and the Debian packages above (`.ci/run` installs them; swiftMissing()
 * says what is absent, for skipOutsideCi), root or a user that may write the temp folder.
 * memcached is not needed: the proxy's cache filter is a dict in the proxy's one process (CACHE_MODULE),
 * which caches what memcached would (account and container info), so each object request costs the
 * backend requests it costs in production.
 * Benchmarks use it as a plain function: `const s3 = await startSwift(new TempDirs('bench-'))`,
 * then `s3.env` for a Haven process and `await s3.close()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { createServer } from 'node:net';
import { constants as osConstants, userInfo } from 'node:os';
import * as path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { S3ObjectStore } from '../../src/storage/s3-store.ts';
import type { TestS3 } from './s3-server.ts';
import type { TempDirs } from './volumes.ts';

export const SWIFT_BUCKET = 'haven-test';
/** tempauth's user `test:tester` with key `testing`; s3api takes `account:user` as the access key. */
export const SWIFT_CREDENTIALS = { accessKeyId: 'test:tester', secretAccessKey: 'testing' };
/** Debian's interpreter, which has Swift's modules (a python3 earlier in PATH, such as pyenv's, may not). */
const PYTHON = '/usr/bin/python3';
/** s3api's listing page, smaller than S3's 1,000 so that a test of paging needs few PUTs. */
const LIST_PAGE_KEYS = 100;
const SERVERS = ['account', 'container', 'object', 'proxy'] as const;
type Server = (typeof SERVERS)[number];

/** Why Swift cannot run here (for skipOutsideCi), or false when it can. */
export function swiftMissing(): string | false {
  const missing = SERVERS.filter((s) => !existsSync(`/usr/bin/swift-${s}-server`)).map((s) => `swift-${s}`);
  return missing.length ? `OpenStack Swift is not installed (apt-get install ${missing.join(' ')})` : false;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as { port: number };
  srv.close();
  await once(srv, 'close');
  return port;
}

/**
 * Builds the three rings in one Python process (three swift-ring-builder runs per ring would cost
 * seconds of interpreter start-up), after checking the device folder keeps user xattrs.
 */
const RING_SCRIPT = `
import os, sys
from swift.common.ring import RingBuilder
swift_dir, dev_root, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
dev = os.path.join(dev_root, 'd0')
probe = os.path.join(dev, '.xattr-probe')
open(probe, 'w').close()
try:
    os.setxattr(probe, 'user.swift.probe', b'1')
except OSError as e:
    sys.exit('the Swift device folder %s is on a file system without user xattrs (%s): '
             'the object server keeps its metadata there; use a temp folder on ext4, xfs, btrfs or tmpfs' % (dev, e))
finally:
    os.unlink(probe)
for name, port in zip(('account', 'container', 'object'), ports):
    b = RingBuilder(6, 1, 0)
    b.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': int(port), 'device': 'd0', 'weight': 100})
    b.rebalance()
    b.get_ring().save(os.path.join(swift_dir, name + '.ring.gz'))
`;

/**
 * The proxy's cache filter: what Swift's memcache filter puts in `swift.cache`, backed by a dict
 * (values JSON-copied as memcached's serialisation would, expiry honoured). One dict per proxy
 * process; with several workers each caches on its own, as with a memcached per worker.
 */
const CACHE_MODULE = `
import json, time

class DictCache(object):
    def __init__(self):
        self.data = {}

    def _live(self, key):
        item = self.data.get(key)
        if item and item[0] and item[0] < time.time():
            del self.data[key]
            return None
        return item

    def set(self, key, value, serialize=True, time=0, min_compress_len=0, raise_on_error=False):
        self.data[key] = (self._expiry(time), json.dumps(value))

    def _expiry(self, ttl):
        return time.time() + ttl if ttl else 0

    def get(self, key, raise_on_error=False):
        item = self._live(key)
        return json.loads(item[1]) if item else None

    def incr(self, key, delta=1, time=0):
        item = self._live(key)
        value = (json.loads(item[1]) if item else 0) + delta
        self.data[key] = (item[0] if item else self._expiry(time), json.dumps(max(value, 0)))
        return max(value, 0)

    def decr(self, key, delta=1, time=0):
        return self.incr(key, -delta, time)

    def delete(self, key, server_key=None):
        self.data.pop(key, None)

    def set_multi(self, mapping, server_key, serialize=True, time=0, min_compress_len=0):
        for key, value in mapping.items():
            self.set(key, value, time=time)

    def get_multi(self, keys, server_key):
        return [self.get(key) for key in keys]

def filter_factory(global_conf, **local_conf):
    cache = DictCache()
    def cache_filter(app):
        def middleware(env, start_response):
            env['swift.cache'] = cache
            return app(env, start_response)
        return middleware
    return cache_filter
`;

function backendConf(server: Exclude<Server, 'proxy'>, dir: string, port: number, workers: number): string {
  return `[DEFAULT]
bind_ip = 127.0.0.1
bind_port = ${port}
workers = ${workers}
user = ${userInfo().username}
devices = ${path.join(dir, 'srv')}
mount_check = false
disable_fallocate = true
swift_dir = ${dir}
log_name = ${server}-server
log_level = INFO

[pipeline:main]
pipeline = healthcheck ${server}-server

[filter:healthcheck]
use = egg:swift#healthcheck

[app:${server}-server]
use = egg:swift#${server}
`;
}

/** Starts each access-log line of the proxy's outer proxy-logging (the requests as clients sent them). */
export const ACCESS_LOG_MARK = 'haven-access';

function proxyConf(dir: string, port: number, workers: number, tls: SwiftOptions['tls']): string {
  return `[DEFAULT]
bind_ip = 127.0.0.1
bind_port = ${port}
workers = ${workers}
user = ${userInfo().username}
swift_dir = ${dir}
log_name = proxy-server
log_level = INFO
${tls ? `cert_file = ${tls.certFile}\nkey_file = ${tls.keyFile}\n` : ''}
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck access-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1
max_bucket_listing = ${LIST_PAGE_KEYS}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = ${SWIFT_CREDENTIALS.secretAccessKey} .admin

[filter:cache]
paste.filter_factory = haven_test_cache:filter_factory

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
# The outer one: every request as the client sent it, in a line SwiftRequestLog reads (the inner one
# logs only what the middlewares between them make themselves).
[filter:access-logging]
use = egg:swift#proxy_logging
access_log_headers = true
access_log_headers_only = Range, X-Amz-Content-Sha256
log_msg_template = ${ACCESS_LOG_MARK} {method} {path} {status_int} {bytes_recvd} {bytes_sent} {headers}
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
`;
}

/**
 * Runs `argv[2:]` with PR_SET_PDEATHSIG = signal `argv[1]`, then execs it: the server dies with the
 * process that started it, even one killed without a chance to clean up (a test runner's timeout).
 * A server with workers gets SIGTERM, on which it SIGTERMs its process group (its own: it is started
 * detached), workers included; a single-process server gets SIGKILL.
 */
const PDEATHSIG = 'import ctypes, os, sys; ctypes.CDLL(None).prctl(1, int(sys.argv[1])); os.execvp(sys.argv[2], sys.argv[2:])';

export interface SwiftOptions {
  /** Worker processes of the proxy and the object server (default 0: the server's one process serves). */
  workers?: number;
  /**
   * The proxy speaks HTTPS with this certificate (PEM files; clients must trust `certFile`), as a
   * production S3 endpoint does; the endpoint is then https://. Swift documents its own TLS as for
   * testing, which this is.
   */
  tls?: { certFile: string; keyFile: string };
}

/** A started Swift: TestS3, plus the proxy's log, whose access lines SwiftRequestLog counts. */
export interface SwiftS3 extends TestS3 {
  proxyLog: string;
  /** CPU time (user + system, ms) the servers have used so far, their reaped workers included (benchmarks). */
  cpuMs(): number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Whether `url` answers 200 (over HTTPS trusting `ca`). */
function healthy(url: string, ca: Buffer | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    const req = (url.startsWith('https:') ? https : http).get(url, { ...(ca ? { ca } : {}), timeout: 2_000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
  });
}

export async function startSwift(temp: TempDirs, opts: SwiftOptions = {}): Promise<SwiftS3> {
  const workers = opts.workers ?? 0;
  const workersOf = (s: Server): number => (s === 'proxy' || s === 'object' ? workers : 0);
  const why = swiftMissing();
  if (why) throw new Error(why);
  const dir = temp.make('swift');
  const logs = path.join(dir, 'logs');
  mkdirSync(path.join(dir, 'srv', 'd0'), { recursive: true });
  mkdirSync(logs);
  const ports = { account: await freePort(), container: await freePort(), object: await freePort(), proxy: await freePort() };
  for (const s of ['account', 'container', 'object'] as const) writeFileSync(path.join(dir, `${s}-server.conf`), backendConf(s, dir, ports[s], workersOf(s)));
  writeFileSync(path.join(dir, 'proxy-server.conf'), proxyConf(dir, ports.proxy, workers, opts.tls));
  writeFileSync(path.join(dir, 'haven_test_cache.py'), CACHE_MODULE);
  const children = new Map<Server, ChildProcess>();
  // Each server leads a process group of its own (its workers with it), killed as a whole.
  const killGroup = (c: ChildProcess, signal: NodeJS.Signals): void => {
    try {
      process.kill(-c.pid!, signal);
    } catch {
      // ESRCH: the group is gone already.
    }
  };
  const killAll = (): void => {
    for (const c of children.values()) killGroup(c, 'SIGKILL');
  };
  process.once('exit', killAll);
  const logTails = (): string =>
    SERVERS.map((s) => {
      const file = path.join(logs, `${s}.log`);
      const text = existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').slice(-15).join('\n') : '(no log)';
      return `--- ${file}\n${text}`;
    }).join('\n');
  const fail = async (reason: string): Promise<never> => {
    killAll();
    process.off('exit', killAll);
    await Promise.all([...children.values()].map((c) => (c.exitCode === null && c.signalCode === null ? once(c, 'exit') : undefined)));
    throw new Error(`OpenStack Swift did not start in ${dir}: ${reason}\n${logTails()}`);
  };

  // Eventlet's green DNS (dnspython) costs a third of a second per process and nothing here resolves names.
  const env = { ...process.env, PYTHONPATH: dir, EVENTLET_NO_GREENDNS: 'yes' };
  const launch = (s: Server): void => {
    const log = openSync(path.join(logs, `${s}.log`), 'a');
    // -v: log to stderr too, which goes to the log file (without /dev/log, syslog output is lost).
    const deathSignal = workersOf(s) > 0 ? osConstants.signals.SIGTERM : osConstants.signals.SIGKILL;
    const child = spawn(PYTHON, ['-c', PDEATHSIG, String(deathSignal), `/usr/bin/swift-${s}-server`, path.join(dir, `${s}-server.conf`), '-v'], { stdio: ['ignore', log, log], cwd: dir, env, detached: true });
    closeSync(log);
    children.set(s, child);
  };
  // The back-end servers do not read the rings; the proxy does, so it starts once they are built.
  for (const s of ['account', 'container', 'object'] as const) launch(s);
  const rings = spawn(PYTHON, ['-c', RING_SCRIPT, dir, path.join(dir, 'srv'), String(ports.account), String(ports.container), String(ports.object)], { stdio: ['ignore', 'ignore', 'pipe'], env });
  let ringErr = '';
  rings.stderr!.setEncoding('utf8').on('data', (d: string) => (ringErr += d));
  const [ringCode] = (await once(rings, 'exit')) as [number | null];
  if (ringCode !== 0) return fail(`cannot build the rings: ${ringErr.trim()}`);
  launch('proxy');

  // Ready when every server answers its healthcheck, then the bucket is made through s3api (which
  // also proves tempauth takes the credentials).
  const ca = opts.tls ? readFileSync(opts.tls.certFile) : undefined;
  const deadline = Date.now() + 30_000;
  for (const s of SERVERS) {
    for (;;) {
      const dead = [...children].find(([, c]) => c.exitCode !== null || c.signalCode !== null);
      if (dead) return fail(`swift-${dead[0]}-server exited (${dead[1].exitCode ?? dead[1].signalCode})`);
      const ok = await healthy(s === 'proxy' && ca ? `https://127.0.0.1:${ports[s]}/healthcheck` : `http://127.0.0.1:${ports[s]}/healthcheck`, ca);
      if (ok) break;
      if (Date.now() > deadline) return fail(`swift-${s}-server did not answer /healthcheck on port ${ports[s]} within 30 s`);
      await sleep(50);
    }
  }
  const endpoint = `${ca ? 'https' : 'http'}://127.0.0.1:${ports.proxy}`;
  const admin = new S3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: SWIFT_CREDENTIALS, ...(ca ? { requestHandler: { httpsAgent: { ca } } } : {}) });
  try {
    await admin.send(new CreateBucketCommand({ Bucket: SWIFT_BUCKET }));
  } catch (err) {
    return fail(`creating the bucket ${SWIFT_BUCKET} failed: ${(err as Error).message}`);
  } finally {
    admin.destroy();
  }

  const stores: S3ObjectStore[] = [];
  return {
    endpoint,
    proxyLog: path.join(logs, 'proxy.log'),
    cpuMs() {
      let ticks = 0;
      for (const c of children.values()) {
        try {
          // Fields after the command name: utime, stime, cutime, cstime are the 12th to 15th.
          const stat = readFileSync(`/proc/${c.pid}/stat`, 'utf8');
          const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
          for (const i of [11, 12, 13, 14]) ticks += Number(f[i]);
        } catch {
          // exited
        }
      }
      return ticks * 10; // USER_HZ is 100 on Linux
    },
    bucket: SWIFT_BUCKET,
    credentials: SWIFT_CREDENTIALS,
    listPageKeys: LIST_PAGE_KEYS,
    // Swift's s3api refuses If-None-Match: * on PUT, so Haven runs with HAVEN_S3_CONDITIONAL_WRITES=false here.
    env: { HAVEN_S3_ENDPOINT: endpoint, HAVEN_S3_REGION: 'us-east-1', HAVEN_S3_CONDITIONAL_WRITES: 'false', AWS_ACCESS_KEY_ID: SWIFT_CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: SWIFT_CREDENTIALS.secretAccessKey },
    store(prefix, opts) {
      const s = new S3ObjectStore({ url: `s3://${SWIFT_BUCKET}/${prefix}`, endpoint, region: 'us-east-1', credentials: SWIFT_CREDENTIALS, conditionalWrites: false, ...(ca ? { ca } : {}), ...opts });
      stores.push(s);
      return s;
    },
    async close() {
      for (const s of stores) s.close();
      process.off('exit', killAll);
      await Promise.all(
        [...children.values()].map(async (c) => {
          if (c.exitCode === null && c.signalCode === null) {
            const exited = once(c, 'exit');
            killGroup(c, 'SIGTERM');
            // A server stuck in a request gets a moment, then SIGKILL.
            const timer = setTimeout(() => killGroup(c, 'SIGKILL'), 3_000);
            await exited;
            clearTimeout(timer);
          }
          killGroup(c, 'SIGKILL'); // workers that outlived their parent
        }),
      );
    },
  };
}
