/**
 * Requests an S3 server saw, counted from the server's own access log: Swift's proxy logs every
 * request as the client sent it (test/helpers/swift.ts, ACCESS_LOG_MARK lines: method, path, status,
 * bytes each way, Range header), so Haven and restic are counted alike and nothing stands between
 * them and the server. The keys fetched are kept too, so a restore's packs read can be counted.
 *
 * Swift serves HTTPS itself (SwiftOptions.tls, a certificate from test/helpers/tls.ts). restic needs
 * that: over plain HTTP its S3 library signs uploads as streamed aws-chunked payloads, which Swift's
 * s3api refuses; over HTTPS it sends them whole. Every tool is given the HTTPS endpoint, so all pay
 * the same TLS cost, as against a production S3 service. (A counting TLS proxy in the benchmark's
 * own process did this before: it spent about 2 s of CPU per 1 GiB step on the same 2 cores the
 * tools ran on.)
 */
import { promises as fs } from 'node:fs';
import { ACCESS_LOG_MARK } from '../../test/helpers/swift.ts';
export { makeLoopbackCert, type Tls } from '../../test/helpers/tls.ts';

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

const LINE = new RegExp(`${ACCESS_LOG_MARK} (\\S+) (\\S+) (\\d+) (\\S+) (\\S+) (.*?) \\(txn:`);
const num = (s: string): number => (s === '-' ? 0 : Number(s));

/** Counts one access-log line into `c`; false when the line is not one. */
export function countLine(c: RequestCounts, line: string): boolean {
  const m = LINE.exec(line);
  if (!m) return false;
  const [, method, quotedPath, , recvd, sent, headers] = m as unknown as [string, string, string, string, string, string, string];
  c.total++;
  c.byMethod[method] = (c.byMethod[method] ?? 0) + 1;
  c.bytesIn += num(recvd);
  c.bytesOut += num(sent);
  if (method === 'GET') {
    if (/(^|\s)Range:/i.test(decodeURIComponent(headers))) c.rangeGets++;
    else c.wholeGets++;
    const p = decodeURIComponent(quotedPath).split('?')[0]!;
    c.gotPaths.set(p, (c.gotPaths.get(p) ?? 0) + 1);
  }
  return true;
}

function emptyCounts(): RequestCounts {
  return { total: 0, byMethod: {}, rangeGets: 0, wholeGets: 0, bytesIn: 0, bytesOut: 0, gotPaths: new Map() };
}

export class RequestLog {
  private readonly file: string;
  private from = 0;

  constructor(file: string) {
    this.file = file;
  }

  /** Waits until the log stops growing (the server logs a request once its response is sent). */
  private async settled(): Promise<number> {
    let size = -1;
    for (let i = 0; i < 20; i++) {
      const now = (await fs.stat(this.file)).size;
      if (now === size) return now;
      size = now;
      await new Promise((r) => setTimeout(r, 150));
    }
    return size;
  }

  /** Counts from now on. */
  async reset(): Promise<void> {
    this.from = await this.settled();
  }

  /** The requests logged since the last reset. */
  async counts(): Promise<RequestCounts> {
    const end = await this.settled();
    const fh = await fs.open(this.file, 'r');
    try {
      const buf = Buffer.alloc(end - this.from);
      await fh.read(buf, 0, buf.length, this.from);
      const c = emptyCounts();
      for (const line of buf.toString('utf8').split('\n')) countLine(c, line);
      return c;
    } finally {
      await fh.close();
    }
  }
}

export function describeCounts(c: RequestCounts): string {
  const methods = Object.entries(c.byMethod)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([m, n]) => `${m} ${n}`)
    .join(', ');
  return `${c.total} requests (${methods}; GET with Range ${c.rangeGets}, without ${c.wholeGets}); ${(c.bytesIn / 2 ** 20).toFixed(1)} MiB sent, ${(c.bytesOut / 2 ** 20).toFixed(1)} MiB received`;
}
