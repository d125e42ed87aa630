// Browser tests: the built `sightline` binary, Debian's Chromium, and two
// projects (desktop and phone), each against its own server with an empty
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
  webServer: [server('desktop', 3910, 18910), server('phone', 3911, 18911)],
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
      metadata: { mqttPort: 18911 },
    },
  ],
});
