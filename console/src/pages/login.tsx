/** Keystone login: user, password, domain and (optionally) project. */
import { useState } from 'preact/hooks';
import { login } from '../api.ts';
import { ErrorNote, Field, val } from '../components.tsx';

export function LoginPage() {
  const [user, setUser] = useState('');
  const [password, setPassword] = useState('');
  const [domain, setDomain] = useState('Default');
  const [project, setProject] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  return (
    <main class="container login">
      <article>
        <header>
          <h1>Haven</h1>
          <p>Log in with your Keystone credentials.</p>
        </header>
        <form
          onSubmit={async (e) => {
            e.preventDefault();
            setBusy(true);
            setError(null);
            try {
              await login(user.trim(), password, domain.trim() || 'Default', project.trim());
            } catch (err) {
              setError(err);
            } finally {
              setBusy(false);
            }
          }}
        >
          <Field label="User">
            <input name="user" autocomplete="username" required value={user} onInput={(e) => setUser(val(e))} autofocus />
          </Field>
          <Field label="Password">
            <input name="password" type="password" autocomplete="current-password" required value={password} onInput={(e) => setPassword(val(e))} />
          </Field>
          <div class="grid">
            <Field label="Domain">
              <input name="domain" value={domain} onInput={(e) => setDomain(val(e))} />
            </Field>
            <Field label="Project" hint="Empty: your first project">
              <input name="project" value={project} onInput={(e) => setProject(val(e))} />
            </Field>
          </div>
          <ErrorNote error={error} />
          <button type="submit" aria-busy={busy} disabled={busy}>
            Log in
          </button>
        </form>
      </article>
    </main>
  );
}
