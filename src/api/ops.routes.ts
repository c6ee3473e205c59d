/** Operability: health, Prometheus metrics and the OpenAPI document. */
import type { FastifyInstance } from 'fastify';
import type { ApiServices } from './server.ts';

export function registerOpsRoutes(app: FastifyInstance, s: ApiServices): void {
  app.get('/healthz', { schema: { hide: true } }, async (_req, reply) => {
    const parts = await s.health();
    const ok = Object.values(parts).every((v) => v === 'ok');
    return reply.code(ok ? 200 : 503).send({ status: ok ? 'ok' : 'degraded', ...parts });
  });
  // Metrics tell a lot about every tenant: on the API listener they need a cloud-admin token; for a
  // scraper without one, the operator opts into a separate listener (HAVEN_METRICS_PORT, metrics.ts).
  app.get('/metrics', { config: { auth: 'cloudAdmin' }, schema: { hide: true } }, async (_req, reply) => {
    const text = await s.metrics.registry.metrics();
    return reply.type(s.metrics.registry.contentType).send(text);
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
}
