/**
 * The OpenAPI document (GET /openapi.json) is valid OpenAPI 3 by a standard validator
 * (@apidevtools/swagger-parser), and says what each operation answers: every API operation
 * documents its errors in its family's envelope and its successes. The answers themselves are checked against these schemas in every API test
 * (test/helpers/response-check.ts).
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import SwaggerParser from '@apidevtools/swagger-parser';
import { startService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-openapi-');
after(() => temp.cleanup());

interface Operation { responses?: Record<string, { content?: Record<string, { schema?: unknown }> }> }

describe('the OpenAPI document', () => {
  it('validates as OpenAPI 3, and every API operation documents its responses', async () => {
    const svc = await startService(temp);
    try {
      const r = await svc.req({ method: 'GET', url: '/openapi.json' });
      assert.equal(r.statusCode, 200);
      const doc = r.json() as { openapi: string; paths: Record<string, Record<string, Operation>> };
      assert.match(doc.openapi, /^3\./);
      // A deep copy: the validator resolves and changes what it is given.
      await SwaggerParser.validate(structuredClone(doc) as never);

      const ops: { path: string; method: string; op: Operation }[] = [];
      for (const [p, methods] of Object.entries(doc.paths)) for (const [m, op] of Object.entries(methods)) if (/^\/(v1|v2|v2\.1|v3|haven)\//.test(p)) ops.push({ path: p, method: m, op });
      assert.ok(ops.length >= 100, `${ops.length} API operations`);
      const without = ops.filter(({ op }) => !op.responses?.['4XX']?.content?.['application/json']?.schema);
      assert.deepEqual(without.map((o) => `${o.method} ${o.path}`), [], 'operations without their error envelope');
      const silent = ops.filter(({ op }) => !Object.keys(op.responses ?? {}).some((k) => /^2\d\d$/.test(k)));
      assert.deepEqual(silent.map((o) => `${o.method} ${o.path}`), [], 'operations that do not document their success');
    } finally {
      await svc.close();
    }
  });
});
