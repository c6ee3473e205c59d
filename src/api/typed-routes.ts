/**
 * Typed routes. Each register function takes the app through `typed()`, so `req.body`, `req.query`
 * and `req.params` have the static types of the TypeBox schemas that validate them, with no casts.
 * The type provider is types only: validation stays with the Ajv compilers set in server.ts.
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';

export const typed = (app: FastifyInstance) => app.withTypeProvider<TypeBoxTypeProvider>();

/**
 * A path parameter: any string, nothing more. Path schemas only name the parameters; a pattern or
 * length here would turn an unknown id's 404 into a validation 400 (lengths are the router's
 * maxParamLength, 414).
 */
export const PathParam = Type.String();
/** The params of a route under /:projectId with no other parameter. */
export const ProjectParams = Type.Object({ projectId: PathParam });
