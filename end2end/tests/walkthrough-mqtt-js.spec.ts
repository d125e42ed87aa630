// Named to run after seed.spec.ts, which needs an empty fleet.
// MQTT.js, as people use it: from Node over TCP, and from a web page in a
// real Chromium over WebSocket (subprotocol `mqtt`, on the HTTP listener's
// /mqtt). Each publishes a reading with the device's own secret, and the
// reading appears live on the dashboard.
import { test, expect } from './fixtures';
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import * as mqtt from 'mqtt';

test.use({ role: 'operator' });

/** Adds a device through the API and returns its secret. */
async function addDevice(page: import('@playwright/test').Page, id: string, origin: string): Promise<string> {
  const r = await page.request.post('/api/devices', { data: { id }, headers: { Origin: origin } });
  expect(r.status()).toBe(201);
  return (await r.json()).secret;
}

test('MQTT.js from Node over TCP publishes a reading the dashboard shows', async ({ page }, info) => {
  const origin = info.project.use.baseURL as string;
  const port = info.project.metadata.mqttPort as number;
  const id = `MqttJs-tcp-${info.project.name}`;
  const secret = await addDevice(page, id, origin);
  await page.goto(`/devices/${id}`);
  await expect(page.getByTestId('link-state')).toHaveText('live');

  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    clientId: `${id}-client`,
    username: id,
    password: secret,
    protocolVersion: 5,
    reconnectPeriod: 0,
  });
  try {
    await client.publishAsync(`sensor/${id}`, JSON.stringify({ temp: 31.5 }), { qos: 1 });
    await expect(page.getByTestId('latest')).toHaveText('31.5');
  } finally {
    await client.endAsync();
  }
  // A wrong secret is refused with a CONNACK reason, not left hanging.
  await expect(
    mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { username: id, password: 'wrong', reconnectPeriod: 0, connectTimeout: 5_000 }),
  ).rejects.toThrow(/Bad username or password|Not authorized/i);
});

test('MQTT.js in a web page connects over WebSocket and publishes a reading the dashboard shows', async ({ page, context }, info) => {
  const origin = info.project.use.baseURL as string;
  const id = `MqttJs-ws-${info.project.name}`;
  const secret = await addDevice(page, id, origin);
  await page.goto(`/devices/${id}`);
  await expect(page.getByTestId('link-state')).toHaveText('live');

  // A page of another site on this network, as a web app beside the
  // dashboard would be: it loads the browser build of MQTT.js and talks to
  // /mqtt across origins. (Chromium refuses a public page, such as
  // about:blank, any connection to a local address.)
  const bundle = fs.readFileSync(path.join(__dirname, '..', 'node_modules', 'mqtt', 'dist', 'mqtt.min.js'));
  const site = http.createServer((req, res) => {
    if (req.url === '/mqtt.min.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(bundle);
    } else {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!DOCTYPE html><title>a web app</title><script src="/mqtt.min.js"></script>');
    }
  });
  await new Promise<void>((resolve) => site.listen(0, '127.0.0.1', resolve));
  const sitePort = (site.address() as import('net').AddressInfo).port;
  const device = await context.newPage();
  await device.goto(`http://127.0.0.1:${sitePort}/`);
  const url = origin.replace(/^http/, 'ws') + '/mqtt';
  const outcome = await device.evaluate(
    async ({ url, id, secret }) => {
      const lib = (window as unknown as { mqtt: typeof import('mqtt') }).mqtt;
      const client = await lib.connectAsync(url, { clientId: `${id}-page`, username: id, password: secret, reconnectPeriod: 0 });
      const subscribed = await client.subscribeAsync(`command/${id}`, { qos: 1 });
      await client.publishAsync(`sensor/${id}`, JSON.stringify({ temp: 27.25 }), { qos: 1 });
      // Another device's topic is refused: the connection is closed.
      const closed = new Promise<boolean>((resolve) => {
        client.once('close', () => resolve(true));
        setTimeout(() => resolve(false), 5_000);
      });
      client.publish('sensor/someone-else', '{"temp":1}', { qos: 1 });
      return { granted: subscribed.map((s) => s.qos), closedOnForeignTopic: await closed };
    },
    { url, id, secret },
  );
  expect(outcome.granted).toEqual([1]);
  expect(outcome.closedOnForeignTopic).toBe(true);
  await expect(page.getByTestId('latest')).toHaveText('27.25');
  expect((await page.request.get('/api/devices/someone-else')).status()).toBe(404);
  await device.close();
  site.close();
});
