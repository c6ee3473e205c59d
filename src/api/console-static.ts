/**
 * The web console (console/, built into dist/console by `npm ci` or `npm run build`) at /console/,
 * on the API's own listener: same origin, same TLS, no CORS. Files are sent by @fastify/static
 * (ranges, ETags, no path traversal); the routes are ours so each states its auth mode like every
 * other route. The page needs no token to load: it logs in through Keystone like any client.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply } from 'fastify';

export const CONSOLE_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'console');

/** Scripts, styles and data only from Haven itself; nothing may frame the console (clickjacking). */
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

function secure(reply: FastifyReply): FastifyReply {
  for (const [k, v] of Object.entries(SECURITY_HEADERS)) reply.header(k, v);
  return reply;
}

export async function registerConsole(app: FastifyInstance, dir = CONSOLE_DIR): Promise<void> {
  // cacheControl off: ours (no-cache: always revalidated by ETag) is sent, not the plugin's.
  await app.register(fastifyStatic, { root: dir, serve: false, cacheControl: false });
  const PUBLIC = { config: { auth: 'none' as const }, schema: { hide: true } };
  // One route for /console and /console/ (the router ignores a trailing slash): the page's assets
  // are relative, so the bare name is sent on to the folder.
  app.get('/console/', PUBLIC, async (req, reply) => {
    if (!req.url.split('?')[0]!.endsWith('/')) return reply.redirect('/console/', 301);
    if (!existsSync(join(dir, 'index.html'))) {
      return secure(reply).code(503).type('text/plain; charset=utf-8').send('The web console is not built: run `npm run build` (npm ci does it), then reload.\n');
    }
    // Always revalidated: a new build's index.html names the new bundle.
    return secure(reply).header('cache-control', 'no-cache').sendFile('index.html');
  });
  app.get('/console/*', PUBLIC, async (req, reply) => {
    const file = (req.params as { '*': string })['*'];
    return secure(reply).header('cache-control', 'no-cache').sendFile(file);
  });
}
