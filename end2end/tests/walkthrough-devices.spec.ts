// Managing a device from the dashboard, as README's walk-through does it:
// add a device and connect it with the lines the page gives, label it,
// disable and enable it, give it a new secret, and delete it, keeping its
// readings or not. Every step is checked against the real broker with
// mosquitto_pub, and the honest states (never connected, unknown or
// invalid ids) on the way.
import { Page } from '@playwright/test';
import { test, expect } from './fixtures';
import { spawnSync } from 'child_process';

test.use({ role: 'operator' });

/** Runs a mosquitto_pub line as the page shows it; returns its exit code. */
function run(line: string): number {
  const r = spawnSync('bash', ['-c', line], { timeout: 10_000 });
  return r.status ?? -1;
}

/** Publishes with id and secret; returns mosquitto_pub's exit code. */
function publish(port: number, id: string, secret: string, message: string): number {
  return spawnSync('mosquitto_pub', ['-p', String(port), '-q', '1', '-u', id, '-P', secret, '-t', `sensor/${id}`, '-m', message], {
    timeout: 10_000,
  }).status ?? -1;
}

async function latest(page: Page, id: string): Promise<number | undefined> {
  const r = await page.request.get(`/api/devices/${id}`);
  if (!r.ok()) return undefined;
  return (await r.json()).summary.latest[0]?.value;
}

async function addOnFleet(page: Page, id: string): Promise<string> {
  await page.goto('/');
  await expect(page.getByTestId('link-state')).toHaveText('live');
  await page.getByTestId('new-device-id').fill(id);
  await page.getByTestId('add-device').click();
  await expect(page.getByTestId('new-device')).toBeVisible();
  return (await page.getByTestId('new-secret').textContent()) ?? '';
}

test('a new device is onboarded with lines that work as shown', async ({ page, context }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  const id = `Onboard-${info.project.name}`;
  const secret = await addOnFleet(page, id);
  const panel = page.getByTestId('new-device');
  await expect(panel).toBeInViewport();
  await expect(panel.locator('button.copy')).toHaveCount(3);

  const plain = (await page.getByTestId('publish-plain').textContent()) ?? '';
  const thingsboard = (await page.getByTestId('publish-thingsboard').textContent()) ?? '';
  expect(plain).toContain(`-p ${mqtt}`);
  expect(plain).toContain(`-u ${id} -P ${secret}`);
  expect(thingsboard).toContain(`-u ${secret} -t v1/devices/me/telemetry`);

  // Never connected yet: the device page says so, not "last seen just now".
  await page.goto(`/devices/${id}`);
  await expect(page.getByTestId('presence')).toHaveText('never connected — waiting for its first message');
  await expect(page.getByTestId('last-seen')).toHaveText('never');

  expect(run(plain)).toBe(0);
  await expect.poll(() => latest(page, id)).toBe(22);
  expect(run(thingsboard.replace('"temp":22', '"temp":23'))).toBe(0);
  await expect.poll(() => latest(page, id)).toBe(23);

  if (info.project.name === 'desktop') {
    await context.grantPermissions(['clipboard-read', 'clipboard-write']);
    await page.goto('/');
    await expect(page.locator('html[data-hydrated]')).toHaveCount(1);
    await page.getByTestId('new-device-id').fill(`${id}-copy`);
    await page.getByTestId('add-device').click();
    const copied = (await page.getByTestId('new-secret').textContent()) ?? '';
    await page.getByRole('button', { name: 'Copy secret' }).click();
    expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(copied);
  }
});

