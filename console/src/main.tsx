/**
 * Haven's web console: a Preact page served by `haven serve` at /console/ (same origin as the API).
 * It holds no state of its own beyond the Keystone token: every page reads and acts through the
 * public API, so what the console shows is what curl and the openstack CLI see.
 */
import '@picocss/pico/css/pico.min.css';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { currentSession, listProjects, logout, onSession, restoreSession, switchProject, type Project, type Session } from './api.ts';
import { errorText, notify, Notices } from './components.tsx';
import { href, useRoute } from './router.ts';
import { LoginPage } from './pages/login.tsx';
import { VolumesPage } from './pages/volumes.tsx';
import { BackupsPage } from './pages/backups.tsx';
import { PoliciesPage } from './pages/policies.tsx';
import { CsbsPage } from './pages/csbs.tsx';
import { JobsPage } from './pages/jobs.tsx';
import { RepositoryPage } from './pages/repository.tsx';
import { AdminPage } from './pages/admin.tsx';

const PAGES: { path: string; title: string; admin?: boolean; page: () => preact.JSX.Element }[] = [
  { path: '/volumes', title: 'Volumes', page: () => <VolumesPage /> },
  { path: '/backups', title: 'Backups', page: () => <BackupsPage /> },
  { path: '/policies', title: 'Policies', page: () => <PoliciesPage /> },
  { path: '/csbs', title: 'Servers (CSBS)', page: () => <CsbsPage /> },
  { path: '/jobs', title: 'Jobs', page: () => <JobsPage /> },
  { path: '/repository', title: 'Repository', admin: true, page: () => <RepositoryPage /> },
  { path: '/admin', title: 'Agents & quotas', admin: true, page: () => <AdminPage /> },
];

function ProjectSwitcher({ session }: { session: Session }) {
  const [projects, setProjects] = useState<Project[]>([session.project]);
  useEffect(() => {
    listProjects().then(setProjects, () => undefined);
  }, [session.token]);
  if (projects.length < 2) return <span class="project" title="project">{session.project.name}</span>;
  return (
    <select
      aria-label="Project"
      value={session.project.id}
      onChange={async (e) => {
        const id = e.currentTarget.value;
        try {
          const s = await switchProject(id);
          notify(`Now in project ${s.project.name}`);
        } catch (err) {
          notify(errorText(err), 'error');
        }
      }}
    >
      {projects.map((p) => (
        <option value={p.id}>{p.name}</option>
      ))}
    </select>
  );
}

function Shell({ session }: { session: Session }) {
  const route = useRoute();
  const pages = PAGES.filter((p) => !p.admin || session.admin);
  const current = pages.find((p) => p.path === route.path) ?? pages[0]!;
  useEffect(() => {
    document.title = `${current.title} · Haven`;
  }, [current.title]);
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => (e.preventDefault(), document.getElementById('main')?.focus())}>
        Skip to content
      </a>
      <header class="container-fluid topbar">
        <nav aria-label="Main">
          <ul>
            <li>
              <strong class="brand">Haven</strong>
            </li>
          </ul>
          <ul class="nav-pages">
            {pages.map((p) => (
              <li>
                <a href={href(p.path)} aria-current={p.path === current.path ? 'page' : undefined}>
                  {p.title}
                </a>
              </li>
            ))}
          </ul>
          <ul>
            <li>
              <ProjectSwitcher session={session} />
            </li>
            <li>
              <button type="button" class="secondary outline" onClick={() => void logout()} title={`${session.user} (${session.domain})`}>
                Log out
              </button>
            </li>
          </ul>
        </nav>
      </header>
      <main class="container-fluid" id="main" tabIndex={-1} key={session.project.id}>
        {current.page()}
      </main>
    </>
  );
}

function App() {
  const [session, setSession] = useState<Session | null>(currentSession() ?? restoreSession());
  useEffect(() => onSession(setSession), []);
  return (
    <>
      {session ? <Shell session={session} /> : <LoginPage />}
      <Notices />
    </>
  );
}

const root = document.getElementById('app')!;
root.textContent = ''; // the "Loading…" line of index.html
render(<App />, root);
