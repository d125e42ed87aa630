// Issue #11 (first-time operator), "honest states": a reload while the
// server is down shows a page that says so and retries by itself, and
// the page the operator asked for comes back without a click once the
// server answers. The test runs its own server, which it stops and
// starts; the project's server stays up for the other tests.
import { test, expect } from '@playwright/test';
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PASSWORDS } from './accounts';

const bin = process.env.SIGHTLINE_BIN ?? path.resolve(__dirname, '../../target/release/sightline');
const siteRoot = path.resolve(__dirname, '../../target/site');

/** A port pair per project, away from the projects' own servers. */
const PORTS: Record<string, [number, number]> = { desktop: [3920, 18920], phone: [3921, 18921] };

test('a reload while the server is down shows a page that retries and brings the page back', async ({ page }, info) => {
  const [http, mqtt] = PORTS[info.project.name];
  const base = `http://127.0.0.1:${http}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sightline-offline-'));
  const db = `sqlite://${path.join(dir, 'offline.db')}?mode=rwc`;
  execFileSync(bin, ['user', 'add', '--role', 'viewer', 'viewer', '--database-url', db], { input: `${PASSWORDS.viewer}\n` });

  let server: ChildProcess | null = null;
  const start = async () => {
    server = spawn(bin, ['serve', '--http-addr', `127.0.0.1:${http}`, '--mqtt-addr', `127.0.0.1:${mqtt}`, '--database-url', db, '--site-root', siteRoot], { stdio: 'ignore' });
    await expect
      .poll(async () => (await page.request.get(`${base}/api/health`).catch(() => null))?.status() ?? 0, { timeout: 15_000 })
      .toBe(200);
  };
  const stop = async () => {
    const s = server;
    if (!s || s.exitCode !== null) return;
    const exited = new Promise((done) => s.once('exit', done));
    s.kill('SIGTERM');
    await exited;
  };

  try {
    await start();
    const signIn = await page.request.post(`${base}/login`, {
      form: { name: 'viewer', password: PASSWORDS.viewer, next: '/' },
      headers: { Origin: base },
      maxRedirects: 0,
    });
    expect(signIn.status()).toBe(303);
    await page.goto(`${base}/?q=sensor`);
    await expect(page.getByTestId('link-state')).toHaveText('live');
    // The service worker takes over this page once it is active.
    await page.waitForFunction(() => navigator.serviceWorker?.controller !== null, null, { timeout: 15_000 });

    await stop();
    await page.reload();
    const offline = page.getByTestId('offline');
    await expect(offline).toBeVisible();
    await expect(offline.getByRole('heading')).toHaveText('The server cannot be reached');
    await expect(page.getByTestId('offline-status')).toContainText('Still unreachable');
    // It is the page that was asked for, so reloading brings that back.
    expect(page.url()).toBe(`${base}/?q=sensor`);

    // With the server back, the page returns by itself, filter included.
    await start();
    await expect(offline).toHaveCount(0, { timeout: 20_000 });
    await expect(page.getByTestId('link-state')).toHaveText('live');
    expect(page.url()).toBe(`${base}/?q=sensor`);
  } finally {
    await stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
