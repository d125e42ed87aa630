// Device registry and online status in a real browser: an operator creates
// a device on the fleet page, the secret shown once lets a real MQTT client
// in, a wrong one does not, and the card shows the device go online and
// offline without a reload. (Files run in name order against one server per
// project, and seed.spec.ts must see an empty database first.)
import { test, expect } from './fixtures';
import { spawn, spawnSync } from 'child_process';

test('a device created on the dashboard connects with its secret and shows online, then offline', async ({ page }, info) => {
  const mqtt = String(info.project.metadata.mqttPort as number);
  const id = `Ui-${info.project.name}`;
  await page.goto('/');
  await expect(page.getByTestId('link-state')).toHaveText('live');

  await page.getByTestId('new-device-id').fill(id);
  await page.getByTestId('add-device').click();
  const secret = (await page.getByTestId('new-secret').textContent())?.trim() ?? '';
  expect(secret).toMatch(/^[A-Za-z0-9]{32}$/);
  const card = page.locator(`[data-device="${id}"]`);
  await expect(card).toBeVisible();
  await expect(card.getByTestId('presence')).toHaveClass(/off/);

  // A wrong secret is refused with a CONNACK the client reports.
  const wrong = spawnSync('mosquitto_pub', ['-p', mqtt, '-u', id, '-P', 'wrong', '-t', `sensor/${id}`, '-m', '1'], { timeout: 10_000 });
  expect(wrong.status).not.toBe(0);
  expect(String(wrong.stderr)).toContain('bad user name or password');

  // The right one gets in; the subscriber stays connected until killed.
  const sub = spawn('mosquitto_sub', ['-p', mqtt, '-u', id, '-P', secret, '-t', `command/${id}`]);
  try {
    await expect(card.getByTestId('presence')).toHaveClass(/on/);
    const pub = spawnSync('mosquitto_pub', ['-p', mqtt, '-u', id, '-P', secret, '-q', '1', '-t', `sensor/${id}`, '-m', '{"temp":19}'], { timeout: 10_000 });
    expect(pub.status).toBe(0);
    await expect(card.locator('[data-metric="temp"] .metric-value')).toHaveText('19');
  } finally {
    sub.kill('SIGKILL');
  }
  await expect(card.getByTestId('presence')).toHaveClass(/off/);
  await expect(card.getByTestId('presence')).toHaveAttribute('title', /offline \(connection lost\)/);

  // The name is taken now.
  await page.getByTestId('new-device-id').fill(id);
  await page.getByTestId('add-device').click();
  await expect(page.getByTestId('add-error')).toContainText('already exists');
});
