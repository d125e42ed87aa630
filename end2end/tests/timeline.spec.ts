// History in a real browser: 26 hours of one-minute readings go in over
// real MQTT (with their own timestamps), then the device page is driven
// like a user would: pick 24 h, drag across the chart to zoom, download
// the CSV of the range, and check the phone layout. Screenshots of the
// device page at both sizes are kept as test artefacts.
// (Files run in name order, and seed.spec.ts must see an empty database.)
import { Page } from '@playwright/test';
import { test, expect } from './fixtures';
import { spawnSync } from 'child_process';
import * as fs from 'fs';

const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;

/** Publishes one message per line with mosquitto_pub -l, at QoS 1. */
function publishLines(port: number, topic: string, lines: string[]) {
  const r = spawnSync('mosquitto_pub', ['-p', String(port), '-q', '1', '-t', topic, '-l'], {
    input: lines.join('\n') + '\n',
    timeout: 60_000,
  });
  expect(r.status, String(r.stderr)).toBe(0);
}

/** Seeds `id` with a reading of temp and hum every minute for 26 hours. */
function seed(port: number, id: string): number[] {
  const now = Date.now();
  const start = Math.floor((now - 26 * 60 * MINUTE) / MINUTE) * MINUTE;
  const stamps: number[] = [];
  for (let ts = start; ts < now - MINUTE; ts += MINUTE) stamps.push(ts);
  publishLines(
    port,
    `sensor/${id}`,
    stamps.map((ts, i) => JSON.stringify({ temp: 20 + 5 * Math.sin(i / 60), hum: 40 + (i % 7), ts })),
  );
  return stamps;
}

async function waitForReadings(page: Page, id: string, count: number) {
  await expect
    .poll(async () => {
      const r = await page.request.get(`/api/devices/${id}/series?metric=temp&from=0&points=5000`);
      if (!r.ok()) return 0;
      const body = await r.json();
      return body.series[0].buckets.reduce((n: number, b: { count: number }) => n + b.count, 0);
    }, { timeout: 30_000 })
    .toBe(count);
}

/** The chart of one metric on the device page. */
function chartOf(page: Page, metric: string) {
  return page.locator(`.panel[data-metric="${metric}"] [data-testid="chart"]`);
}

