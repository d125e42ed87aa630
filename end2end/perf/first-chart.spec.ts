// Time to first chart for the 1 y view of a year of 1-minute readings:
// from navigation to the ECharts canvas having drawn the data, in a fresh
// browser context each run (no cache), median of 7. Also reports how long
// the browser's own history request (in its time zone and at its chart
// width) took, which replaces the server-rendered first draw.
import { test, expect } from '@playwright/test';

const RUNS = 7;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

test('time to first chart, 1 y view', async ({ browser }, info) => {
  test.skip(!process.env.SIGHTLINE_PERF_URL, 'run through scripts/bench-chart.sh');
  const first: number[] = [];
  const request: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const context = await browser.newContext({
      ...info.project.use,
      timezoneId: 'Europe/Berlin',
    });
    const page = await context.newPage();
    // Signed in first (scripts/bench-chart.sh makes the account), so the
    // timing starts at the page itself.
    const signedIn = await page.request.post('/login', {
      form: { name: 'perf', password: 'perf-viewer-password', next: '/' },
      headers: { Origin: process.env.SIGHTLINE_PERF_URL as string },
      maxRedirects: 0,
    });
    expect(signedIn.headers()['location']).toBe('/');
    await page.goto('/devices/history-bench?range=1y', { waitUntil: 'commit' });
    await page.waitForSelector('[data-metric="temp"] .chart-box.ready', { timeout: 30_000 });
    first.push(await page.evaluate(() => performance.now()));
    await page.waitForLoadState('networkidle');
    const history = await page.evaluate(() =>
      performance
        .getEntriesByType('resource')
        .filter((e) => e.name.includes('/_app/history'))
        .map((e) => (e as PerformanceResourceTiming).responseEnd - e.startTime),
    );
    if (history.length > 0) request.push(history[history.length - 1]);
    await expect(page.locator('[data-metric="temp"] [data-testid="chart"]')).not.toHaveAttribute('data-points', '0');
    await context.close();
  }
  const line =
    `${info.project.name}: time to first chart (1 y, 525,600 readings) median ${median(first).toFixed(0)} ms ` +
    `[${first.map((t) => t.toFixed(0)).join(', ')}]; browser's history request median ` +
    `${request.length ? median(request).toFixed(0) : 'n/a'} ms`;
  console.log(line);
  info.annotations.push({ type: 'figure', description: line });
});
