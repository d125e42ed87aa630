// Named to run after seed.spec.ts, which needs an empty fleet.
// Desired state from the device page: an operator sets it, a device that
// boots afterwards (MQTT.js over TCP) gets it retained, acknowledges it,
// and the page says so; a viewer sees it but has no form.
import { test, expect } from './fixtures';
import * as mqtt from 'mqtt';

test.use({ role: 'operator' });

test('an operator sets a desired state, a device that boots gets it retained and the page shows the acknowledgement', async ({ page }, info) => {
  const origin = info.project.use.baseURL as string;
  const port = info.project.metadata.mqttPort as number;
  const id = `Desired-${info.project.name}`;
  const r = await page.request.post('/api/devices', { data: { id }, headers: { Origin: origin } });
  expect(r.status()).toBe(201);
  const secret = (await r.json()).secret as string;

  await page.goto(`/devices/${id}`);
  await page.locator('html[data-hydrated]').waitFor();
  await expect(page.getByTestId('desired-none')).toBeVisible();

  // Not JSON: refused with the reason, next to the field.
  await page.getByTestId('desired-input').fill('{"interval_ms": ');
  await page.getByTestId('desired-set').click();
  await expect(page.getByTestId('desired-error')).toContainText('not JSON');

  await page.getByTestId('desired-input').fill('{"interval_ms": 500, "led": "on"}');
  await page.getByTestId('desired-set').click();
  await expect(page.getByTestId('desired-error')).toHaveCount(0);
  await expect(page.getByTestId('desired-payload')).toContainText('"interval_ms": 500');
  await expect(page.getByTestId('desired-status')).toContainText('Version 1, set by');
  await expect(page.getByTestId('desired-status')).toContainText('Not acknowledged yet');

  // The device boots after the change and subscribes at QoS 1.
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    clientId: `${id}-boot`, username: id, password: secret, protocolVersion: 4, reconnectPeriod: 0,
  });
  try {
    const got = new Promise<{ topic: string; payload: string; retain: boolean }>((resolve) => {
      client.on('message', (topic, payload, packet) => resolve({ topic, payload: payload.toString(), retain: packet.retain }));
    });
    await client.subscribeAsync(`command/${id}/desired`, { qos: 1 });
    const message = await got;
    expect(message.topic).toBe(`command/${id}/desired`);
    expect(message.retain).toBe(true);
    expect(JSON.parse(message.payload)).toEqual({ interval_ms: 500, led: 'on' });
    // MQTT.js acknowledges it; the page follows without a reload.
    await expect(page.getByTestId('desired-status')).toContainText('Acknowledged by the device', { timeout: 15_000 });
  } finally {
    await client.endAsync();
  }

  // Nothing on the page scrolls sideways on a phone, long JSON included.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  expect(overflow).toBeLessThanOrEqual(0);
});

test.describe('as a viewer', () => {
  test.use({ role: 'viewer' });

  test('a viewer sees the desired state but cannot change it', async ({ page }, info) => {
    const id = `Desired-${info.project.name}`;
    await page.goto(`/devices/${id}`);
    await expect(page.getByTestId('desired')).toBeVisible();
    await expect(page.getByTestId('desired-form')).toHaveCount(0);
  });
});
