/**
 * A counting HTTP proxy in front of an S3 server: every request passes through unchanged (method,
 * path, headers, Host included, so signatures still verify; bodies streamed both ways), and is
 * counted by method, GETs with a Range header apart. It sees what any client sends, so Haven and
 * restic are counted alike. The keys fetched are kept too, so a restore's packs read can be counted.
 *
 * With `tls` it listens on HTTPS (upstream stays plain HTTP). restic needs that against Swift: over
 * plain HTTP its S3 library signs uploads as streamed aws-chunked payloads, which Swift's s3api
 * refuses; over HTTPS it sends them whole. Every tool is then given the HTTPS endpoint, so all pay
 * the same TLS cost, as against a production S3 service.
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';

export interface RequestCounts {
  total: number;
  byMethod: Record<string, number>;
  /** GETs with a Range header. */
  rangeGets: number;
  /** GETs without one. */
  wholeGets: number;
  bytesIn: number;
  bytesOut: number;
  /** Distinct paths fetched by GET, with how many GETs each. */
  gotPaths: Map<string, number>;
}

export interface CountingProxy {
  endpoint: string;
  /** The counts since the last reset. */
  counts(): RequestCounts;
  reset(): void;
  close(): Promise<void>;
}

function emptyCounts(): RequestCounts {
  return { total: 0, byMethod: {}, rangeGets: 0, wholeGets: 0, bytesIn: 0, bytesOut: 0, gotPaths: new Map() };
}

export interface Tls {
  /** PEM files: clients trust `cert` (restic --cacert, NODE_EXTRA_CA_CERTS). */
  certFile: string;
  keyFile: string;
}

/** A self-signed certificate for 127.0.0.1 (openssl; Go clients need the IP in subjectAltName). */
export function makeLoopbackCert(dir: string): Tls {
  const certFile = path.join(dir, 'proxy-cert.pem');
  const keyFile = path.join(dir, 'proxy-key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyFile, '-out', certFile], { stdio: 'ignore' });
  return { certFile, keyFile };
}

export async function startCountingProxy(target: string, tls?: Tls): Promise<CountingProxy> {
  const upstream = new URL(target);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  let c = emptyCounts();
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const method = req.method ?? 'GET';
    c.total++;
    c.byMethod[method] = (c.byMethod[method] ?? 0) + 1;
    if (method === 'GET') {
      if (req.headers.range) c.rangeGets++;
      else c.wholeGets++;
      const p = (req.url ?? '').split('?')[0]!;
      c.gotPaths.set(p, (c.gotPaths.get(p) ?? 0) + 1);
    }
    const counted = c;
    req.on('data', (d: Buffer) => (counted.bytesIn += d.length));
    // Expect is never signed (SigV4 leaves it out); this server already answered 100 Continue.
    const { expect: _expect, ...headers } = req.headers;
    const up = http.request({ host: upstream.hostname, port: upstream.port, method, path: req.url, headers, agent }, (ures) => {
      res.writeHead(ures.statusCode ?? 502, ures.statusMessage, ures.headers);
      ures.on('data', (d: Buffer) => (counted.bytesOut += d.length));
      ures.pipe(res);
    });
    up.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`counting proxy: ${err.message}`);
    });
    req.pipe(up);
  };
  const server = tls ? https.createServer({ cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) }, handler) : http.createServer(handler);
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  return {
    endpoint: `${tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    counts: () => c,
    reset: () => void (c = emptyCounts()),
    async close() {
      server.closeAllConnections();
      server.close();
      agent.destroy();
    },
  };
}

export function describeCounts(c: RequestCounts): string {
  const methods = Object.entries(c.byMethod)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([m, n]) => `${m} ${n}`)
    .join(', ');
  return `${c.total} requests (${methods}; GET with Range ${c.rangeGets}, without ${c.wholeGets})`;
}
