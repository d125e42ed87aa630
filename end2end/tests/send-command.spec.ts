// Commands from the device page to a real simulated device: the operator
// sends `set_interval`, the command's state reaches "answered" without a
// reload, and the live chart then grows at the new rate. The device is
// `sightline simulate`, a real rumqttc client of the server's broker.
import { test, expect } from './fixtures';
import { spawn } from 'child_process';
import * as path from 'path';

const bin = process.env.SIGHTLINE_BIN ?? path.resolve(__dirname, '../../target/release/sightline');

// Sending commands is what the operator role is for.
test.use({ role: 'operator' });

test('set_interval from the device page is answered live and changes the chart rate', async ({ page }, info) => {
  const mqtt = String(info.project.metadata.mqttPort as number);
  const prefix = `cmd-${info.project.name}-`;
  const id = `${prefix}0001`;
  const sim = spawn(bin, ['simulate', '--broker', `127.0.0.1:${mqtt}`, '--devices', '1', '--prefix', prefix, '--rate', '1'], {
    stdio: 'ignore',
  });
  try {
    await expect.poll(async () => (await page.request.get(`/api/devices/${id}`)).status(), { timeout: 15_000 }).toBe(200);
    await page.goto(`/devices/${id}?range=5m`);
    await expect(page.getByTestId('link-state')).toHaveText('live');
    await expect(page.locator('[data-metric="temp"] [data-testid="chart"]')).toHaveClass(/ready/);

    // How long the temperature chart takes to gain `n` points; nothing
    // slides out of the 5-minute window, since the device is seconds old.
    const chart = page.locator('[data-metric="temp"] [data-testid="chart"]');
    const timeToGain = async (n: number) => {
      const before = Number(await chart.getAttribute('data-points'));
      const started = Date.now();
      await expect
        .poll(async () => Number(await chart.getAttribute('data-points')) - before, { timeout: 20_000, intervals: [50] })
        .toBeGreaterThanOrEqual(n);
      return Date.now() - started;
    };
    // One reading a second: three new points need at least two intervals.
    const slow = await timeToGain(3);
    expect(slow).toBeGreaterThanOrEqual(1_800);

    // Invalid params are refused with the reason, and nothing is sent.
    await page.getByTestId('command-name').fill('set_interval');
    await page.getByTestId('command-params').fill('{ms: 250');
    await page.getByTestId('command-send').click();
    await expect(page.getByTestId('command-error')).toContainText('not valid JSON');
    await expect(page.getByTestId('command')).toHaveCount(0);

    await page.getByTestId('command-params').fill('{"ms": 250}');
    await page.getByTestId('command-send').click();
    const row = page.getByTestId('command').first();
    await expect(row.getByTestId('command-state')).toHaveText('answered');
    await expect(row.getByTestId('command-outcome')).toContainText('"interval_ms":250');
    await expect(page.getByTestId('command-error')).toHaveCount(0);

    // Four readings a second now: eight new points come in about 2 s, where
    // the old rate would need 7 s or more.
    const fast = await timeToGain(8);
    expect(fast).toBeLessThan(5_000);

    // Re-send from the history: a second command, answered too.
    await row.getByTestId('command-resend').click();
    await expect(page.getByTestId('command')).toHaveCount(2);
    await expect(page.getByTestId('command').first().getByTestId('command-state')).toHaveText('answered');

    // The panel fits the screen: nothing scrolls sideways, on the phone too.
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    expect(overflow).toBeLessThanOrEqual(0);

    // What was shown live is what is stored.
    await page.reload();
    await expect(page.getByTestId('command')).toHaveCount(2);
    await expect(page.getByTestId('command').nth(1).getByTestId('command-state')).toHaveText('answered');
  } finally {
    sim.kill('SIGTERM');
  }
});
