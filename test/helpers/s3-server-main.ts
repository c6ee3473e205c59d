/**
 * The S3 test server's process (see s3-server.ts): s3rver on a free loopback port, storing into the
 * folder given as argument, with the bucket given as second argument. Prints `{"port": N}` once it
 * listens (a third argument `plain` leaves out the conditional PUT below). Started with --openssl-legacy-provider: s3rver makes ListObjectsV2 continuation tokens
 * with DES, which OpenSSL 3 keeps in its legacy provider.
 *
 * s3rver answers conditional reads but ignores `If-None-Match: *` on PUT, which S3 (since 2024),
 * MinIO and Ceph RGW honour and the repository's exclusive config creation relies on. One
 * middleware adds it as those servers do it: under a per-key lock, an existing key answers 412
 * PreconditionFailed and nothing is written. Everything else is s3rver's own.
 */
import S3rver from 's3rver';

interface KoaContext {
  method: string;
  path: string;
  status: number;
  type: string;
  body: unknown;
  get(name: string): string;
  store: { existsObject(bucket: string, key: string): Promise<boolean> };
}
type Middleware = (ctx: KoaContext, next: () => Promise<void>) => Promise<void>;

const [directory, bucket, mode] = process.argv.slice(2);
if (!directory || !bucket) throw new Error('usage: s3-server-main.ts DIR BUCKET [plain]');
/** `plain`: s3rver as it is, ignoring If-None-Match on PUT (a server Haven must refuse). */
const conditionalWrites = mode !== 'plain';

const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket, configs: [] }] });
const held = new Map<string, Promise<void>>();
const conditionalPut: Middleware = async (ctx, next) => {
  if (ctx.method !== 'PUT' || ctx.get('if-none-match') !== '*') return next();
  const [, b = '', ...rest] = decodeURIComponent(ctx.path).split('/');
  const key = rest.join('/');
  const id = `${b}/${key}`;
  while (held.has(id)) await held.get(id);
  let release!: () => void;
  held.set(id, new Promise<void>((r) => (release = r)));
  try {
    if (await ctx.store.existsObject(b, key)) {
      ctx.status = 412;
      ctx.type = 'application/xml';
      ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>';
      return;
    }
    await next();
  } finally {
    held.delete(id);
    release();
  }
};
if (conditionalWrites) (server as unknown as { middleware: Middleware[] }).middleware.unshift(conditionalPut);
const addr = await server.run();
process.stdout.write(`${JSON.stringify({ port: addr.port })}\n`);
process.on('SIGTERM', () => void server.close().finally(() => process.exit(0)));
