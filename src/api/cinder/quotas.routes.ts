/**
 * Cinder quota sets (/v2 and /v3 os-quota-sets): a project reads its own quotas (with usage:
 * `?usage=true` gives {in_use, limit, reserved} per resource) and the defaults; the cloud admin
 * reads any project's, sets `volumes` and `gigabytes` per project (PUT) and resets them to the
 * defaults (DELETE). Enforcement is in the services (QuotaService.checkVolumeQuota).
 */
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { SETTABLE_QUOTAS, type QuotaSet, type SettableQuota } from '../../services/quota-service.ts';
import type { AuthContext } from '../../services/identity-service.ts';
import { ApiError } from '../errors.ts';
import type { ApiServices } from '../server.ts';
import { PathParam, typed } from '../typed-routes.ts';
import { NoBody as Done } from '../wire/schemas.ts';

const CFG = { envelope: 'cinder' as const, auth: 'project' as const };
const Limit = Type.Integer({ minimum: -1, maximum: Number.MAX_SAFE_INTEGER });
const UpdateBody = Type.Object({
  quota_set: Type.Record(Type.String(), Type.Union([Limit, Type.String({ pattern: '^-?\\d{1,15}$' })])),
});
const ShowQuery = Type.Object({ usage: Type.Optional(Type.Union([Type.Boolean(), Type.String()])) });
const Params = Type.Object({ projectId: PathParam, targetId: PathParam });

type Caller = { params: { projectId: string; targetId: string }; auth: AuthContext | null };

// What the quota operations answer (OpenAPI; the tests check real answers against these): per
// resource (volumes, gigabytes, backups, backup_gigabytes, per_volume_gigabytes) a limit (-1:
// unlimited), or with ?usage=true its in_use, limit and reserved.
const Usage = Type.Object({ in_use: Type.Integer(), limit: Type.Integer(), reserved: Type.Integer() });
const QuotaSetJson = Type.Object({ quota_set: Type.Record(Type.String(), Type.Union([Type.Integer(), Usage, Type.String({ description: 'id: the project' })])) });

export function registerQuotaRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  for (const version of ['v2', 'v3']) {
    const tags = ['quotas'];
    /** The target project, if the caller may see it: its own project, or any for the cloud admin. */
    const target = async (req: Caller): Promise<string> => {
      const { projectId, targetId } = req.params;
      if (targetId !== projectId && !req.auth!.isCloudAdmin) throw new ApiError(403, `Policy doesn't allow volume_extension:quotas:show to be performed for project ${targetId}.`);
      return (await s.identity.getProject(targetId)).id;
    };
    const cloudAdmin = (req: Caller, rule: string): void => {
      if (!req.auth!.isCloudAdmin) throw new ApiError(403, `Policy doesn't allow volume_extension:quotas:${rule} to be performed.`);
    };

    app.get(`/${version}/:projectId/os-quota-sets/:targetId`, { config: CFG, schema: { params: Params, querystring: ShowQuery, tags, summary: 'Show a project\'s quotas (?usage=true: with usage)', response: { 200: QuotaSetJson } } }, async (req) => {
      const id = await target(req);
      const usage = req.query.usage;
      if (usage === true || (typeof usage === 'string' && /^(true|1|yes|on)$/i.test(usage))) {
        const u = await s.quotas.usage(id);
        const sets = Object.fromEntries(Object.entries(u).map(([k, v]) => [k, { in_use: v.inUse, limit: v.limit, reserved: v.reserved }]));
        return { quota_set: { id, ...sets } };
      }
      return { quota_set: { id, ...(await s.quotas.limits(id)) } };
    });
    app.get(`/${version}/:projectId/os-quota-sets/:targetId/defaults`, { config: CFG, schema: { params: Params, tags, summary: 'Default quotas', response: { 200: QuotaSetJson } } }, async (req) => {
      return { quota_set: { id: req.params.targetId, ...s.quotas.defaults() } };
    });
    app.put(`/${version}/:projectId/os-quota-sets/:targetId`, { config: CFG, schema: { params: Params, body: UpdateBody, tags, summary: 'Set a project\'s volumes and gigabytes quotas (cloud admin)', response: { 200: QuotaSetJson } } }, async (req) => {
      cloudAdmin(req, 'update');
      const body = req.body.quota_set;
      const bad = Object.keys(body).filter((k) => !(SETTABLE_QUOTAS as readonly string[]).includes(k));
      if (bad.length) {
        throw new ApiError(400, `Bad key(s) in quota set: ${bad.join(', ')}. Settable per project: ${SETTABLE_QUOTAS.join(', ')} (backups, backup_gigabytes and per_volume_gigabytes come from Haven's settings).`);
      }
      const values: Partial<Record<SettableQuota, number>> = {};
      for (const k of SETTABLE_QUOTAS) {
        if (body[k] === undefined) continue;
        const v = Number(body[k]);
        if (!Number.isSafeInteger(v) || v < -1) throw new ApiError(400, `Invalid input received: quota_set.${k} must be an integer of at least -1 (unlimited), got ${JSON.stringify(body[k])}.`);
        values[k] = v;
      }
      const id = (await s.identity.getProject(req.params.targetId)).id;
      const set: QuotaSet = await s.quotas.setLimits(id, values);
      return { quota_set: set };
    });
    app.delete(`/${version}/:projectId/os-quota-sets/:targetId`, { config: CFG, schema: { params: Params, tags, summary: 'Reset a project\'s quotas to the defaults (cloud admin)', response: { 200: Done } } }, async (req, reply) => {
      cloudAdmin(req, 'delete');
      const id = (await s.identity.getProject(req.params.targetId)).id;
      await s.quotas.resetLimits(id);
      return reply.code(200).send();
    });
  }
}
