// Approving `ward login --sso` (route #/sso/cli/<poll>): the terminal printed this page's URL and
// a code; the signed-in user compares the code, sees where and when the login started, and
// approves (the gateway issues the terminal's certificate with this browser session's identity)
// or refuses. The router signs the user in first (any sign-in: SSO or password + TOTP).
import { h, fill, api, when, session } from './util.js';

// The page. `r.arg` is `cli/<poll>`; `alive()` is false once the user navigated away.
export async function cliPage(r, alive) {
  const main = document.getElementById('main');
  const poll = r.arg.startsWith('cli/') ? r.arg.slice(4) : '';
  document.title = 'Approve a terminal login — Ward';
  const result = h('p', { id: 'cli-result', role: 'status' });
  main.append(h('div', { class: 'pagehead' }, h('h1', { tabindex: '-1' }, 'Approve a terminal login')));
  if (!/^[A-Za-z0-9_-]{43}$/.test(poll)) {
    main.append(h('div', { class: 'card' }, h('p', { id: 'cli-error', class: 'error', role: 'alert' },
      'This link is not a terminal login: copy the whole URL that ward login --sso printed.')));
    return;
  }
  let d;
  try {
    d = await api('/sso/cli/' + poll);
  } catch (e) {
    if (!alive() || e.status === 401) return;
    main.append(h('div', { class: 'card' }, h('p', { id: 'cli-error', class: 'error', role: 'alert' }, e.message)));
    return;
  }
  if (!alive()) return;
  const me = session.me || {};
  const approve = h('button', { id: 'cli-approve', type: 'button', class: 'primary' },
    'Yes, it matches: sign the terminal in as ' + (me.principal || me.name || 'me'));
  const deny = h('button', { id: 'cli-deny', type: 'button', class: 'danger' }, 'No, it does not match');
  const stateText = h('dd', { id: 'cli-state' }, d.state);
  const decided = (state) => {
    approve.disabled = true;
    deny.disabled = true;
    fill(stateText, state);
  };
  const act = async (what) => {
    approve.disabled = true;
    deny.disabled = true;
    result.classList.remove('error');
    try {
      const a = await api('/sso/cli/' + poll + '/' + what, 'POST', {});
      if (!alive()) return;
      if (what === 'approve') {
        decided('approved');
        fill(result, 'Approved: your terminal is signed in as ' + (a.principal || '') +
          ' until ' + when(new Date(Number(a.not_after_unix) * 1000).toISOString()) + '. You can close this page.');
      } else {
        decided('refused');
        fill(result, 'Refused: the terminal was told the code did not match. If you did not start this login, tell your security team.');
      }
    } catch (e) {
      if (!alive()) return;
      result.classList.add('error');
      fill(result, e.message);
      approve.disabled = d.state !== 'pending';
      deny.disabled = d.state !== 'pending';
    }
  };
  approve.addEventListener('click', () => act('approve'));
  deny.addEventListener('click', () => act('deny'));
  const started = when(d.started);
  main.append(h('section', { class: 'card', 'aria-labelledby': 'cli-question' },
    h('p', null, 'A terminal asks to sign in to Ward as you, with ', h('code', null, 'ward login --sso'), '.'),
    h('dl', { class: 'facts' },
      h('dt', null, 'Code'), h('dd', null, h('strong', null, h('code', { id: 'cli-code' }, d.user_code))),
      h('dt', null, 'From'), h('dd', { id: 'cli-source' }, d.source),
      h('dt', null, 'Started'), h('dd', { id: 'cli-started' }, started),
      h('dt', null, 'Expires'), h('dd', { id: 'cli-expires' }, when(new Date(Number(d.expires_unix) * 1000).toISOString())),
      h('dt', null, 'State'), stateText),
    h('h2', { id: 'cli-question' }, 'Does your terminal show this code?'),
    h('p', { class: 'muted' }, 'Approve only a login you started yourself just now, from that address. ' +
      'Whoever holds the terminal gets your access until the certificate ends.'),
    d.can_approve ? h('div', { class: 'row' }, approve, ' ', deny) : null,
    result));
  if (!d.can_approve) {
    approve.disabled = true;
    deny.disabled = true;
  }
}
