// The console's only script: the live traffic table asks the broker for its rows again every
// few seconds (same origin, the session cookie goes along). Everything else is plain forms.
"use strict";
(function () {
  const rows = document.querySelector("[data-poll]");
  if (!rows) return;
  const every = Number(rows.dataset.pollMs) || 2000;
  async function refresh() {
    try {
      const answer = await fetch(rows.dataset.poll, { credentials: "same-origin" });
      if (answer.redirected || !answer.ok) return;  // logged out: the next click logs in
      rows.innerHTML = await answer.text();  // the broker's own escaped HTML
    } catch (e) { /* the broker restarts: try again next time */ }
  }
  setInterval(refresh, every);
})();
