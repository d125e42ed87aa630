// The seed article's flow in a real browser: `mosquitto_pub` sends
// {'temp':22} to sensor/Device001, and the reading appears on the hydrated
// dashboard live, on its chart, and again after a reload.
import { Page, ConsoleMessage } from '@playwright/test';
import { test, expect, signIn } from './fixtures';
import { execFileSync } from 'child_process';

/** Publishes exactly as the seed does: mosquitto_pub -p PORT -t TOPIC -m MSG. */
function mosquittoPub(port: number, topic: string, message: string) {
  execFileSync('mosquitto_pub', ['-p', String(port), '-t', topic, '-m', message], { timeout: 10_000 });
}

/** Collects console errors and hydration warnings; the test fails on any. */
function watchConsole(page: Page): string[] {
  const problems: string[] = [];
  page.on('console', (m: ConsoleMessage) => {
    const text = m.text();
    if (m.type() === 'error' || /hydrat/i.test(text)) problems.push(`${m.type()}: ${text}`);
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  return problems;
}

/** Waits until the server has stored a device's first reading. */
async function waitForDevice(page: Page, id: string) {
  await expect
    .poll(async () => (await page.request.get(`/api/devices/${id}`)).status())
    .toBe(200);
}

async function canvasImage(page: Page): Promise<string> {
  return page.evaluate(() => {
    const canvas = document.querySelector('[data-testid="chart"] canvas') as HTMLCanvasElement | null;
    return canvas ? canvas.toDataURL() : '';
  });
}

test('a seed publish appears live, moves the chart and survives a reload', async ({ page }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  const problems = watchConsole(page);

  await page.goto('/');
  await expect(page.getByTestId('no-devices')).toBeVisible();
  // The badge only turns "live" once the WASM has hydrated and subscribed.
  await expect(page.getByTestId('link-state')).toHaveText('live');

  mosquittoPub(mqtt, 'sensor/Device001', "{'temp':22}");
  const card = page.locator('[data-device="Device001"]');
  await expect(card).toBeVisible();
  await expect(card.locator('[data-metric="temp"] .metric-value')).toHaveText('22');
  await expect(card.getByTestId('last-seen')).toHaveText(/just now|\d+ s ago/);

  await card.locator('a').click();
  await expect(page).toHaveURL(/\/devices\/Device001$/);
  const chart = page.getByTestId('chart');
  await expect(chart).toHaveAttribute('data-points', '1');
  await expect(chart).toHaveClass(/ready/);
  await expect(page.getByTestId('latest')).toHaveText('22');
  await expect(page.getByTestId('link-state')).toHaveText('live');
  await expect.poll(() => canvasImage(page)).not.toBe('');
  const before = await canvasImage(page);

  mosquittoPub(mqtt, 'sensor/Device001', "{'temp':25}");
  await expect(page.getByTestId('latest')).toHaveText('25');
  await expect(chart).toHaveAttribute('data-points', '2');
  await expect.poll(() => canvasImage(page)).not.toBe(before);

  await page.reload();
  await expect(page.getByTestId('chart')).toHaveAttribute('data-points', '2');
  await expect(page.getByTestId('latest')).toHaveText('25');
  await expect(page.getByTestId('link-state')).toHaveText('live');

  expect(problems).toEqual([]);
});

test('pages show real values before any script runs', async ({ browser }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  mosquittoPub(mqtt, 'sensor/NoScript', "{'temp':19.5}");
  const context = await browser.newContext({ javaScriptEnabled: false, baseURL: info.project.use.baseURL });
  const page = await context.newPage();
  // Signing in is a plain form post, which needs no script either.
  await signIn(page, 'viewer');
  await expect
    .poll(async () => {
      await page.goto('/');
      return page.locator('[data-device="NoScript"] [data-metric="temp"] .metric-value').textContent();
    })
    .toBe('19.5');
  await page.goto('/devices/NoScript');
  await expect(page.getByTestId('latest')).toHaveText('19.5');
  await expect(page.locator('[data-testid="chart"] polyline')).toHaveCount(1);
  await context.close();
});

test('bad payloads are counted and the dashboard keeps working', async ({ page }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  const problems = watchConsole(page);
  mosquittoPub(mqtt, 'sensor/Bad01', "{'temp':1}");
  await waitForDevice(page, 'Bad01');
  await page.goto('/devices/Bad01');
  await expect(page.getByTestId('link-state')).toHaveText('live');
  mosquittoPub(mqtt, 'sensor/Bad01', '{not json');
  mosquittoPub(mqtt, 'sensor/Bad01', '{"temp":"warm"}');
  mosquittoPub(mqtt, 'sensor/Bad01', "{'temp':2}");
  await expect(page.getByTestId('device-rejected')).toHaveText('2');
  await expect(page.getByTestId('latest')).toHaveText('2');
  expect(problems).toEqual([]);
});

test('the layout fits the screen without horizontal scrolling', async ({ page }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  mosquittoPub(mqtt, 'sensor/Layout-with-a-rather-long-device-name-01', "{'temp':21,'hum':40,'co2':612}");
  await waitForDevice(page, 'Layout-with-a-rather-long-device-name-01');
  for (const path of ['/', '/devices/Layout-with-a-rather-long-device-name-01']) {
    await page.goto(path);
    await expect(page.getByTestId('link-state')).toHaveText('live');
    const { scroll, width } = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      width: window.innerWidth,
    }));
    expect(scroll, `${path} scrolls sideways`).toBeLessThanOrEqual(width);
  }
  if (info.project.name === 'phone') {
    // On a phone every chart takes (nearly) the full width.
    const box = await page.getByTestId('chart').first().boundingBox();
    const viewport = page.viewportSize();
    expect(box && viewport && box.width / viewport.width).toBeGreaterThan(0.85);
  }
});
