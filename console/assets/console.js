// jetmail console: the little that needs a script. The pages work without
// it; it refreshes the live parts, keeps relative times current, and adds
// a few conveniences. It never builds HTML from data: the live parts are
// fragments the server rendered (and escaped) with html/template.
(function () {
  'use strict';

  // Relative times: <time datetime=…> shows "3 min ago"; its title the
  // absolute time in the browser's zone.
  function rel(t, now) {
    var d = Math.round((now - t) / 1000), future = d < 0, s;
    if (future) d = -d;
    if (d < 5) return 'just now';
    if (d < 60) s = d + ' s';
    else if (d < 3600) s = Math.floor(d / 60) + ' min';
    else if (d < 172800) s = Math.floor(d / 3600) + ' h';
    else s = Math.floor(d / 86400) + ' d';
    return future ? 'in ' + s : s + ' ago';
  }
  function times(root) {
    var now = Date.now();
    root.querySelectorAll('time[datetime]').forEach(function (el) {
      var t = Date.parse(el.getAttribute('datetime'));
      if (isNaN(t)) return;
      el.textContent = rel(t, now);
      if (!el.dataset.local) {
        el.title = new Date(t).toLocaleString() + ' (' + el.title + ')';
        el.dataset.local = '1';
      }
    });
  }

  // Live parts: an element with data-live="/ui/live/…" is replaced every
  // data-every milliseconds with what the server renders for it, while the
  // tab is visible, until a fragment says data-live-stop.
  function live(el) {
    var every = parseInt(el.dataset.every, 10) || 3000, timer = null, busy = false;
    function schedule(ms) { clearTimeout(timer); timer = setTimeout(run, ms); }
    function run() {
      if (document.hidden || busy) { schedule(every); return; }
      busy = true;
      fetch(el.dataset.live, { credentials: 'same-origin', cache: 'no-store', headers: { 'Accept': 'text/html' } })
        .then(function (r) {
          if (r.status === 401) { location.reload(); throw new Error('logged out'); }
          if (!r.ok) throw new Error('status ' + r.status);
          return r.text();
        })
        .then(function (html) {
          var open = [];
          el.querySelectorAll('details[open][id]').forEach(function (d) { open.push(d.id); });
          el.innerHTML = html;
          open.forEach(function (id) { var d = document.getElementById(id); if (d) d.open = true; });
          el.classList.remove('stale');
          times(el);
          busy = false;
          if (!el.querySelector('[data-live-stop]')) schedule(every);
        })
        .catch(function () { el.classList.add('stale'); busy = false; schedule(every * 2); });
    }
    if (!el.querySelector('[data-live-stop]')) schedule(every);
    document.addEventListener('visibilitychange', function () { if (!document.hidden) schedule(50); });
  }

  function init() {
    times(document);
    setInterval(function () { times(document); }, 10000);
    document.querySelectorAll('[data-live]').forEach(live);
    // Filters apply as soon as they change.
    document.querySelectorAll('select[data-autosubmit]').forEach(function (s) {
      s.addEventListener('change', function () { s.form.requestSubmit ? s.form.requestSubmit() : s.form.submit(); });
    });
    // "/" goes to the search box.
    document.addEventListener('keydown', function (e) {
      var t = document.activeElement && document.activeElement.tagName;
      if (e.key !== '/' || e.ctrlKey || e.metaKey || e.altKey || /INPUT|TEXTAREA|SELECT/.test(t)) return;
      var q = document.querySelector('input[name=q]');
      if (q) { e.preventDefault(); q.focus(); q.select(); }
    });
    // A form is sent once: its button waits for the answer.
    document.addEventListener('submit', function (e) {
      var b = e.submitter;
      if (b && e.target.method === 'post') setTimeout(function () { b.disabled = true; b.classList.add('busy'); }, 0);
    });
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init); else init();
})();