test('pick 24 h, drag to zoom, export the range, on desktop and phone', async ({ page }, info) => {
  const mqtt = info.project.metadata.mqttPort as number;
  const id = `Hist-${info.project.name}`;
  const stamps = seed(mqtt, id);
  await waitForReadings(page, id, stamps.length);
  const problems: string[] = [];
  page.on('pageerror', (e) => problems.push(e.message));

  await page.goto(`/devices/${id}`);
  await expect(page.getByTestId('link-state')).toHaveText('live');
  await expect(page.getByTestId('range-15m')).toHaveAttribute('aria-pressed', 'true');

  // Pick 24 h: the URL says so and the chart redraws with one point per
  // bucket of its step, all of which hold data.
  // By touch on the phone, by mouse on the desktop.
  const press = (testId: string) =>
    info.project.name === 'phone' ? page.getByTestId(testId).tap() : page.getByTestId(testId).click();
  await press('range-24h');
  await expect(page).toHaveURL(/range=24h/);
  const temp = chartOf(page, 'temp');
  await expect(temp).toHaveClass(/ready/);
  await expect(temp).not.toHaveAttribute('data-resolution', 'raw');
  // The range is described in the viewer's zone, like the chart's axis.
  await expect(page.getByTestId('range-label')).toContainText(`(${await page.evaluate(() => Intl.DateTimeFormat().resolvedOptions().timeZone)})`);
  const step = Number(await temp.getAttribute('data-step'));
  const points = Number(await temp.getAttribute('data-points'));
  expect(step).toBeGreaterThanOrEqual(MINUTE);
  expect(Math.abs(points - DAY / step)).toBeLessThanOrEqual(1);
  // About one bucket per pixel of the chart, never more than fit.
  const box = await temp.boundingBox();
  expect(box).not.toBeNull();
  expect(points).toBeLessThanOrEqual(Math.max(100, box!.width));

  // The export link covers the range on screen; the CSV has a header and
  // one row per reading of each metric in it.
  const href = await page.getByTestId('export').getAttribute('href');
  const params = new URLSearchParams(href!.split('?')[1]);
  const from = Number(params.get('from'));
  const to = Number(params.get('to'));
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export').click()]);
  const file = info.outputPath('export.csv');
  await download.saveAs(file);
  const rows = fs.readFileSync(file, 'utf8').trimEnd().split('\n');
  expect(rows[0]).toBe('device,metric,ts,time,value');
  const inRange = stamps.filter((ts) => ts >= from && ts <= to).length;
  expect(rows.length - 1).toBe(2 * inRange);

  await page.screenshot({ path: info.outputPath(`device-${info.project.name}.png`), fullPage: true });
  await info.attach(`device page (${info.project.name})`, {
    path: info.outputPath(`device-${info.project.name}.png`),
    contentType: 'image/png',
  });

  // Nothing needs horizontal scrolling, and every picker button is a
  // comfortable tap target.
  const { scroll, width } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    width: window.innerWidth,
  }));
  expect(scroll).toBeLessThanOrEqual(width);
  for (const button of await page.locator('.range-picker button').all()) {
    const b = await button.boundingBox();
    expect(b!.height).toBeGreaterThanOrEqual(44);
    expect(b!.width).toBeGreaterThanOrEqual(44);
  }

  if (info.project.name === 'phone') {
    // The smaller common phone size too: 360 x 740.
    await page.setViewportSize({ width: 360, height: 740 });
    await page.reload();
    await expect(chartOf(page, 'temp')).toHaveClass(/ready/);
    const narrow = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      width: window.innerWidth,
    }));
    expect(narrow.scroll).toBeLessThanOrEqual(narrow.width);
    const chartBox = await chartOf(page, 'temp').boundingBox();
    expect(chartBox!.width / 360).toBeGreaterThan(0.85);
    await page.screenshot({ path: info.outputPath('device-phone-360.png'), fullPage: true });
    await info.attach('device page (phone 360 x 740)', {
      path: info.outputPath('device-phone-360.png'),
      contentType: 'image/png',
    });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.reload();
    await expect(chartOf(page, 'temp')).toHaveClass(/ready/);
  }

  if (info.project.name === 'desktop') {
    // Drag across the middle fifth of the chart with a mouse (phones pinch,
    // below): the URL gets the zoomed window and the chart is redrawn from
    // finer buckets.
    const y = box!.y + box!.height / 2;
    await page.mouse.move(box!.x + box!.width * 0.4, y);
    await page.mouse.down();
    await page.mouse.move(box!.x + box!.width * 0.5, y, { steps: 5 });
    await page.mouse.move(box!.x + box!.width * 0.6, y, { steps: 5 });
    await page.mouse.up();
    await expect(page).toHaveURL(/from=\d+&to=\d+/);
    await expect(page.getByTestId('range-custom')).toHaveAttribute('aria-pressed', 'true');
    await expect
      .poll(async () => Number(await chartOf(page, 'temp').getAttribute('data-step')))
      .toBeLessThan(step);
    await expect(chartOf(page, 'temp')).toHaveClass(/ready/);
    const zoomed = new URLSearchParams(page.url().split('?')[1]);
    const span = Number(zoomed.get('to')) - Number(zoomed.get('from'));
    expect(span).toBeGreaterThan(DAY * 0.1);
    expect(span).toBeLessThan(DAY * 0.3);
    // The back button undoes the zoom.
    await page.goBack();
    await expect(page).toHaveURL(/range=24h/);
    await expect(chartOf(page, 'temp')).toHaveAttribute('data-step', String(step));
  }

  if (info.project.name === 'phone') {
    // Pinch out with two real touch points (Chromium's input pipeline, as
    // a finger would): the chart asks for the narrower window.
    await chartOf(page, 'temp').scrollIntoViewIfNeeded();
    const chart = await chartOf(page, 'temp').boundingBox();
    const cx = chart!.x + chart!.width / 2;
    const cy = chart!.y + chart!.height / 2;
    const cdp = await page.context().newCDPSession(page);
    const touch = (type: string, d: number) =>
      cdp.send('Input.dispatchTouchEvent', {
        type,
        touchPoints: type === 'touchEnd' ? [] : [{ x: cx - d, y: cy, id: 1 }, { x: cx + d, y: cy, id: 2 }],
      });
    await touch('touchStart', 20);
    for (let d = 30; d <= 140; d += 10) await touch('touchMove', d);
    await touch('touchEnd', 0);
    await expect(page).toHaveURL(/from=\d+&to=\d+/);
    await expect
      .poll(async () => Number(await chartOf(page, 'temp').getAttribute('data-step')))
      .toBeLessThan(step);
  }
  expect(problems).toEqual([]);
});

test('a shared link reopens the same range, and all metrics fit on one chart', async ({ page }, info) => {
  const id = `Hist-${info.project.name}`;
  await page.goto(`/devices/${id}?range=7d&view=combined`);
  await expect(page.getByTestId('range-7d')).toHaveAttribute('aria-pressed', 'true');
  await expect(page.getByTestId('layout-combined')).toHaveAttribute('aria-pressed', 'true');
  const chart = page.locator('.panel[data-metric="all"] [data-testid="chart"]');
  await expect(chart).toHaveClass(/ready/);
  await expect(page.locator('[data-testid="chart"]')).toHaveCount(1);
  await page.screenshot({ path: info.outputPath(`combined-${info.project.name}.png`), fullPage: true });
  const { scroll, width } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    width: window.innerWidth,
  }));
  expect(scroll).toBeLessThanOrEqual(width);
});
