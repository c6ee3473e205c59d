/**
 * Checks real API answers against the response schemas their routes declare (api/server.ts keeps
 * them by route): the OpenAPI document's promises hold for every answer the tests see. A route or
 * status without a schema is not checked; an answer that breaks its schema fails the test.
 */
import { Ajv, type ValidateFunction } from 'ajv';

interface Route {
  method: string;
  re: RegExp;
  params: number;
  schemas: Record<string, unknown>;
}

export class ResponseChecker {
  private readonly routes: Route[] = [];
  private readonly ajv = new Ajv({ strict: false, validateFormats: false, allErrors: true });
  private readonly compiled = new Map<unknown, ValidateFunction>();

  constructor(schemas: Map<string, Record<string, unknown>>) {
    for (const [key, byStatus] of schemas) {
      const [method, url] = key.split(' ') as [string, string];
      const re = new RegExp(`^${url.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/:[A-Za-z_]+/g, '[^/]+')}/?$`);
      this.routes.push({ method, re, params: (url.match(/:/g) ?? []).length, schemas: byStatus });
    }
    // Static segments win over parameters (/backups/detail before /backups/:id).
    this.routes.sort((a, b) => a.params - b.params);
  }

  /** Throws when the answer breaks the schema its route declares for its status. */
  check(method: string, url: string, status: number, contentType: string | undefined, body: string): void {
    const p = url.split('?')[0]!.replace(/\/{2,}/g, '/');
    // Paths the router normalises or refuses (dot segments, encodings, spaces: the attack tests'
    // odd URLs) may reach another route than a pattern match says: not checked.
    const segs = p.split('/').slice(1);
    if (segs.some((x, i) => x === '.' || x === '..' || /[\s%\\\x00-\x1f]/.test(x) || (x === '' && i < segs.length - 1))) return;
    const route = this.routes.find((r) => r.method === method && r.re.test(p));
    if (!route) return;
    const schema = route.schemas[String(status)] ?? route.schemas[`${Math.floor(status / 100)}xx`] ?? route.schemas[`${Math.floor(status / 100)}XX`];
    // A success the route documents none of (it documents others): the document is wrong.
    if (!schema && status < 300 && Object.keys(route.schemas).some((k) => /^2/.test(k))) {
      throw new Error(`${method} ${p} answered ${status}, which its documented responses (${Object.keys(route.schemas).join(', ')}) do not list`);
    }
    if (!schema || !body || !contentType?.includes('json')) return;
    let validate = this.compiled.get(schema);
    if (!validate) this.compiled.set(schema, (validate = this.ajv.compile(schema as object)));
    const data = JSON.parse(body) as unknown;
    if (!validate(data)) {
      throw new Error(`${method} ${p} answered ${status} outside its documented response schema: ${this.ajv.errorsText(validate.errors)}; body: ${body.slice(0, 600)}`);
    }
  }
}
