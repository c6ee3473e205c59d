/**
 * Response-schema pieces the route files share (the OpenAPI document's building blocks; the tests
 * check real answers against the schemas made of them).
 */
import { Type } from 'typebox';

export const NullableString = Type.Union([Type.String(), Type.Null()]);
export const Link = Type.Object({ href: Type.String(), rel: Type.String() });
/** An answer without a body (202 accepted, 204 done). */
export const NoBody = Type.Unknown({ description: 'no body' });
