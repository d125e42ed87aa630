// Cluster project only (playwright.config.ts): haproxy and nginx in front of
// the instances are killed the way a crash would end them, and come back
// (scripts/cluster.sh starts them again, as systemd would). A simulated
// device behind haproxy and the hydrated page behind nginx reconnect by
// themselves, and the open page goes on charting the device's new readings
// without a reload. (Files run in name order; seed.spec.ts must see an
// empty fleet first.)
import { test, expect } from './fixtures';
import { execFileSync, spawn } from 'child_process';
import * as path from 'path';

const bin = process.env.SIGHTLINE_BIN ?? path.resolve(__dirname, '../../target/release/sightline');

/**
 * SIGKILL to a proxy's master process and its workers. The master is stopped
 * first: a live nginx master forks new workers the moment its old ones die,
 * and those orphans would keep the port and the new nginx out.
 */
function crash(run: string, proxy: 'haproxy' | 'nginx') {
  execFileSync('bash', ['-c', `p="$(cat "${run}/${proxy}.pid")"; kill -STOP "$p"; pkill -KILL -P "$p"; kill -KILL "$p"`]);
}

/** The pid a proxy wrote for itself. */
function pidOf(run: string, proxy: 'haproxy' | 'nginx'): string {
  try {
    return execFileSync('cat', [`${run}/${proxy}.pid`]).toString().trim();
  } catch {
    return '';
  }
}

test('devices and browsers reconnect by themselves when haproxy and nginx die', async ({ page }, info) => {
  test.setTimeout(90_000);
  const mqtt = info.project.metadata.mqttPort as number;
  const run = info.project.metadata.run as string;
  const device = 'relay-0001';
  const sim = spawn(bin, ['simulate', '--broker', `127.0.0.1:${mqtt}`, '--devices', '1', '--rate', '2', '--prefix', 'relay-']);
  try {
    await expect
      .poll(async () => (await page.request.get(`/api/devices/${device}`)).status(), { timeout: 20_000 })
      .toBe(200);
    let sockets = 0;
    page.on('websocket', () => sockets++);
    await page.goto(`/devices/${device}?range=5m`);
    await expect(page.getByTestId('link-state')).toHaveText('live');
    const chart = page.getByTestId('chart').first();
    const points = async () => Number(await chart.getAttribute('data-points'));
    const keepsGrowing = async () => {
      const now = await points();
      await expect.poll(points, { timeout: 15_000 }).toBeGreaterThan(now + 2);
    };
    await keepsGrowing();

    const opened = sockets;
    const haproxy = pidOf(run, 'haproxy');
    const nginx = pidOf(run, 'nginx');
    crash(run, 'haproxy');
    crash(run, 'nginx');
    // New proxies are up (new pids), the page opened a new socket through
    // the new nginx, and it is live again.
    await expect.poll(() => pidOf(run, 'haproxy'), { timeout: 10_000 }).not.toBe(haproxy);
    await expect.poll(() => pidOf(run, 'nginx'), { timeout: 10_000 }).not.toBe(nginx);
    await expect.poll(() => sockets, { timeout: 20_000 }).toBeGreaterThan(opened);
    await expect(page.getByTestId('link-state')).toHaveText('live');
    // New readings only come from the device's new connection through the
    // new haproxy, and reach the page through its new socket.
    await keepsGrowing();
    await expect(page.getByTestId('presence')).toHaveText('online');
  } finally {
    sim.kill('SIGKILL');
  }
});
