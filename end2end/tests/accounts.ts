// The accounts every browser-test server starts with, one per role. Kept
// apart from fixtures.ts so that playwright.config.ts can import it.
export const PASSWORDS = {
  admin: 'admin-password-1',
  operator: 'operator-password-1',
  viewer: 'viewer-password-1',
} as const;
export type Role = keyof typeof PASSWORDS;