test('label, disable, enable and rotate from the device page', async ({ page }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  const id = `Managed-device-with-a-long-id-${info.project.name}`;
  const secret = await addOnFleet(page, id);
  expect(publish(mqtt, id, secret, '{"temp":1}')).toBe(0);
  await expect.poll(() => latest(page, id)).toBe(1);

  await page.goto(`/devices/${id}`);
  await expect(page.getByTestId('link-state')).toHaveText('live');
  await page.getByTestId('label-input').fill('Boiler room, north wall');
  await page.getByTestId('label-save').click();
  await expect(page.getByTestId('device-label')).toHaveText('Boiler room, north wall');
  // A label that is not text is refused next to its field.
  await page.getByTestId('label-input').fill('bad\u0007label');
  await page.getByTestId('label-save').click();
  await expect(page.getByTestId('label-error')).not.toBeEmpty();

  await page.getByTestId('toggle-enabled').click();
  await expect(page.getByTestId('enabled-state')).toContainText('Disabled');
  expect(publish(mqtt, id, secret, '{"temp":2}')).not.toBe(0);
  await page.getByTestId('toggle-enabled').click();
  await expect(page.getByTestId('enabled-state')).toContainText('Enabled');
  expect(publish(mqtt, id, secret, '{"temp":3}')).toBe(0);
  await expect.poll(() => latest(page, id)).toBe(3);

  await page.getByTestId('rotate').click();
  await expect(page.getByRole('alert').filter({ hasText: 'stops working' })).toBeVisible();
  await page.getByTestId('rotate-confirm').click();
  const fresh = (await page.getByTestId('new-secret').textContent()) ?? '';
  expect(fresh).not.toBe(secret);
  expect(publish(mqtt, id, secret, '{"temp":4}')).not.toBe(0);
  expect(publish(mqtt, id, fresh, '{"temp":5}')).toBe(0);
  await expect.poll(() => latest(page, id)).toBe(5);

  // The fleet finds the device by its label and still shows its whole id.
  await page.goto('/');
  await expect(page.locator('html[data-hydrated]')).toHaveCount(1);
  await page.getByTestId('search').fill('boiler ROOM');
  const card = page.locator(`[data-device="${id}"]`);
  await expect(card).toBeVisible();
  await expect(page.locator('.card')).toHaveCount(1);
  // Whole: not cut short, and inside the card's visible box.
  const cut = await card.locator('.device-id').evaluate((e) => {
    const link = e.closest('.card-link') as HTMLElement;
    const [r, box] = [e.getBoundingClientRect(), link.getBoundingClientRect()];
    return e.scrollWidth > e.clientWidth || r.bottom > box.bottom || r.right > box.right;
  });
  expect(cut).toBe(false);
});

test('delete keeping the readings, bring the device back, then delete everything', async ({ page }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  const id = `Doomed-${info.project.name}`;
  const secret = await addOnFleet(page, id);
  expect(publish(mqtt, id, secret, '{"temp":7}')).toBe(0);
  await expect.poll(() => latest(page, id)).toBe(7);

  await page.goto(`/devices/${id}`);
  await expect(page.locator('html[data-hydrated]')).toHaveCount(1);
  await page.getByTestId('delete-open').click();
  await expect(page.getByTestId('delete-device')).toBeDisabled();
  await page.getByTestId('delete-confirm').fill(id.toLowerCase());
  await expect(page.getByTestId('delete-device')).toBeDisabled();
  await page.getByTestId('delete-confirm').fill(id);
  await page.getByTestId('delete-device').click();
  await expect(page).toHaveURL(/\/$/);
  await expect(page.locator(`[data-device="${id}"]`)).toHaveCount(0);
  expect((await page.request.get(`/api/devices/${id}`)).status()).toBe(404);
  expect(publish(mqtt, id, secret, '{"temp":8}')).not.toBe(0);
  // Its readings were kept: they export, and come back with the device.
  const csv = await (await page.request.get(`/api/devices/${id}/export?format=csv&from=0`)).text();
  expect(csv).toContain(',7');
  const again = await addOnFleet(page, id);
  await expect.poll(() => latest(page, id)).toBe(7);
  expect(publish(mqtt, id, again, '{"temp":9}')).toBe(0);
  await expect.poll(() => latest(page, id)).toBe(9);

  await page.goto(`/devices/${id}`);
  await expect(page.locator('html[data-hydrated]')).toHaveCount(1);
  await page.getByTestId('delete-open').click();
  await page.getByTestId('delete-all').check();
  await page.getByTestId('delete-confirm').fill(id);
  await page.getByTestId('delete-device').click();
  await expect(page).toHaveURL(/\/$/);
  await addOnFleet(page, id);
  expect(await latest(page, id)).toBeUndefined();
});

test('unknown and invalid device ids answer 404 and 400 with a page that says so', async ({ page }) => {
  const unknown = await page.goto('/devices/No-such-device');
  expect(unknown?.status()).toBe(404);
  await expect(page.getByTestId('unknown-device')).toContainText('There is no device No-such-device');
  const invalid = await page.goto('/devices/bad%20id');
  expect(invalid?.status()).toBe(400);
  await expect(page.getByTestId('invalid-device')).toContainText('is not a device id');
});

