/**
 * Hash routes (#/volumes, #/backups?volume_id=…): the console is one static page under /console/,
 * so routes need no server fallback and survive a reload. Small enough to keep here rather than
 * take a router library and its server-rendering peer dependencies.
 */
import { useEffect, useState } from 'preact/hooks';

export interface Route {
  path: string;
  query: URLSearchParams;
}

function parse(): Route {
  const h = location.hash.replace(/^#/, '') || '/volumes';
  const [path = '/volumes', q = ''] = h.split('?');
  return { path, query: new URLSearchParams(q) };
}

export function useRoute(): Route {
  const [route, setRoute] = useState(parse);
  useEffect(() => {
    const on = () => setRoute(parse());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return route;
}

export function href(path: string, query: Record<string, string | undefined> = {}): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v) q.set(k, v);
  return `#${path}${q.size ? `?${q}` : ''}`;
}

export function navigate(path: string, query: Record<string, string | undefined> = {}): void {
  location.hash = href(path, query);
}
