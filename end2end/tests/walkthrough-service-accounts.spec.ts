// Named to run after seed.spec.ts, which needs an empty fleet.
// An admin makes a service account on the admin page, a tool (MQTT.js)
// logs in with the secret shown once and receives a device's readings on
// sensor/<device>, and removing the account disconnects the tool.
import { test, expect } from './fixtures';
import * as mqtt from 'mqtt';

test.use({ role: 'admin' });

test('an admin makes a service account whose secret reads the feed, and removing it disconnects the reader', async ({ page }, info) => {
  const origin = info.project.use.baseURL as string;
  const port = info.project.metadata.mqttPort as number;
  const name = `reader-${info.project.name}`;
  const device = `Fed-${info.project.name}`;
  const r = await page.request.post('/api/devices', { data: { id: device }, headers: { Origin: origin } });
  expect(r.status()).toBe(201);
  const deviceSecret = (await r.json()).secret as string;

  await page.goto('/admin');
  await page.locator('html[data-hydrated]').waitFor();
  const panel = page.getByTestId('service-accounts');
  // A grant outside sensor/ is refused with the reason.
  await panel.getByTestId('new-service-name').fill(name);
  await panel.getByTestId('new-service-grants').fill('#');
  await panel.getByTestId('add-service').click();
  await expect(panel.getByTestId('new-service-error')).toContainText('invalid grant');

  // So is a command grant that is not command/<device> or command/+.
  await panel.getByTestId('new-service-grants').fill(`sensor/${device}`);
  await panel.getByTestId('new-service-publish').fill('command/#');
  await panel.getByTestId('add-service').click();
  await expect(panel.getByTestId('new-service-error')).toContainText('invalid command grant');

  await panel.getByTestId('new-service-publish').fill(`command/${device}`);
  await panel.getByTestId('add-service').click();
  await expect(panel.getByTestId('new-service')).toBeVisible();
  const secret = (await panel.getByTestId('new-service-secret').textContent())!.trim();
  await expect(panel.locator(`tr[data-service="${name}"]`)).toContainText(`sensor/${device}`);
  await expect(panel.locator(`tr[data-service="${name}"]`)).toContainText(`command/${device}`);

  const reader = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    clientId: `${name}-tool`, username: name, password: secret, protocolVersion: 5, reconnectPeriod: 0,
  });
  const closed = new Promise<void>((resolve) => reader.on('close', () => resolve()));
  const got = new Promise<{ topic: string; payload: string }>((resolve) => {
    reader.on('message', (topic, payload) => resolve({ topic, payload: payload.toString() }));
  });
  await reader.subscribeAsync(`sensor/${device}`, { qos: 1 });
  const sender = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    clientId: `${device}-c`, username: device, password: deviceSecret, reconnectPeriod: 0,
  });
  try {
    await sender.publishAsync(`sensor/${device}`, JSON.stringify({ temp: 19.25 }), { qos: 1 });
  } finally {
    await sender.endAsync();
  }
  const message = await got;
  expect(message.topic).toBe(`sensor/${device}`);
  const body = JSON.parse(message.payload);
  expect(body.device).toBe(device);
  expect(body.readings).toEqual([expect.objectContaining({ metric: 'temp', value: 19.25 })]);

  // Nothing on the admin page scrolls sideways, the new secret included.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  expect(overflow).toBeLessThanOrEqual(0);

  const row = panel.locator(`tr[data-service="${name}"]`);
  await row.getByRole('button', { name: 'Remove…' }).click();
  await row.getByRole('button', { name: 'Yes, remove' }).click();
  await expect(row).toHaveCount(0);
  await closed;
});
