/** Operability: health, Prometheus metrics and the OpenAPI document. */
import type { FastifyInstance } from 'fastify';
import type { ApiServices } from './server.ts';

export function registerOpsRoutes(app: FastifyInstance, s: ApiServices): void {
  // 503 "degraded" with the reason when a part is not ok (the catalog or the repository cannot be
  // written, e.g. a full disk), so a load balancer or monitor takes the process out of rotation.
  app.get('/healthz', { config: { auth: 'none' }, schema: { hide: true } }, async (_req, reply) => {
    const parts = await s.health();
    const bad = Object.entries(parts).filter(([, v]) => v !== 'ok');
    if (!bad.length) return reply.code(200).send({ status: 'ok', ...parts });
    return reply.code(503).send({ status: 'degraded', reason: bad.map(([k, v]) => `${k}: ${v}`).join('; '), ...parts });
  });
  // Metrics tell a lot about every tenant: on the API listener they need a cloud-admin token; for a
  // scraper without one, the operator opts into a separate listener (HAVEN_METRICS_PORT, metrics.ts).
  app.get('/metrics', { config: { auth: 'cloudAdmin' }, schema: { hide: true } }, async (_req, reply) => {
    const text = await s.metrics.registry.metrics();
    return reply.type(s.metrics.registry.contentType).send(text);
  });
  app.get('/openapi.json', { config: { auth: 'none' }, schema: { hide: true } }, async () => app.swagger());
}
