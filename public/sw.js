// Sightline's service worker: when the server cannot be reached, a page
// load shows a small page that retries by itself, instead of the
// browser's own error page. It touches page loads (navigations) only;
// data, the app's assets and the live socket always go to the network.
//
// Browsers run service workers only in a secure context: over HTTPS, or on
// localhost. Elsewhere none is installed and nothing here changes.

const CACHE = 'sightline-offline-v1';
const OFFLINE = '/pkg/offline.html';
const KEEP = [OFFLINE, '/pkg/offline.js', '/pkg/main.css', '/pkg/favicon.svg'];

self.addEventListener('install', (event) => {
  // `reload` skips the HTTP cache, so an upgrade caches the new files.
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(KEEP.map((url) => new Request(url, { cache: 'reload' }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n !== CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

/** A proxy in front of stopped instances answers with one of these. */
const UNREACHABLE = new Set([502, 503, 504]);

async function offline() {
  const cache = await caches.open(CACHE);
  const page = await cache.match(OFFLINE);
  return page ?? new Response('The Sightline server cannot be reached.', {
    status: 503,
    headers: { 'Content-Type': 'text/plain; charset=utf-8' },
  });
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET') {
    return;
  }
  if (request.mode === 'navigate') {
    event.respondWith(
      fetch(request)
        .then((response) => (UNREACHABLE.has(response.status) ? offline() : response))
        .catch(() => offline()),
    );
    return;
  }
  // The offline page's own assets come from the network while it answers,
  // and from the copy kept at install when it does not.
  const url = new URL(request.url);
  if (url.origin === self.location.origin && KEEP.includes(url.pathname)) {
    event.respondWith(fetch(request).catch(() => caches.match(url.pathname)));
  }
});
