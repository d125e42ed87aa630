// Browser tests: the built `sightline` binary, Debian's Chromium, and three
// projects (desktop and phone, each against its own server, and cluster,
// against two instances behind nginx and haproxy), each with an empty
// database so that every run starts from nothing.
import { defineConfig } from '@playwright/test';
import * as os from 'os';
import * as path from 'path';
import { PASSWORDS } from './tests/accounts';

const bin = process.env.SIGHTLINE_BIN ?? path.resolve(__dirname, '../target/release/sightline');
const siteRoot = path.resolve(__dirname, '../target/site');
const scratch = process.env.SIGHTLINE_E2E_DIR ?? path.join(os.tmpdir(), 'sightline-e2e');

/** One server per project: HTTP port, MQTT port and a fresh SQLite file. */
function server(name: string, http: number, mqtt: number) {
  const db = path.join(scratch, `${name}.db`);
  return {
    command:
      `mkdir -p ${scratch} && rm -f ${db} ${db}-wal ${db}-shm && ` +
      // One account per role; fixtures.ts signs in with these passwords.
      Object.entries(PASSWORDS)
        .map(([role, pw]) => `echo ${pw} | ${bin} user add --role ${role} ${role} --database-url "sqlite://${db}?mode=rwc" && `)
        .join('') +
      `exec ${bin} serve ` +
      `--http-addr 127.0.0.1:${http} --mqtt-addr 127.0.0.1:${mqtt} ` +
      `--database-url "sqlite://${db}?mode=rwc" --site-root ${siteRoot} --open-registration ` +
      // timeline.spec.ts imports a day of history as fast as
      // mosquitto_pub sends it, far above the per-device default of 1,000/s.
      `--max-publish-rate 100000`,
    url: `http://127.0.0.1:${http}/api/health`,
    reuseExistingServer: false,
    timeout: 30_000,
    stdout: 'ignore' as const,
    stderr: 'pipe' as const,
  };
}

/**
 * The cluster (scripts/cluster.sh through scripts/e2e-cluster.sh): two
 * instances on PostgreSQL and NATS, devices through haproxy on `mqtt`,
 * browsers through nginx on `http`. Its proxies write their pids to `run`.
 */
const cluster = { http: 3912, mqtt: 18912, run: path.join(scratch, 'cluster') };
const clusterServer = {
  command: path.resolve(__dirname, '../scripts/e2e-cluster.sh'),
  env: {
    HTTP_PORT: String(cluster.http),
    MQTT_PORT: String(cluster.mqtt),
    RUN: cluster.run,
    ACCOUNTS: Object.entries(PASSWORDS)
      .map(([role, pw]) => `${role}=${pw}`)
      .join(' '),
  },
  url: `http://127.0.0.1:${cluster.http}/api/health`,
  reuseExistingServer: false,
  timeout: 60_000,
  // SIGTERM lets the script stop every part it started.
  gracefulShutdown: { signal: 'SIGTERM' as const, timeout: 10_000 },
  stdout: 'ignore' as const,
  stderr: 'pipe' as const,
};

/** Only the cluster project kills its proxies. */
const clusterOnly = 'survives-proxy-restarts.spec.ts';

const chromium = {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
};

export default defineConfig({
  testDir: './tests',
  timeout: 30_000,
  expect: { timeout: 10_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [['list']],
  // SIGHTLINE_E2E_NO_CLUSTER=1 leaves the cluster out, for a quick local
  // run of the desktop and phone projects (`--project desktop`).
  webServer: [
    server('desktop', 3910, 18910),
    server('phone', 3911, 18911),
    ...(process.env.SIGHTLINE_E2E_NO_CLUSTER ? [] : [clusterServer]),
  ],
  use: {
    launchOptions: chromium,
    trace: 'retain-on-failure',
  },
  projects: [
    {
      name: 'desktop',
      // The browsers run in zones with DST, away from the server's UTC, so
      // time zone handling is exercised on every run.
      use: { baseURL: 'http://127.0.0.1:3910', viewport: { width: 1280, height: 800 }, timezoneId: 'Europe/Berlin' },
      testIgnore: clusterOnly,
      metadata: { mqttPort: 18910 },
    },
    {
      name: 'phone',
      use: {
        baseURL: 'http://127.0.0.1:3911',
        timezoneId: 'America/New_York',
        viewport: { width: 390, height: 844 },
        deviceScaleFactor: 3,
        isMobile: true,
        hasTouch: true,
      },
      testIgnore: clusterOnly,
      metadata: { mqttPort: 18911 },
    },
    {
      // The core device-page test through nginx and haproxy, where the
      // page's instance is often not the device's, then the proxies dying.
      name: 'cluster',
      testMatch: ['seed.spec.ts', clusterOnly],
      use: { baseURL: `http://127.0.0.1:${cluster.http}`, viewport: { width: 1280, height: 800 }, timezoneId: 'Asia/Kolkata' },
      metadata: { mqttPort: cluster.mqtt, run: cluster.run },
    },
  ],
});
