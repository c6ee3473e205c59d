/** Paging helpers shared by the list endpoints (Cinder backups, CSBS items and policies). */

/**
 * The `<collection>_links` next link: an absolute URL with the same filters, the page size and the
 * last item as marker (offset dropped: the marker carries the position).
 */
export function nextLink(baseHref: string, query: Record<string, unknown>, limit: number, lastId: string): { href: string; rel: 'next' }[] {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && k !== 'marker' && k !== 'offset' && k !== 'limit') params.set(k, String(v));
  params.set('limit', String(limit));
  params.set('marker', lastId);
  return [{ href: `${baseHref}?${params}`, rel: 'next' }];
}

/**
 * Parses `key[:dir][,key[:dir]…]` (the first key counts) against the allowed keys; returns null with
 * a message for the caller's own error envelope when it is not valid.
 */
export function parseSortParam<K extends string>(sort: string, allowed: readonly K[], defaultDir: 'asc' | 'desc' = 'desc'): { key: K; dir: 'asc' | 'desc' } | { error: string } {
  const [k, d] = sort.split(',')[0]!.split(':');
  if (!k || !(allowed as readonly string[]).includes(k)) return { error: `sort key ${k ?? ''} is not one of ${allowed.join(', ')}` };
  if (d !== undefined && d !== 'asc' && d !== 'desc') return { error: `sort direction ${d} must be asc or desc` };
  return { key: k as K, dir: d ?? defaultDir };
}
