// A fleet of 1,000 live devices in a real browser: the fleet page keeps
// only the cards near the screen in the document, scrolling brings the
// rest in, and search, the status filter and sorting work on all of them.
// (Runs last: the other files expect a small fleet.)
import { test, expect } from './fixtures';
import { spawn } from 'child_process';
import * as path from 'path';

const bin = process.env.SIGHTLINE_BIN ?? path.resolve(__dirname, '../../target/release/sightline');

test('1,000 devices: only visible cards render, and search, filter and sort work', async ({ page }, info) => {
  // Connecting a thousand simulated devices takes 10-25 s on two cores.
  test.setTimeout(120_000);
  const mqtt = info.project.metadata.mqttPort as number;
  const prefix = `fleet-${info.project.name}-`;
  const sim = spawn(bin, ['simulate', '--broker', `127.0.0.1:${mqtt}`, '--devices', '1000', '--rate', '1', '--prefix', prefix]);
  try {
    await expect
      .poll(async () => {
        const fleet = await (await page.request.get('/api/devices')).json();
        return fleet.filter((d: { id: string }) => d.id.startsWith(prefix)).length;
      }, { timeout: 90_000 })
      .toBe(1000);
    await page.goto('/');
    await expect(page.getByTestId('link-state')).toHaveText('live');
    const total = Number((await page.getByTestId('fleet-count').textContent())!.split(' of ')[1].split(' ')[0]);
    expect(total).toBeGreaterThanOrEqual(1000);

    // Only a few screens' worth of cards exist, each with a sparkline.
    const rendered = await page.locator('.card').count();
    expect(rendered).toBeLessThan(120);
    await expect(page.locator('.card [data-testid="sparkline"]').first()).toBeVisible();

    // The list is as tall as all its rows; the last device is reachable.
    await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
    const last = page.locator(`[data-device="${prefix}1000"]`);
    await expect(last).toBeVisible();
    expect(await page.locator('.card').count()).toBeLessThan(120);

    // Search narrows to matching devices; the filter and sort keep working.
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.getByTestId('search').fill(`${prefix}09`);
    await expect(page.getByTestId('fleet-count')).toHaveText(new RegExp(`^(100|10) of ${total} devices$`));
    await page.getByTestId('search').fill(`${prefix}0999`);
    await expect(page.locator('.card')).toHaveCount(1);
    await page.getByTestId('search').fill(prefix);
    await page.getByTestId('status-filter').selectOption('online');
    await expect(page.getByTestId('fleet-count')).toHaveText(`1000 of ${total} devices`);
    await page.getByTestId('status-filter').selectOption('offline');
    await expect(page.getByTestId('fleet-count')).toHaveText(`0 of ${total} devices`);
    await page.getByTestId('status-filter').selectOption('all');
    await page.getByTestId('seen-filter').selectOption('stale');
    await expect(page.getByTestId('fleet-count')).toHaveText(`0 of ${total} devices`);
    await page.getByTestId('seen-filter').selectOption('1h');
    await expect(page.getByTestId('fleet-count')).toHaveText(`1000 of ${total} devices`);
    await page.getByTestId('seen-filter').selectOption('any');
    await page.getByTestId('search').fill('');
    await page.getByTestId('sort').selectOption('status');
    await expect(page.locator('.card').first().getByTestId('presence')).toHaveClass(/on/);

    const { scroll, width } = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      width: window.innerWidth,
    }));
    expect(scroll).toBeLessThanOrEqual(width);
    await page.screenshot({ path: info.outputPath(`fleet-${info.project.name}.png`) });
  } finally {
    sim.kill('SIGINT');
  }
});
