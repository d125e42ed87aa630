// Accounts and roles in the browser: signing in through the real form,
// what a viewer may not see, and hostile device labels shown as text.
// (Sending a command as an operator is send-command.spec.ts.)
import { test, expect, PASSWORDS } from './fixtures';

test.describe('signed out', () => {
  test.use({ role: null });

  test('pages redirect to the sign-in form, which signs a viewer in without the command form', async ({ page }) => {
    const problems: string[] = [];
    page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
    page.on('pageerror', (e) => problems.push(e.message));

    const id = 'viewer-sees-0001';
    expect((await page.request.get('/api/devices')).status()).toBe(401);

    await page.goto(`/devices/${id}`);
    await expect(page).toHaveURL(/\/login\?next=/);
    await page.getByLabel('Name').fill('viewer');
    await page.getByLabel('Password').fill('wrong password');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect(page.getByTestId('login-error')).toHaveText('Wrong name or password.');
    // Only the password has to be typed again.
    await expect(page.getByLabel('Name')).toHaveValue('viewer');
    await expect(page.getByLabel('Password')).toBeFocused();

    await page.getByLabel('Name').fill('viewer');
    await page.getByLabel('Password').fill(PASSWORDS.viewer);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect(page).toHaveURL(new RegExp(`/devices/${id}$`));
    await expect(page.getByTestId('who')).toContainText('viewer');

    await page.goto('/');
    await expect(page.getByRole('heading', { name: 'Fleet' })).toBeVisible();
    await expect(page.getByTestId('link-state')).toHaveText('live');
    await expect(page.getByTestId('new-device-id')).toHaveCount(0);

    // The API refuses the viewer what the page hides.
    const refused = await page.request.post(`/api/devices/${id}/commands`, {
      data: { name: 'ping' },
      headers: { Origin: new URL(page.url()).origin },
    });
    expect(refused.status()).toBe(403);

    await page.getByRole('button', { name: 'Sign out' }).click();
    await expect(page).toHaveURL(/\/login\?bye=1/);
    await page.goto('/');
    await expect(page).toHaveURL(/\/login/);
    // The device was never added, so its page answers 404 once signed in.
    expect(problems.filter((p) => !p.includes('401') && !p.includes('404'))).toEqual([]);
  });
});

test.describe('without JavaScript', () => {
  test.use({ role: null, javaScriptEnabled: false });

  test('the sign-in and sign-out forms work as plain HTML', async ({ page }) => {
    await page.goto('/');
    await expect(page).toHaveURL(/\/login\?next=%2F|\/login\?next=\//);
    await page.getByLabel('Name').fill('operator');
    await page.getByLabel('Password').fill(PASSWORDS.operator);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect(page.getByRole('heading', { name: 'Fleet' })).toBeVisible();
    await expect(page.getByTestId('who')).toContainText('operator');
    await page.getByRole('button', { name: 'Sign out' }).click();
    await expect(page).toHaveURL(/\/login\?bye=1/);
    await expect(page.getByRole('status')).toHaveText('You are signed out.');
  });
});

test.describe('as a viewer', () => {
  test.use({ role: 'viewer' });

  test('the device page has no command form and no admin link', async ({ page }, info) => {
    const mqtt = info.project.metadata.mqttPort as number;
    const id = `viewer-dev-${info.project.name}`;
    const { execFileSync } = await import('child_process');
    execFileSync('mosquitto_pub', ['-p', String(mqtt), '-t', `sensor/${id}`, '-m', '{"temp":21.5}']);
    await expect.poll(async () => (await page.request.get(`/api/devices/${id}`)).status()).toBe(200);
    await page.goto(`/devices/${id}`);
    await expect(page.getByTestId('device-id')).toHaveText(id);
    await expect(page.getByTestId('link-state')).toHaveText('live');
    await expect(page.locator('#commands-title')).toHaveCount(0);
    await expect(page.getByTestId('command-send')).toHaveCount(0);
    await expect(page.getByRole('link', { name: 'Admin' })).toHaveCount(0);
    expect((await page.request.get('/admin', { maxRedirects: 0 })).status()).toBe(403);
  });
});

test.describe('as an admin', () => {
  test.use({ role: 'admin' });

  test('a hostile device label renders as text, with no dialog', async ({ page }, info) => {
    const hostile = '<img src=x onerror=alert(1)>';
    const mqtt = info.project.metadata.mqttPort as number;
    const id = `hostile-${info.project.name}`;
    const dialogs: string[] = [];
    page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });

    const { execFileSync } = await import('child_process');
    execFileSync('mosquitto_pub', ['-p', String(mqtt), '-t', `sensor/${id}`, '-m', '{"temp":1}']);
    await expect.poll(async () => (await page.request.get(`/api/devices/${id}`)).status()).toBe(200);
    const origin = info.project.use.baseURL as string;
    const set = await page.request.put(`/api/devices/${id}/label`, {
      data: { label: hostile },
      headers: { Origin: origin },
    });
    expect(set.status()).toBe(204);

    await page.goto('/');
    const card = page.locator(`li.card[data-device="${id}"]`);
    await expect(card.getByTestId('device-label')).toHaveText(hostile);
    await page.goto(`/devices/${id}`);
    await expect(page.getByTestId('device-label')).toHaveText(hostile);
    await expect(page.getByTestId('link-state')).toHaveText('live');
    await expect(page.locator('img[src="x"]')).toHaveCount(0);

    // The audit log (admin page) shows who set it, as text too.
    await page.goto('/admin');
    const row = page.getByTestId('audit').locator('tr[data-action="device_label"]').first();
    await expect(row).toContainText('admin');
    await expect(row).toContainText(hostile);
    await page.waitForTimeout(500);
    expect(dialogs).toEqual([]);
  });

  test('accounts are added, promoted and removed on the admin page', async ({ page }, info) => {
    const name = `newbie-${info.project.name}`;
    await page.goto('/admin');
    await expect(page.getByTestId('link-state')).toHaveCount(0);
    await page.getByTestId('new-account-name').fill(name);
    await page.getByTestId('new-account-password').fill('a good long password');
    await page.getByTestId('add-account').click();
    const row = page.locator(`tr[data-account="${name}"]`);
    await expect(row.locator('select')).toHaveValue('viewer');
    await row.locator('select').selectOption('operator');
    await row.getByRole('button', { name: 'Change' }).click();
    await expect(page.getByTestId('audit').locator('tr[data-action="account_role"]').first()).toContainText(name);
    await page.reload();
    await expect(page.locator(`tr[data-account="${name}"] select`)).toHaveValue('operator');
    // Removing asks first; cancelling keeps the account.
    const remove = async (account: string) => {
      const row = page.locator(`tr[data-account="${account}"]`);
      await row.getByRole('button', { name: 'Remove…' }).click();
      await expect(row.getByRole('alert')).toContainText(`Remove ${account}`);
      await row.getByRole('button', { name: 'Yes, remove' }).click();
    };
    await page.locator(`tr[data-account="${name}"]`).getByRole('button', { name: 'Remove…' }).click();
    await page.locator(`tr[data-account="${name}"]`).getByRole('button', { name: 'Cancel' }).click();
    await expect(page.locator(`tr[data-account="${name}"]`).getByRole('button', { name: 'Remove…' })).toBeVisible();
    await remove(name);
    await expect(page.locator(`tr[data-account="${name}"]`)).toHaveCount(0);
    // The last admin cannot be removed, and the page says why.
    await remove('admin');
    await expect(page.locator('tr[data-account="admin"]').getByTestId('remove-error')).toContainText('last admin');
  });
});
