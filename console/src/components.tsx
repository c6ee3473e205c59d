/** The console's building blocks: data loading, dialogs, notices, tables and status badges. */
import type { ComponentChildren, TargetedEvent } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { ApiError } from './api.ts';

export interface Resource<T> {
  data: T | undefined;
  error: Error | null;
  loading: boolean;
  reload: () => void;
}

/**
 * Loads `load()` now, when `deps` change, and every `pollMs` while `poll(data)` says so (jobs
 * running, volumes being created). A slow answer never overwrites a newer one. A failed poll is
 * retried (more slowly), so a blip of the network does not end live updates; a hidden tab polls
 * five times less often.
 */
export function useResource<T>(load: () => Promise<T>, deps: unknown[], opts: { pollMs?: number; poll?: (d: T) => boolean } = {}): Resource<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<Error | null>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const seq = useRef(0);
  const polling = useRef(false);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    const mine = ++seq.current;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const again = (ms: number) => (timer = setTimeout(() => setTick((t) => t + 1), document.hidden ? ms * 5 : ms));
    setLoading(true);
    load().then(
      (d) => {
        if (mine !== seq.current) return;
        setData(d);
        setError(null);
        setLoading(false);
        polling.current = !!opts.pollMs && (!opts.poll || opts.poll(d));
        if (polling.current) again(opts.pollMs!);
      },
      (e: unknown) => {
        if (mine !== seq.current) return;
        setError(e instanceof Error ? e : new Error(String(e)));
        setLoading(false);
        if (polling.current) again(Math.max(opts.pollMs! * 4, 5000));
      },
    );
    return () => clearTimeout(timer);
  }, [...deps, tick]);
  return { data, error, loading, reload };
}

type Notice = { id: number; text: string; kind: 'ok' | 'error' };
let notices: Notice[] = [];
let noticeSeq = 0;
const noticeListeners = new Set<(n: Notice[]) => void>();

/** A short notice in the page's live region (screen readers announce it). */
export function notify(text: string, kind: Notice['kind'] = 'ok'): void {
  const n = { id: ++noticeSeq, text, kind };
  notices = [...notices, n];
  for (const l of noticeListeners) l(notices);
  setTimeout(() => {
    notices = notices.filter((x) => x.id !== n.id);
    for (const l of noticeListeners) l(notices);
  }, kind === 'error' ? 10_000 : 5_000);
}

export function Notices() {
  const [list, setList] = useState(notices);
  useEffect(() => {
    noticeListeners.add(setList);
    return () => void noticeListeners.delete(setList);
  }, []);
  return (
    <div class="notices" role="status" aria-live="polite">
      {list.map((n) => (
        <p key={n.id} class={`notice notice-${n.kind}`} data-testid="notice">
          {n.text}
        </p>
      ))}
    </div>
  );
}

export function errorText(e: unknown): string {
  if (e instanceof ApiError) return e.code ? `${e.message} (${e.code})` : e.message;
  return e instanceof Error ? e.message : String(e);
}

/** Runs an action of a button: busy while it runs, its error as a notice. */
export function useAction(): [boolean, (f: () => Promise<unknown>, done?: string) => Promise<boolean>] {
  const [busy, setBusy] = useState(false);
  const run = useCallback(async (f: () => Promise<unknown>, done?: string) => {
    setBusy(true);
    try {
      await f();
      if (done) notify(done);
      return true;
    } catch (e) {
      notify(errorText(e), 'error');
      return false;
    } finally {
      setBusy(false);
    }
  }, []);
  return [busy, run];
}

export function ErrorNote({ error }: { error: unknown }) {
  if (!error) return null;
  return (
    <p class="error-note" role="alert">
      {errorText(error)}
    </p>
  );
}

