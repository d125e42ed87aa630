// An axe-core scan of the sign-in, fleet, device, admin and account pages, in light
// and dark, each hydrated and live: no serious or critical violation of
// WCAG 2.1 A and AA may remain.
import { Page } from '@playwright/test';
import AxeBuilder from '@axe-core/playwright';
import { test, expect } from './fixtures';
import { execFileSync } from 'child_process';

/** Serious and critical violations on the page, one line each. */
async function violations(page: Page): Promise<string[]> {
  const result = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']).analyze();
  return result.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).slice(0, 5).join(', ')}`);
}

for (const scheme of ['light', 'dark'] as const) {
  test.describe(`${scheme} scheme`, () => {
    test(`the signed-in pages pass axe (${scheme})`, async ({ page }, info) => {
      await page.emulateMedia({ colorScheme: scheme });
      const mqtt = info.project.metadata.mqttPort as number;
      const id = `Axe-${info.project.name}`;
      execFileSync('mosquitto_pub', ['-p', String(mqtt), '-q', '1', '-t', `sensor/${id}`, '-m', '{"temp":21.5,"hum":40}']);
      await expect.poll(async () => (await page.request.get(`/api/devices/${id}`)).status()).toBe(200);
      const found: Record<string, string[]> = {};
      for (const path of ['/', `/devices/${id}`, '/admin', '/account']) {
        await page.goto(path);
        await expect(page.locator('main')).toBeVisible();
        if (path === '/admin') await expect(page.getByTestId('accounts')).toBeVisible();
        else if (path === '/account') await expect(page.getByTestId('add-token')).toBeVisible();
        else await expect(page.getByTestId('link-state')).toHaveText('live');
        found[path] = await violations(page);
      }
      expect(found).toEqual({ '/': [], [`/devices/${id}`]: [], '/admin': [], '/account': [] });
    });
  });

  test.describe(`${scheme} scheme, signed out`, () => {
    test.use({ role: null });
    test(`the sign-in page passes axe (${scheme})`, async ({ page }) => {
      await page.emulateMedia({ colorScheme: scheme });
      await page.goto('/login?error=invalid&name=someone');
      await expect(page.getByTestId('login-error')).toBeVisible();
      expect(await violations(page)).toEqual([]);
    });
  });
}
