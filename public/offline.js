// The offline page's retry: asks the server's health check, waiting a
// little longer after each failure (2 s, doubling to 30 s), and reloads
// the page the operator asked for once the server answers.
(() => {
  const status = () => document.querySelector('[data-testid="offline-status"]');
  let wait = 2000;
  let timer = null;
  let countdown = null;

  function say(text) {
    const el = status();
    if (el) el.textContent = text;
  }

  async function attempt() {
    clearTimeout(timer);
    clearInterval(countdown);
    say('Trying to reach the server…');
    try {
      const response = await fetch('/api/health', { cache: 'no-store' });
      if (response.ok) {
        say('The server answered; loading the page…');
        location.reload();
        return;
      }
    } catch (_) {
      // Unreachable: try again later.
    }
    schedule();
  }

  function schedule() {
    let left = Math.round(wait / 1000);
    say(`Still unreachable. Trying again in ${left} s.`);
    countdown = setInterval(() => {
      left -= 1;
      if (left > 0) say(`Still unreachable. Trying again in ${left} s.`);
    }, 1000);
    timer = setTimeout(attempt, wait);
    wait = Math.min(wait * 2, 30000);
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.getElementById('retry')?.addEventListener('click', () => {
      wait = 2000;
      attempt();
    });
    schedule();
  });
})();