const STATUS_KIND: Record<string, string> = {
  available: 'ok', SUCCESS: 'ok', EXECUTE_SUCCESS: 'ok', ON: 'ok', ACTIVE: 'ok', 'in-use': 'ok', online: 'ok', true: 'ok', enabled: 'ok',
  error: 'bad', FAIL: 'bad', EXECUTE_FAIL: 'bad', error_restoring: 'bad', error_deleting: 'bad', EXECUTE_TIMEOUT: 'bad', ERROR: 'bad', offline: 'bad', false: 'bad',
  OFF: 'off', SKIP: 'off', disabled: 'off', draining: 'off',
};

export function Status({ value }: { value: string | null | undefined }) {
  const v = value ?? '–';
  return <span class={`status status-${STATUS_KIND[v] ?? 'busy'}`}>{v}</span>;
}

/** A modal dialog (the browser's <dialog>: Escape closes it, focus stays inside). */
export function Modal(props: { title: string; open: boolean; onClose: () => void; children: ComponentChildren }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (props.open && !d.open) d.showModal();
    if (!props.open && d.open) d.close();
  }, [props.open]);
  return (
    <dialog ref={ref} onClose={props.onClose} aria-label={props.title}>
      {props.open && (
        <article>
          <header>
            <button type="button" aria-label="Close" {...{ rel: 'prev' }} onClick={props.onClose} />
            <h3>{props.title}</h3>
          </header>
          {props.children}
        </article>
      )}
    </dialog>
  );
}

/** "Delete X?": what happens, Cancel, and the action (busy while it runs, its error as a notice). */
export function ConfirmModal(props: { title: string; open: boolean; onClose: () => void; confirm: string; done: string; action: () => Promise<unknown>; onDone: () => void; children: ComponentChildren }) {
  const [busy, run] = useAction();
  return (
    <Modal title={props.title} open={props.open} onClose={props.onClose}>
      {props.children}
      <footer>
        <button type="button" class="secondary" onClick={props.onClose}>
          Cancel
        </button>
        <button type="button" class="contrast" aria-busy={busy} disabled={busy} onClick={async () => (await run(props.action, props.done)) && props.onDone()}>
          {props.confirm}
        </button>
      </footer>
    </Modal>
  );
}

export interface Column<T> {
  title: string;
  cell: (row: T) => ComponentChildren;
  /** Hidden on a narrow screen. */
  wide?: boolean;
}

export function Table<T>(props: { rows: T[] | undefined; columns: Column<T>[]; rowKey: (r: T) => string; empty: string; label: string }) {
  if (!props.rows) return <p aria-busy="true">Loading…</p>;
  if (!props.rows.length) return <p class="empty">{props.empty}</p>;
  return (
    <div class="overflow-auto">
      <table class="striped" aria-label={props.label}>
        <thead>
          <tr>
            {props.columns.map((c) => (
              <th scope="col" class={c.wide ? 'wide' : undefined}>
                {c.title}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {props.rows.map((r) => (
            <tr key={props.rowKey(r)}>
              {props.columns.map((c) => (
                <td class={c.wide ? 'wide' : undefined}>{c.cell(r)}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function Field(props: { label: string; children: ComponentChildren; hint?: string | undefined }) {
  return (
    <label>
      {props.label}
      {props.children}
      {props.hint && <small>{props.hint}</small>}
    </label>
  );
}

export function PageHeader(props: { title: string; children?: ComponentChildren }) {
  return (
    <div class="page-header">
      <h2>{props.title}</h2>
      <div class="page-actions">{props.children}</div>
    </div>
  );
}

/** `value` of an input event, typed. */
export function val(e: TargetedEvent<HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement, Event>): string {
  return e.currentTarget.value;
}

export function Progress({ done, total }: { done: number; total: number }) {
  const pct = total > 0 ? Math.min(100, Math.round((done / total) * 100)) : 0;
  return (
    <span class="progress">
      <progress value={pct} max={100} aria-label={`${pct}%`} />
      <small>{pct}%</small>
    </span>
  );
}