test('the small things: custom range errors, hints, badges and wording', async ({ page }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  const id = `Polish-${info.project.name}`;
  const secret = await addOnFleet(page, id);
  expect(publish(mqtt, id, secret, '{"temp":1}')).toBe(0);
  await expect.poll(() => latest(page, id)).toBe(1);
  await expect(page.getByTestId('counters-note')).toContainText('since the server');

  await page.goto(`/devices/${id}`);
  await expect(page.getByTestId('link-state')).toHaveText('live');
  // The dot on the live ranges is explained.
  await expect(page.locator('.range-legend')).toContainText('live');
  await expect(page.getByTestId('range-5m')).toHaveAttribute('title', /live/);

  // "From" after "To" says so.
  await page.getByTestId('range-custom').click();
  await page.locator('[data-testid="custom-form"] input').nth(0).fill('2026-01-02T10:00');
  await page.locator('[data-testid="custom-form"] input').nth(1).fill('2026-01-01T10:00');
  await page.getByTestId('custom-apply').click();
  await expect(page.getByTestId('custom-error')).toHaveText('“From” must be before “To”.');

  // A zoomed or custom range does not claim to be live.
  const now = Date.now();
  await page.goto(`/devices/${id}?from=${now - 3_600_000}&to=${now - 1_800_000}`);
  await expect(page.getByTestId('link-state')).toHaveText('connected · fixed range');

  // The params hint fits the command.
  await page.getByTestId('command-name').fill('ping');
  await expect(page.getByTestId('command-params')).toHaveAttribute('placeholder', 'no params');
  await page.getByTestId('command-name').fill('set_interval');
  await expect(page.getByTestId('command-params')).toHaveAttribute('placeholder', '{"ms": 250}');

  // A command to an offline device names the checkbox that would have
  // waited for it.
  const r = await page.request.post(`/api/devices/${id}/commands`, {
    data: { name: 'ping' },
    headers: { Origin: info.project.use.baseURL as string },
  });
  expect((await r.json()).error).toContain('Wait if the device is offline');
});

test('while the server is out of reach, status shows as unknown, not online', async ({ page }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  const id = `Unknown-state-${info.project.name}`;
  // A device that stays connected while the test runs.
  const device = require('child_process').spawn('mosquitto_pub', ['-p', String(mqtt), '-q', '1', '-t', `sensor/${id}`, '-l'], {
    stdio: ['pipe', 'ignore', 'ignore'],
  });
  try {
    device.stdin.write('{"temp":1}\n');
    await expect.poll(async () => (await page.request.get(`/api/devices/${id}`)).status()).toBe(200);
    // The page's live socket goes through here, so the test can cut it.
    let reachable = true;
    const sockets: { close: () => Promise<void> }[] = [];
    await page.routeWebSocket(/\/ws$/, (ws) => {
      if (!reachable) return void ws.close();
      ws.connectToServer();
      sockets.push(ws);
    });
    for (const path of ['/', `/devices/${id}`]) {
      await page.goto(path);
      // Typed before hydration, the search would be lost.
      await expect(page.getByTestId('link-state')).toHaveText('live');
      if (path === '/') await page.getByTestId('search').fill(id);
      const presence = page.getByTestId('presence').first();
      if (path === '/') await expect(presence).toHaveClass(/on/);
      else await expect(presence).toHaveText('online');

      reachable = false;
      await Promise.all(sockets.splice(0).map((s) => s.close()));
      await expect(page.getByTestId('link-state')).toHaveText('reconnecting…');
      if (path === '/') {
        await expect(presence).toHaveClass(/unknown/);
        await expect(presence).toHaveAttribute('aria-label', /status unknown/);
      } else {
        await expect(presence).toContainText('status unknown');
      }
      reachable = true;
      await expect(page.getByTestId('link-state')).toHaveText('live', { timeout: 15_000 });
    }
  } finally {
    device.kill();
  }
});

