/**
 * Cinder quota sets (/v2 and /v3 os-quota-sets): a project reads its own quotas (with usage:
 * `?usage=true` gives {in_use, limit, reserved} per resource) and the defaults; the cloud admin
 * reads any project's, sets `volumes` and `gigabytes` per project (PUT) and resets them to the
 * defaults (DELETE). Enforcement is in the services (QuotaService.checkVolumeQuota).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { SETTABLE_QUOTAS, type QuotaSet } from '../../services/quota-service.ts';
import { ApiError } from '../errors.ts';
import type { ApiServices } from '../server.ts';

const CFG = { envelope: 'cinder' as const, auth: 'project' as const };
const Limit = Type.Integer({ minimum: -1, maximum: Number.MAX_SAFE_INTEGER });
const UpdateBody = Type.Object({
  quota_set: Type.Record(Type.String(), Type.Union([Limit, Type.String({ pattern: '^-?\\d{1,15}$' })])),
});
const ShowQuery = Type.Object({ usage: Type.Optional(Type.Union([Type.Boolean(), Type.String()])) });

type Params = { projectId: string; targetId: string };

export function registerQuotaRoutes(app: FastifyInstance, s: ApiServices): void {
  for (const version of ['v2', 'v3']) {
    const tags = ['quotas'];
    /** The target project, if the caller may see it: its own project, or any for the cloud admin. */
    const target = async (req: FastifyRequest): Promise<string> => {
      const { projectId, targetId } = req.params as Params;
      if (targetId !== projectId && !req.auth!.isCloudAdmin) throw new ApiError(403, `Policy doesn't allow volume_extension:quotas:show to be performed for project ${targetId}.`);
      return (await s.identity.getProject(targetId)).id;
    };
    const cloudAdmin = (req: FastifyRequest, rule: string): void => {
      if (!req.auth!.isCloudAdmin) throw new ApiError(403, `Policy doesn't allow volume_extension:quotas:${rule} to be performed.`);
    };

    app.get(`/${version}/:projectId/os-quota-sets/:targetId`, { config: CFG, schema: { querystring: ShowQuery, tags, summary: 'Show a project\'s quotas (?usage=true: with usage)' } }, async (req) => {
      const id = await target(req);
      const usage = (req.query as { usage?: boolean | string }).usage;
      if (usage === true || (typeof usage === 'string' && /^(true|1|yes|on)$/i.test(usage))) {
        const u = await s.quotas.usage(id);
        const sets = Object.fromEntries(Object.entries(u).map(([k, v]) => [k, { in_use: v.inUse, limit: v.limit, reserved: v.reserved }]));
        return { quota_set: { id, ...sets } };
      }
      return { quota_set: { id, ...(await s.quotas.limits(id)) } };
    });
    app.get(`/${version}/:projectId/os-quota-sets/:targetId/defaults`, { config: CFG, schema: { tags, summary: 'Default quotas' } }, async (req) => {
      const { targetId } = req.params as Params;
      return { quota_set: { id: targetId, ...s.quotas.defaults() } };
    });
    app.put(`/${version}/:projectId/os-quota-sets/:targetId`, { config: CFG, schema: { body: UpdateBody, tags, summary: 'Set a project\'s volumes and gigabytes quotas (cloud admin)' } }, async (req) => {
      cloudAdmin(req, 'update');
      const body = (req.body as { quota_set: Record<string, number | string> }).quota_set;
      const bad = Object.keys(body).filter((k) => !(SETTABLE_QUOTAS as readonly string[]).includes(k));
      if (bad.length) {
        throw new ApiError(400, `Bad key(s) in quota set: ${bad.join(', ')}. Settable per project: ${SETTABLE_QUOTAS.join(', ')} (backups, backup_gigabytes and per_volume_gigabytes come from Haven's settings).`);
      }
      const values: Partial<Record<(typeof SETTABLE_QUOTAS)[number], number>> = {};
      for (const k of SETTABLE_QUOTAS) {
        if (body[k] === undefined) continue;
        const v = Number(body[k]);
        if (!Number.isSafeInteger(v) || v < -1) throw new ApiError(400, `Invalid input received: quota_set.${k} must be an integer of at least -1 (unlimited), got ${JSON.stringify(body[k])}.`);
        values[k] = v;
      }
      const id = (await s.identity.getProject((req.params as Params).targetId)).id;
      const set: QuotaSet = await s.quotas.setLimits(id, values);
      return { quota_set: set };
    });
    app.delete(`/${version}/:projectId/os-quota-sets/:targetId`, { config: CFG, schema: { tags, summary: 'Reset a project\'s quotas to the defaults (cloud admin)' } }, async (req, reply) => {
      cloudAdmin(req, 'delete');
      const id = (await s.identity.getProject((req.params as Params).targetId)).id;
      await s.quotas.resetLimits(id);
      return reply.code(200).send();
    });
  }
}
