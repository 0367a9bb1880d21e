// Sign-in with the hospital's identity provider (OpenID Connect): the sign-in page's
// "Sign in with <display>" buttons, and Ward's own TOTP step after the IdP for a provider
// with mfa = "ward". The flow itself runs on the gateway (/api/v1/sso/...): these are plain
// links to it, so no token ever reaches this page's script.
import { h, api, field } from './util.js';

// The hash route to come back to after signing in, as the gateway takes it (a plain path).
function thenRoute(next) {
  const path = (next || '').replace(/^#/, '').split('?')[0];
  return /^\/[A-Za-z0-9\/._~-]{0,199}$/.test(path) ? path : '/';
}

// The providers and any TOTP step this browser owes: {providers: [...], totp: {...}|null}.
export async function ssoState() {
  try {
    const r = await fetch('/api/v1/sso', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (!r.ok) return { providers: [], totp: null };
    const d = await r.json();
    return { providers: Array.isArray(d.providers) ? d.providers : [], totp: d.totp || null };
  } catch (e) {
    return { providers: [], totp: null };
  }
}

// A section of "Sign in with <display>" links (null when no provider is configured).
export function ssoButtons(providers, next) {
  if (!providers.length) return null;
  const then = encodeURIComponent(thenRoute(next));
  return h('section', { id: 'sso', class: 'sso', 'aria-label': 'Sign in with your organisation' },
    h('p', { class: 'muted' }, 'With your hospital account:'),
    providers.map((p) => h('a', {
      id: 'sso-' + p.name,
      class: 'button primary sso-button',
      href: '/api/v1/sso/' + encodeURIComponent(p.name) + '/start?then=' + then,
    }, 'Sign in with ' + p.display)),
    h('p', { class: 'muted or' }, 'or with a Ward user:'));
}

// The TOTP form after the IdP (mfa = "ward"); done(whoami, then) is called once signed in.
export function ssoTotpForm(waiting, done) {
  const code = h('input', { id: 'sso-totp', name: 'totp', inputmode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9]{6,8}', required: true });
  const err = h('p', { id: 'sso-totp-error', role: 'alert', class: 'error', hidden: true });
  const submit = h('button', { id: 'sso-totp-submit', type: 'submit', class: 'primary' }, 'Continue');
  const form = h('form', { id: 'sso-totp-form', class: 'card signin', novalidate: true },
    h('h1', null, 'One more step'),
    h('p', null, 'Your identity provider signed you in as ', h('strong', null, waiting.user),
      '. Ward also asks for the code from your Ward authenticator app.'),
    field('TOTP code', code), err, submit);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    if (!/^[0-9]{6,8}$/.test(code.value.trim())) {
      err.textContent = 'Enter the 6-digit code from your Ward authenticator.';
      err.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      const me = await api('/sso/totp', 'POST', { code: code.value.trim() });
      done(me, me.then);
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
      code.value = '';
      code.focus();
    } finally {
      submit.disabled = false;
    }
  });
  setTimeout(() => code.focus(), 0);
  return form;
}