test.describe('as an admin', () => {
  test.use({ role: 'admin' });
  test('the audit log reads as words, to the second, filters, and fits a phone', async ({ page }, info) => {
    const id = `Audited-${info.project.name}`;
    const origin = info.project.use.baseURL as string;
    expect((await page.request.post('/api/devices', { data: { id }, headers: { Origin: origin } })).status()).toBe(201);
    await page.goto('/admin');
    await expect(page.locator('html[data-hydrated]')).toHaveCount(1);
    const audit = page.getByTestId('audit');
    const added = audit.locator('tr[data-action="device_add"]', { hasText: id });
    await expect(added.locator('td').nth(2)).toHaveText('added a device');
    await expect(added.locator('td').nth(0)).toHaveText(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/);

    await page.getByTestId('audit-target').fill(id);
    await expect(audit.locator('tbody tr')).toHaveCount(1);
    await page.getByTestId('audit-action').fill('signed in');
    await expect(audit.locator('tbody tr')).toHaveCount(0);
    await page.getByTestId('audit-action').fill('');
    await page.getByTestId('audit-actor').fill('admin');
    await expect(audit.locator('tbody tr')).toHaveCount(1);

    const { scroll, width } = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      width: window.innerWidth,
    }));
    expect(scroll).toBeLessThanOrEqual(width);
    const wide = await page.evaluate(() =>
      Array.from(document.querySelectorAll('.table-wrap')).filter((w) => w.scrollWidth > w.clientWidth + 1).length,
    );
    expect(wide).toBe(0);
  });

  test('a refused change stays beside its field and puts the role picker back', async ({ page }) => {
    await page.goto('/admin');
    await expect(page.locator('html[data-hydrated]')).toHaveCount(1);
    const row = page.locator('tr[data-account="admin"]');
    // The only admin cannot stop being one: the picker returns to "admin"
    // and the reason sits in the row, announced.
    await row.locator('select').selectOption('viewer');
    await row.getByRole('button', { name: 'Change' }).click();
    const roleError = row.getByTestId('role-error');
    await expect(roleError).toContainText('the last admin cannot lose the admin role');
    await expect(roleError).toHaveAttribute('aria-live', 'polite');
    await expect(row.locator('select')).toHaveValue('admin');
    await page.reload();
    await expect(page.locator('tr[data-account="admin"] select')).toHaveValue('admin');

    // A bad name is reported under the name field, not at the top.
    await page.getByTestId('new-account-name').fill('bad name!');
    await page.getByTestId('new-account-password').fill('a good long password');
    await page.getByTestId('add-account').click();
    await expect(page.getByTestId('new-name-error')).toContainText('letters, digits');
    await expect(page.getByTestId('new-account-name')).toHaveAttribute('aria-invalid', 'true');
    await expect(page.getByTestId('new-password-error')).toBeEmpty();
  });
});

test('API tokens are made on the account page, shown once, and revoked only after a confirmation', async ({ page }, info) => {
  const label = `script-${info.project.name}`;
  await page.goto('/');
  await page.getByTestId('who').click();
  await expect(page).toHaveURL(/\/account$/);
  await expect(page.getByTestId('account-who')).toContainText('operator');

  await expect(page.locator('html[data-hydrated]')).toHaveCount(1);
  await page.getByTestId('token-label').fill(label);
  await page.getByTestId('add-token').click();
  const secret = (await page.getByTestId('new-token-secret').textContent())?.trim() ?? '';
  expect(secret).toMatch(/^sightline_/);
  await expect(page.getByTestId('new-token').getByRole('button', { name: 'Copy token' })).toBeVisible();
  const row = page.getByTestId('tokens').locator('tr', { hasText: label });
  await expect(row).toHaveCount(1);
  const asToken = async () =>
    (await page.request.get('/api/devices', { headers: { Authorization: `Bearer ${secret}` } })).status();
  expect(await asToken()).toBe(200);

  // Cancelling keeps it; confirming revokes it at once.
  await row.getByRole('button', { name: 'Revoke…' }).click();
  await expect(row.getByRole('alert')).toContainText(`Revoke ${label}?`);
  await row.getByRole('button', { name: 'Cancel' }).click();
  expect(await asToken()).toBe(200);
  await row.getByRole('button', { name: 'Revoke…' }).click();
  await row.getByRole('button', { name: 'Yes, revoke' }).click();
  await expect(page.getByTestId('tokens').locator('tr', { hasText: label })).toHaveCount(0);
  expect(await asToken()).toBe(401);

  // A blank label is refused beside its field.
  await page.getByTestId('token-label').fill('   ');
  await page.getByTestId('add-token').click();
  await expect(page.getByTestId('token-error')).toContainText('1 to 64 printable characters');
});

