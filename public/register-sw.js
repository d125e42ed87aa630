// Installs sw.js, which shows a self-retrying page when a later page load
// cannot reach the server. Browsers allow it only over HTTPS or on
// localhost; elsewhere `serviceWorker` is missing and this does nothing.
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('/pkg/sw.js', { scope: '/' }).catch((e) => {
    console.warn('Sightline: the offline page is not available:', e);
  });
}
