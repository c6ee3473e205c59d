/**
 * The web console in a real browser: Debian's chromium driven by Playwright (playwright-core)
 * against a real `haven serve`. A user logs in, creates a volume, backs it up, watches the job
 * finish and restores it; the volume's bytes after the restore are the bytes that were backed up.
 * Also: the keyboard alone reaches every step of the login and a dialog, a narrow screen has no
 * sideways scroll, the project switcher shows only the chosen project's volumes, a wrong password
 * is refused with the API's message, and no page logs a script error.
 *
 * Screenshots are kept as artifacts of the run in test-artifacts/console/ (HAVEN_TEST_ARTIFACTS
 * moves it).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { buildConsole } from '../../console/build.ts';
import { SERVE_PASSWORD, ServeProcess, verifyRepo, type Who } from '../faults/serve-process.ts';
import { skipOutsideCi } from '../helpers/skip.ts';
import { REPO_ROOT, TempDirs } from '../helpers/volumes.ts';

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const ARTIFACTS = path.resolve(process.env.HAVEN_TEST_ARTIFACTS ?? path.join(REPO_ROOT, 'test-artifacts'), 'console');
const MiB = 1024 * 1024;

const temp = new TempDirs('haven-console-');

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await fs.readFile(file)).digest('hex');
}

describe('the web console', { skip: skipOutsideCi(CHROMIUM ? false : "Debian's chromium is not installed (apt-get install chromium)") }, () => {
  let svc: ServeProcess;
  let browser: Browser;
  let admin: Who;
  let data: string;
  const pageErrors: string[] = [];

  before(async () => {
    await buildConsole({ quiet: true });
    await fs.mkdir(ARTIFACTS, { recursive: true });
    data = path.join(temp.make('data'), 'data');
    svc = await ServeProcess.start({ HAVEN_DATA_DIR: data });
    admin = await svc.login();
    browser = await chromium.launch({ executablePath: CHROMIUM!, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  });
  after(async () => {
    await browser?.close();
    await svc?.stop();
    temp.cleanup();
  });

  async function newPage(width = 1280, height = 900): Promise<Page> {
    const page = await browser.newPage({ viewport: { width, height } });
    page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of (400|401|403|404|409)/.test(m.text())) pageErrors.push(`${page.url()}: ${m.text()}`);
    });
    return page;
  }

  async function logIn(page: Page, project = 'admin'): Promise<void> {
    await page.goto(`${svc.url}/console/`);
    await page.getByLabel('User').fill('admin');
    await page.getByLabel('Password').fill(SERVE_PASSWORD);
    await page.getByLabel('Project').fill(project);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Volumes' }).waitFor();
  }

  /** Waits for the job the page highlights (the one just started) to end; returns its status. */
  async function jobOutcome(page: Page): Promise<{ id: string; status: string }> {
    await page.waitForURL(/#\/jobs\?highlight=/);
    const id = new URL(page.url()).hash.split('highlight=')[1]!;
    const cell = page.locator(`[data-job-status="${id}"]`);
    await cell.getByText(/^(SUCCESS|FAIL)$/).waitFor({ timeout: 120_000 });
    return { id, status: (await cell.innerText()).trim() };
  }

  it('is served at /console/ with its assets, a strict content security policy and no CDN', async () => {
    const r = await fetch(`${svc.url}/console/`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-security-policy') ?? '', /default-src 'self'/);
    assert.equal(r.headers.get('x-frame-options'), 'DENY');
    const html = await r.text();
    assert.doesNotMatch(html, /https?:\/\//, 'no asset from another origin');
    const js = await fetch(`${svc.url}/console/app.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get('content-type') ?? '', /javascript/);
    const redirect = await fetch(`${svc.url}/console`, { redirect: 'manual' });
    assert.equal(redirect.status, 301);
    assert.equal(redirect.headers.get('location'), '/console/');
    const missing = await fetch(`${svc.url}/console/../data/admin-password`);
    assert.notEqual(missing.status, 200);
    const outside = await fetch(`${svc.url}/console/%2e%2e/%2e%2e/package.json`);
    assert.equal(outside.status, 404, 'no file outside the console folder');
  });

  it('refuses a wrong password with the API\'s message and stays on the login page', async () => {
    const page = await newPage();
    await page.goto(`${svc.url}/console/`);
    await page.getByLabel('User').fill('admin');
    await page.getByLabel('Password').fill('not-the-password');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('alert').waitFor();
    assert.match(await page.getByRole('alert').innerText(), /authenticat|password|credential/i);
    assert.equal(await page.evaluate<string | null>("sessionStorage.getItem('haven.session')"), null, 'no session kept');
    await page.close();
  });

  it('logs in, creates a volume, backs it up, watches the job finish and restores it bit-identical', { timeout: 300_000 }, async () => {
    const page = await newPage();
    await logIn(page);

    // Create a 1 GB volume.
    await page.getByRole('button', { name: 'Create volume' }).click();
    const create = page.getByRole('dialog', { name: 'Create a volume' });
    await create.getByLabel('Name').fill('console1');
    await create.getByLabel('Size (GB)').fill('1');
    await create.getByRole('button', { name: 'Create volume' }).click();
    const row = page.getByRole('row').filter({ hasText: 'console1' });
    await row.getByText('available').waitFor({ timeout: 60_000 });
    const vols = await svc.req('GET', `/v3/${admin.projectId}/volumes/detail`, { token: admin.token });
    const vol = (vols.body.volumes as { id: string; name: string; size: number }[]).find((v) => v.name === 'console1');
    assert.ok(vol, vols.text);
    assert.equal(vol.size, 1);

    // Real data in the volume's file, at a few places.
    const file = path.join(data, 'volumes', `${vol.id}.img`);
    const fh = await fs.open(file, 'r+');
    for (const at of [0, 100 * MiB, 700 * MiB + 4096]) await fh.write(randomBytes(3 * MiB), 0, 3 * MiB, at);
    await fh.close();
    const before = await sha256(file);

    // Back it up from its row; the console moves to the jobs page and shows the job end.
    await row.getByRole('button', { name: 'Back up now' }).click();
    const backupDialog = page.getByRole('dialog', { name: 'Back up console1' });
    await backupDialog.getByRole('button', { name: 'Start backup' }).click();
    const backupJob = await jobOutcome(page);
    assert.equal(backupJob.status, 'SUCCESS');
    await page.screenshot({ path: path.join(ARTIFACTS, 'jobs.png'), fullPage: true });
    const backups = await svc.req('GET', `/v3/${admin.projectId}/backups/detail?volume_id=${vol.id}`, { token: admin.token });
    assert.equal((backups.body.backups as unknown[]).length, 1, backups.text);

    // The disk changes after the backup...
    const fh2 = await fs.open(file, 'r+');
    await fh2.write(randomBytes(MiB), 0, MiB, 100 * MiB);
    await fh2.write(randomBytes(MiB), 0, MiB, 900 * MiB);
    await fh2.close();
    assert.notEqual(await sha256(file), before);

    // ... and the restore from the volume's row brings back the backed-up bytes.
    await page.getByRole('link', { name: 'Volumes' }).click();
    await page.getByRole('row').filter({ hasText: 'console1' }).getByRole('button', { name: 'Restore' }).click();
    const restore = page.getByRole('dialog', { name: 'Restore console1' });
    await restore.getByLabel('Backup').locator('option').first().waitFor({ state: 'attached' });
    await restore.getByRole('button', { name: /^Restore/ }).click();
    const restoreJob = await jobOutcome(page);
    assert.equal(restoreJob.status, 'SUCCESS');
    assert.equal(await sha256(file), before, 'the restored volume holds the backed-up bytes');

    // The backups page lists the backup; the repository page shows what it stores, its growth
    // chart and the verify that `haven verify` just ran on the repository.
    await page.getByRole('link', { name: 'Backups' }).click();
    await page.getByRole('row').filter({ hasText: 'console1' }).getByText('available').waitFor();
    const verified = await verifyRepo(path.join(data, 'repository'));
    assert.equal(verified.code, 0, verified.raw);
    await page.getByRole('link', { name: 'Repository' }).click();
    const stats = page.getByTestId('repository-stats');
    await stats.waitFor();
    assert.match(await stats.innerText(), /Backups\s*1\b/);
    assert.match(await stats.innerText(), /Deduplication\s*\d+\.\d\d×/);
    await page.locator('.chart canvas').waitFor();
    const lastVerify = page.getByRole('article').filter({ hasText: 'Last verify' });
    assert.match(await lastVerify.innerText(), /whole repository: [1-9]\d* chunks checked, 0 damaged, 0 missing/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'repository.png'), fullPage: true });
    await page.getByRole('link', { name: 'Agents & quotas' }).click();
    await page.getByRole('table', { name: 'Agents' }).getByText('this process').waitFor();
    await page.getByRole('link', { name: 'Policies' }).click();
    await page.getByRole('link', { name: 'Servers (CSBS)' }).click();
    await page.getByRole('heading', { name: 'Server backups' }).waitFor();
    await page.close();
  });

  it('previews a policy schedule live, as the scheduler computes it', async () => {
    const page = await newPage();
    await logIn(page);
    await page.getByRole('link', { name: 'Policies' }).click();
    await page.getByRole('button', { name: 'Create policy' }).click();
    const dialog = page.getByRole('dialog', { name: 'Create a policy' });
    await dialog.getByLabel('Start times (UTC, whole hours)').fill('22:00');
    await dialog.getByLabel('Time zone').fill('UTC+02:00');
    const preview = dialog.getByTestId('schedule-preview');
    // The preview follows the form after a short pause: until then it shows the default start time's runs.
    await preview.locator('li', { hasText: /UTC\+02:00 \(.*22:00 UTC\)/ }).first().waitFor();
    // 22:00 UTC is 00:00 the next day at UTC+02:00.
    const first = await preview.locator('li').first().innerText();
    assert.match(first, /00:00 UTC\+02:00 \(\d{4}-\d\d-\d\d 22:00 UTC\)/);
    await dialog.getByLabel('Start times (UTC, whole hours)').fill('25:00');
    await dialog.locator('.error-note').waitFor();
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    await page.close();
  });

  it('works from the keyboard alone and on a narrow screen', async () => {
    const page = await newPage(375, 740);
    await page.goto(`${svc.url}/console/`);
    // The user field has the focus; Tab moves through the form, Enter submits.
    await page.keyboard.type('admin');
    await page.keyboard.press('Tab');
    await page.keyboard.type(SERVE_PASSWORD);
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    await page.keyboard.type('admin');
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Volumes' }).waitFor();
    const sideways = await page.evaluate<number>('document.documentElement.scrollWidth - window.innerWidth');
    assert.ok(sideways <= 0, `the page scrolls sideways by ${sideways}px on a 375px screen`);
    // A dialog opens from the keyboard and Escape closes it.
    await page.getByRole('button', { name: 'Create volume' }).focus();
    await page.keyboard.press('Enter');
    const dialog = page.getByRole('dialog', { name: 'Create a volume' });
    await dialog.waitFor();
    assert.equal(await page.evaluate<boolean>("document.activeElement?.closest('dialog') !== null"), true, 'the focus moved into the dialog');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    await page.screenshot({ path: path.join(ARTIFACTS, 'narrow.png'), fullPage: true });
    await page.close();
  });

  it('switches projects: each shows only its own volumes', async () => {
    // A second project on which the admin user is a member.
    const p2 = await svc.req('POST', '/v3/projects', { token: admin.token, body: { project: { name: 'team2' } } });
    assert.equal(p2.status, 201, p2.text);
    const team2 = (p2.body.project as { id: string }).id;
    const users = await svc.req('GET', '/v3/users?name=admin', { token: admin.token });
    const roles = await svc.req('GET', '/v3/roles', { token: admin.token });
    const member = (roles.body.roles as { id: string; name: string }[]).find((r) => r.name === 'member')!;
    const userId = (users.body.users as { id: string; name: string }[]).find((u) => u.name === 'admin')!.id;
    const grant = await svc.req('PUT', `/v3/projects/${team2}/users/${userId}/roles/${member.id}`, { token: admin.token });
    assert.equal(grant.status, 204, grant.text);

    const v = await svc.req('POST', `/v3/${admin.projectId}/volumes`, { token: admin.token, body: { volume: { name: 'switch1', size: 1 } } });
    assert.equal(v.status, 202, v.text);
    const page = await newPage();
    await logIn(page);
    await page.getByRole('row').filter({ hasText: 'switch1' }).waitFor();
    await page.getByLabel('Project').selectOption({ label: 'team2' });
    await page.getByText('No volumes yet').waitFor();
    assert.equal(await page.getByRole('row').filter({ hasText: 'switch1' }).count(), 0, "the admin project's volume is not shown in team2");
    assert.equal(await page.getByRole('link', { name: 'Repository' }).count(), 0, 'a member of team2 is not the cloud admin');
    await page.getByLabel('Project').selectOption({ label: 'admin' });
    await page.getByRole('row').filter({ hasText: 'switch1' }).waitFor();
    await page.close();
  });

  it('edits a server policy without touching what the form does not show (retention rules, the pattern\'s time zone)', async () => {
    const P = admin.projectId;
    const vol = await svc.req('POST', `/v3/${P}/volumes`, { token: admin.token, body: { volume: { name: 'edit-sys', size: 1 } } });
    const volId = (vol.body.volume as { id: string }).id;
    for (let i = 0; i < 200; i++) {
      const v = await svc.req('GET', `/v3/${P}/volumes/${volId}`, { token: admin.token });
      if ((v.body.volume as { status: string }).status === 'available') break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const srv = await svc.req('POST', `/v2.1/${P}/servers`, { token: admin.token, body: { server: { name: 'edit1', block_device_mapping_v2: [{ source_type: 'volume', uuid: volId, boot_index: 0 }] } } });
    assert.equal(srv.status, 202, srv.text);
    const serverId = (srv.body.server as { id: string }).id;
    const pattern = 'BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART;TZID=Europe/Berlin:20260101T030000\r\nRRULE:FREQ=WEEKLY;BYDAY=MO;BYHOUR=3;BYMINUTE=0\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n';
    const created = await svc.req('POST', `/v1/${P}/policies`, {
      token: admin.token,
      body: { policy: { name: 'keep30', provider_id: 'fc4d5750-22e7-4798-8a46-f48f62c4c1da', parameters: { common: {} }, resources: [{ id: serverId, type: 'OS::Nova::Server', name: 'edit1' }], scheduled_operations: [{ enabled: true, operation_type: 'backup', operation_definition: { retention_duration_days: 30, permanent: true }, trigger: { properties: { pattern } } }] } },
    });
    assert.equal(created.status, 200, created.text);
    const policyId = (created.body.policy as { id: string }).id;
    const before = await svc.req('GET', `/v1/${P}/policies/${policyId}`, { token: admin.token });

    const page = await newPage();
    await logIn(page);
    await page.getByRole('navigation').getByRole('link', { name: 'Servers (CSBS)' }).click();
    await page.getByRole('row').filter({ hasText: 'keep30' }).getByRole('button', { name: 'Edit' }).click();
    const dialog = page.getByRole('dialog', { name: 'Edit keep30' });
    assert.match(await dialog.getByLabel(/^Schedule/).inputValue(), /DTSTART;TZID=Europe\/Berlin/, 'the form shows the whole pattern');
    await dialog.getByLabel('Name', { exact: true }).fill('keep30b');
    await dialog.getByRole('button', { name: 'Save policy' }).click();
    await page.getByRole('row').filter({ hasText: 'keep30b' }).waitFor();
    await page.close();

    const after = await svc.req('GET', `/v1/${P}/policies/${policyId}`, { token: admin.token });
    const op = (b: Record<string, unknown>) => (b.policy as { scheduled_operations: { operation_definition: Record<string, unknown>; trigger: unknown }[] }).scheduled_operations[0]!;
    assert.equal((after.body.policy as { name: string }).name, 'keep30b');
    assert.deepEqual(op(after.body).operation_definition, op(before.body).operation_definition, 'the retention rules are as they were');
    assert.deepEqual(op(after.body).trigger, op(before.body).trigger, 'the pattern is as it was, its TZID included');
  });

  it('logging out ends every token of the session, those of earlier projects too', async () => {
    const page = await newPage();
    await logIn(page);
    const first = await page.evaluate<{ token: string; rootToken: string }>("JSON.parse(sessionStorage.getItem('haven.session'))");
    await page.getByLabel('Project').selectOption({ label: 'team2' });
    await page.getByText('No volumes yet').waitFor();
    const second = await page.evaluate<{ token: string; rootToken: string }>("JSON.parse(sessionStorage.getItem('haven.session'))");
    assert.notEqual(second.token, first.token);
    assert.equal(second.rootToken, first.token, 'the login token is kept as the root of the session');
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByRole('button', { name: 'Log in' }).waitFor();
    for (const t of [first.token, second.token]) {
      const r = await svc.req('GET', '/haven/v1/jobs', { token: t });
      assert.equal(r.status, 401, `a token of the ended session still works: ${r.text}`);
    }
    await page.close();
  });

  it('logged no script error on any page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