test('a skip link, level chart columns that use the screen, and one scale per metric when combined', async ({ page }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  const id = `Columns-${info.project.name}`;
  spawnSync('mosquitto_pub', ['-p', String(mqtt), '-q', '1', '-t', `sensor/${id}`, '-m', '{"co2":600,"hum":45}'], { timeout: 10_000 });
  await expect.poll(async () => (await page.request.get(`/api/devices/${id}`)).status()).toBe(200);
  if (info.project.name === 'desktop') await page.setViewportSize({ width: 1440, height: 900 });
  await page.goto(`/devices/${id}`);
  await expect(page.getByTestId('link-state')).toHaveText('live');

  // The first Tab reaches the skip link, which moves focus to the page.
  await page.keyboard.press('Tab');
  await expect(page.getByRole('link', { name: 'Skip to content' })).toBeFocused();
  await page.keyboard.press('Enter');
  await expect(page.locator('main')).toBeFocused();

  const panels = page.locator('.panels > .panel');
  await expect(panels).toHaveCount(2);
  if (info.project.name === 'desktop') {
    const [a, b] = [await panels.nth(0).boundingBox(), await panels.nth(1).boundingBox()];
    expect(b!.y).toBe(a!.y);
    expect(a!.width).toBeGreaterThan(650);
  }

  await page.getByTestId('layout-combined').click();
  const chart = page.getByTestId('chart');
  await expect(chart).toHaveCount(1);
  await expect(chart).toHaveClass(/ready/);
  const axes = await page.evaluate(() => {
    const el = document.querySelector('[data-testid="chart"] .chart') as HTMLElement;
    // @ts-expect-error ECharts is the page's global.
    const option = echarts.getInstanceByDom(el).getOption();
    return option.yAxis.length;
  });
  expect(axes).toBe(2);
});

test('fleet filters live in the URL and survive a reload', async ({ page }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  const id = `Filtered-${info.project.name}`;
  spawnSync('mosquitto_pub', ['-p', String(mqtt), '-q', '1', '-t', `sensor/${id}`, '-m', '{"temp":1}'], { timeout: 10_000 });
  await expect.poll(async () => (await page.request.get(`/api/devices/${id}`)).status()).toBe(200);
  await page.goto('/');
  await expect(page.getByTestId('link-state')).toHaveText('live');
  await page.getByTestId('search').fill(id);
  await page.getByTestId('status-filter').selectOption('offline');
  await page.getByTestId('sort').selectOption('last_seen');
  await expect(page).toHaveURL(new RegExp(`\\?q=${id}&status=offline&sort=last_seen$`));
  await expect(page.locator('.card')).toHaveCount(1);

  await page.reload();
  await expect(page.getByTestId('search')).toHaveValue(id);
  await expect(page.getByTestId('status-filter')).toHaveValue('offline');
  await expect(page.getByTestId('sort')).toHaveValue('last_seen');
  await expect(page.locator('.card')).toHaveCount(1);
  await expect(page.locator(`[data-device="${id}"]`)).toBeVisible();
});

test('on a phone the controls take one row and the first chart is on the first screen', async ({ page }, info) => {
  test.skip(info.project.name !== 'phone', 'the phone layout');
  const mqtt = info.project.metadata.mqttPort as number;
  const id = `Fold-${info.project.name}`;
  spawnSync('mosquitto_pub', ['-p', String(mqtt), '-q', '1', '-t', `sensor/${id}`, '-m', '{"temp":1,"hum":2}'], { timeout: 10_000 });
  await expect.poll(async () => (await page.request.get(`/api/devices/${id}`)).status()).toBe(200);
  await page.goto(`/devices/${id}`);
  await expect(page.getByTestId('link-state')).toHaveText('live');
  const picker = await page.locator('.range-picker').boundingBox();
  const actions = await page.locator('.chart-actions').boundingBox();
  const chart = await page.getByTestId('chart').first().boundingBox();
  const height = page.viewportSize()!.height;
  // One row of 44 px buttons, and the export row.
  expect(picker!.height).toBeLessThan(60);
  expect(picker!.height + actions!.height).toBeLessThan(height * 0.2);
  expect(chart!.y + chart!.height).toBeLessThanOrEqual(height);
});

test.describe('as a viewer', () => {
  test.use({ role: 'viewer' });
  test('a refused page keeps the header and a way back', async ({ page }) => {
    const response = await page.goto('/admin');
    expect(response?.status()).toBe(403);
    await expect(page.getByTestId('forbidden')).toContainText('this needs the admin role');
    await expect(page.locator('header .brand')).toHaveText('Sightline');
    await page.getByRole('link', { name: 'Back to the fleet' }).click();
    await expect(page).toHaveURL(/\/$/);
    await expect(page.getByRole('heading', { name: 'Fleet' })).toBeVisible();
  });
});
