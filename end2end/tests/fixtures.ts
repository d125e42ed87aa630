// Signing in for the browser tests. Each server gets the accounts
// `admin`, `operator` and `viewer` (see playwright.config.ts); a test picks
// one with `test.use({ role })`, and its page is signed in through the real
// sign-in endpoint before the test starts.
import { test as base, expect, Page } from '@playwright/test';
import { PASSWORDS, Role } from './accounts';

export { PASSWORDS, Role };

/** Signs `page`'s browser context in as `role` by posting the sign-in form. */
export async function signIn(page: Page, role: Role) {
  const origin = base.info().project.use.baseURL as string;
  const r = await page.request.post('/login', {
    form: { name: role, password: PASSWORDS[role], next: '/' },
    headers: { Origin: origin },
    maxRedirects: 0,
  });
  expect(r.status(), 'sign-in redirects').toBe(303);
  expect(r.headers()['location'], 'sign-in succeeded').toBe('/');
}

export const test = base.extend<{ role: Role | null }>({
  role: ['admin', { option: true }],
  page: async ({ page, role }, use) => {
    if (role) await signIn(page, role);
    await use(page);
  },
});

export { expect };
