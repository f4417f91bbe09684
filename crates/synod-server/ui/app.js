// Synod's console: one page per view, drawn from the JSON gateway (/v3/...) and from
// GET /synod/v1/cluster, with the caller's token as any client sends it. No framework: the
// views are small, and a console that must work at 3 a.m. is better without a build step.

const main = document.getElementById('main');
const state = { token: sessionStorage.getItem('synod-token') || '', user: sessionStorage.getItem('synod-user') || '' };

// ---------- bytes and numbers ----------

const encoder = new TextEncoder();
const strictText = new TextDecoder('utf-8', { fatal: true });

function toBase64(text) {
  let binary = '';
  for (const byte of encoder.encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function fromBase64(b64) {
  const binary = atob(b64 || '');
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// Text if the bytes are UTF-8 without control characters other than whitespace; else null.
function asText(bytes) {
  try {
    const text = strictText.decode(bytes);
    return /[\u0000-\u0008\u000e-\u001f\u007f]/.test(text) ? null : text;
  } catch {
    return null;
  }
}

const keyText = (b64) => { const bytes = fromBase64(b64); return asText(bytes) ?? hex(bytes); };
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
const num = (value) => Number(value || 0);
const idHex = (id) => (id ? BigInt.asUintN(64, BigInt(id)).toString(16) : '0');

// The first key after every key that starts with `prefix` (etcd's prefix range end).
function prefixEnd(prefix) {
  const bytes = encoder.encode(prefix);
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i] < 0xff) {
      const end = bytes.slice(0, i + 1);
      end[i] += 1;
      let binary = '';
      for (const byte of end) binary += String.fromCharCode(byte);
      return btoa(binary);
    }
  }
  return btoa('\0');
}

function size(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = num(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

// ---------- talking to the member ----------

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

const needsLogin = (message) => /user name is empty|invalid auth token|auth store is old|authentication failed/i.test(message);

async function request(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (state.token) headers.Authorization = state.token;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = answer.message || answer.error || response.statusText;
    if (needsLogin(message)) signIn();
    throw new ApiError(message, response.status);
  }
  return answer;
}

const v3 = (path, body = {}) => request('POST', `/v3/${path}`, body);

async function signIn() {
  const dialog = document.getElementById('login');
  if (!dialog.open) dialog.showModal();
}

document.getElementById('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const error = document.getElementById('login-error');
  try {
    state.token = '';
    const answer = await v3('auth/authenticate', { name: form.get('name'), password: form.get('password') });
    state.token = answer.token;
    state.user = form.get('name');
    sessionStorage.setItem('synod-token', state.token);
    sessionStorage.setItem('synod-user', state.user);
    error.textContent = '';
    document.getElementById('login').close();
    showWho();
    route();
  } catch (failure) {
    error.textContent = failure.message;
  }
});

// What the signed-in user may write, from their own user and roles (which any user may read):
// null when no one is signed in (auth off: the member refuses nothing), else root or the
// permissions of their roles.
let grants = null;

async function loadGrants() {
  grants = null;
  if (!state.user) return;
  const roles = (await v3('auth/user/get', { name: state.user })).roles || [];
  if (roles.includes('root')) {
    grants = { root: true, perms: [] };
    return;
  }
  const perms = [];
  for (const role of roles) perms.push(...((await v3('auth/role/get', { role })).perm || []));
  grants = { root: false, perms: perms.filter((p) => p.permType === 'WRITE' || p.permType === 'READWRITE') };
}

const isAdmin = () => !grants || grants.root;

// Whether a write of `keyB64` would pass the member's check (a key, a range, or from-key "\0").
function mayWrite(keyB64) {
  if (isAdmin()) return true;
  const key = atob(keyB64);
  return grants.perms.some((p) => {
    const from = atob(p.key || '');
    const end = atob(p.range_end || '');
    if (!end) return key === from;
    return key >= from && (end === '\0' || key < end);
  });
}

function showWho() {
  const who = document.getElementById('who');
  who.replaceChildren();
  if (!state.user) return;
  who.append(`Signed in as ${state.user} `, button('Sign out', () => {
    state.token = state.user = '';
    sessionStorage.clear();
    showWho();
    route();
  }));
}

// ---------- building the page ----------

// el('tag.class', {attributes}, children...): a small DOM builder; text is never parsed as HTML.
function el(spec, attributes = {}, ...children) {
  const [tag, ...classes] = spec.split('.');
  const node = document.createElement(tag);
  if (classes.length) node.className = classes.join(' ');
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, '');
    else if (value !== false && value != null) node.setAttribute(name, value);
  }
  node.append(...children.flat().filter((child) => child != null && child !== false));
  return node;
}

const button = (label, onclick, attributes = {}) => el('button', { type: 'button', onclick, ...attributes }, label);

function table(caption, headings, rows) {
  return el('div.scroll', {},
    el('table', {},
      el('caption', {}, caption),
      el('thead', {}, el('tr', {}, headings.map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows)));
}

function problem(failure) {
  return el('p.error', { role: 'alert' }, failure.message || String(failure));
}

// Runs `work` every so often while `view` is on the page.
function every(view, milliseconds, work) {
  const timer = setInterval(() => (view.isConnected ? work() : clearInterval(timer)), milliseconds);
}

// ---------- cluster ----------

const leaderHistory = []; // [{ at, leader, name, term }]: what this page has seen, newest last

async function clusterPage(view) {
  const summary = el('section', { 'aria-live': 'polite' });
  const members = el('section');
  const history = el('section');
  view.append(el('h1', {}, 'Cluster'), summary, members, history);
  async function refresh() {
    let answer;
    try {
      answer = await request('GET', '/synod/v1/cluster');
    } catch (failure) {
      summary.replaceChildren(problem(failure));
      return;
    }
    const all = answer.members.sort((a, b) => a.name.localeCompare(b.name));
    const statuses = all.filter((m) => m.status);
    const leaderId = statuses.map((m) => m.status.leader).find((id) => id && id !== '0') || '0';
    const leader = all.find((m) => m.id === leaderId);
    const term = Math.max(0, ...statuses.map((m) => num(m.status.raftTerm)));
    const leaderIndex = leader?.status ? num(leader.status.raftIndex) : Math.max(0, ...statuses.map((m) => num(m.status.raftIndex)));
    const alarms = statuses.flatMap((m) => (m.status.errors || []).map((e) => `${m.name}: ${e}`));
    const last = leaderHistory[leaderHistory.length - 1];
    if (!last || last.leader !== leaderId) {
      leaderHistory.push({ at: new Date(), leader: leaderId, name: leader?.name || 'none', term });
      if (leaderHistory.length > 50) leaderHistory.shift();
    }
    const healthy = leaderId !== '0' && statuses.length === all.length && alarms.length === 0;
    summary.replaceChildren(
      el('p', {},
        el(`span.badge.${healthy ? 'ok' : 'bad'}`, {}, healthy ? 'healthy' : 'degraded'), ' ',
        'Leader: ', el('strong', { id: 'leader-name' }, leader ? leader.name : 'none'),
        ` · term ${term} · cluster ${idHex(answer.cluster_id)} · ${all.length} members`),
      ...(alarms.length ? [el('ul.error', {}, alarms.map((a) => el('li', {}, a)))] : []));
    const rows = all.map((m) => {
      const s = m.status;
      const role = m.is_learner ? 'learner' : m.id === leaderId ? 'leader' : 'follower';
      const cells = s
        ? [s.raftTerm || '0', s.raftIndex || '0', s.raftAppliedIndex || '0',
          String(Math.max(0, leaderIndex - num(s.raftAppliedIndex))), size(s.dbSize), size(s.dbSizeInUse),
          s.version, m.leader_changes, (s.errors || []).join(', ') || 'none']
        : [el('span.error', {}, m.error || 'no answer'), '', '', '', '', '', '', '', ''];
      const move = role === 'follower' && isAdmin()
        ? button('Make leader', async (event) => {
          event.target.disabled = true;
          try { await v3('maintenance/transfer-leadership', { targetID: m.id }); } catch (failure) { alert(failure.message); }
          refresh();
        })
        : null;
      return el('tr', { 'data-member': m.name, 'data-role': role },
        el('th', { scope: 'row', title: (m.client_urls || []).join(' ') }, m.name || '(unstarted)', el('br'), el('small', {}, idHex(m.id))),
        el(`td.role-${role}`, {}, role), cells.map((c) => el('td', {}, c)),
        el('td', {}, move));
    });
    members.replaceChildren(table('Members', ['Member', 'Role', 'Term', 'Raft index', 'Applied', 'Lag', 'DB size',
      'In use', 'Version', 'Leader changes seen', 'Alarms', ''], rows));
    history.replaceChildren(el('h2', {}, 'Leaders seen by this page'),
      el('ol.timeline', {}, leaderHistory.slice().reverse().map((h) =>
        el('li', {}, el('time', { datetime: h.at.toISOString() }, h.at.toLocaleTimeString()), ` ${h.name} (term ${h.term})`))));
  }
  await refresh();
  every(view, 2000, refresh);
}

// ---------- keys ----------

const PAGE = 100;

// The key just after `b64` (the key with a zero byte appended), base64.
function after(b64) {
  return btoa(atob(b64) + '\0');
}

// Up to PAGE children of `prefix` from `start` on: keys, and folders (the next segment up to a
// '/'), each folder skipped over in one step, so a page costs one range per folder, not per key
// below it. Each child goes to `show` as it is found: every range also counts the keys after it,
// as etcd's does, so on a large keyspace a folder costs tens of milliseconds; the page fills in
// as they come and ends after a second. Returns where the next page starts (null at the end).
async function children(prefix, start, show) {
  const found = [];
  const add = (item) => { found.push(item); show(item); };
  const deadline = Date.now() + 1000;
  const end = prefix ? prefixEnd(prefix) : btoa('\0'); // from the first key: etcd's "\0" range
  let from = start || (prefix ? toBase64(prefix) : btoa('\0'));
  while (found.length < PAGE) {
    const answer = await v3('kv/range', { key: from, range_end: end, keys_only: true, limit: PAGE - found.length });
    const kvs = answer.kvs || [];
    let skipped = false;
    for (const kv of kvs) {
      const key = keyText(kv.key);
      const rest = key.slice(prefix.length);
      const slash = rest.indexOf('/');
      if (slash >= 0) {
        const folder = prefix + rest.slice(0, slash + 1);
        add({ folder });
        from = prefixEnd(folder);
        skipped = true;
        break;
      }
      add({ key, kv });
      from = after(kv.key);
    }
    if (!skipped && !answer.more) return null;
    if (Date.now() > deadline) break;
  }
  return from;
}

function keysRoute(params) {
  return `#/keys?prefix=${encodeURIComponent(params.prefix ?? '')}${params.key != null ? `&key=${encodeURIComponent(params.key)}` : ''}`;
}

async function keysPage(view, params) {
  const prefix = params.get('prefix') || '';
  const selected = params.get('key');
  const crumbs = [el('a', { href: keysRoute({ prefix: '' }) }, '(root)')];
  let at = 0;
  while (true) {
    const slash = prefix.indexOf('/', at);
    if (slash < 0) break;
    const folder = prefix.slice(0, slash + 1);
    crumbs.push(' ', el('a', { href: keysRoute({ prefix: folder }) }, prefix.slice(at, slash + 1)));
    at = slash + 1;
  }
  const goTo = el('form.inline', {
    onsubmit: (event) => {
      event.preventDefault();
      location.hash = keysRoute({ prefix: new FormData(event.target).get('prefix') });
    },
  }, el('label', {}, 'Prefix ', el('input', { name: 'prefix', value: prefix, size: 30 })), el('button', { type: 'submit' }, 'Browse'));
  const list = el('ul.tree', { 'aria-label': 'Keys and folders' });
  const more = el('p');
  const detail = el('section.detail', { 'aria-live': 'polite' });
  view.append(el('h1', {}, 'Keys'), goTo, el('nav.crumbs', { 'aria-label': 'Folders' }, crumbs),
    el('div.split', {}, el('section', {}, list, more, isAdmin() || grants.perms.length ? newKeyForm(prefix) : null), detail));
  async function load(start) {
    try {
      more.replaceChildren(el('span', { role: 'status' }, 'Loading…'));
      const next = await children(prefix, start, (item) => list.append(item.folder
        ? el('li.folder', {}, el('a', { href: keysRoute({ prefix: item.folder }) }, item.folder.slice(prefix.length)))
        : el('li.key', {}, el('a', { href: keysRoute({ prefix, key: item.key }), 'aria-current': item.key === selected ? 'true' : false }, item.key.slice(prefix.length) || item.key))));
      if (!start && list.children.length === 0) list.append(el('li', {}, 'No keys under this prefix.'));
      more.replaceChildren(next ? button('More', () => load(next)) : '');
    } catch (failure) {
      more.replaceChildren(problem(failure));
    }
  }
  await Promise.all([load(null), selected != null && showKey(detail, selected, prefix)]);
}

function newKeyForm(prefix) {
  return el('details', {}, el('summary', {}, 'New key'),
    el('form', {
      onsubmit: async (event) => {
        event.preventDefault();
        const form = new FormData(event.target);
        const key = String(form.get('key'));
        try {
          await v3('kv/put', { key: toBase64(key), value: toBase64(String(form.get('value'))) });
          go(keysRoute({ prefix, key }));
        } catch (failure) {
          event.target.append(problem(failure));
        }
      },
    }, el('label', {}, 'Key ', el('input', { name: 'key', value: prefix, required: true })),
    el('label', {}, 'Value ', el('textarea', { name: 'value', rows: 3 })),
    el('button', { type: 'submit' }, 'Put')));
}

function showValue(bytes) {
  const text = asText(bytes);
  if (text === null) return el('pre.value', { 'data-format': 'hex' }, hex(bytes));
  try {
    if (/^\s*[[{]/.test(text)) return el('pre.value', { 'data-format': 'json' }, JSON.stringify(JSON.parse(text), null, 2));
  } catch { /* not JSON: shown as text */ }
  return el('pre.value', { 'data-format': 'text' }, text);
}

async function showKey(detail, key, prefix) {
  let kv;
  try {
    kv = (await v3('kv/range', { key: toBase64(key) })).kvs?.[0];
  } catch (failure) {
    detail.replaceChildren(problem(failure));
    return;
  }
  if (!kv) {
    detail.replaceChildren(el('h2', {}, key), el('p', {}, 'This key does not exist (any more).'));
    return;
  }
  const bytes = fromBase64(kv.value);
  const lease = kv.lease && kv.lease !== '0' ? kv.lease : null;
  const editor = el('textarea', { rows: 6, 'aria-label': 'New value' }, asText(bytes) ?? '');
  const outcome = el('p', { role: 'status' });
  async function write(body, done) {
    try {
      const answer = await v3(...body);
      // A txn that failed its compare answers without `succeeded` (false is left out).
      if (body[0] === 'kv/txn' && answer.succeeded !== true) {
        outcome.replaceChildren(el('span.error', {}, `Not written: the key changed since revision ${kv.mod_revision}. Reload to see it.`));
        return;
      }
      done();
    } catch (failure) {
      outcome.replaceChildren(problem(failure));
    }
  }
  const reload = () => go(keysRoute({ prefix, key }));
  detail.replaceChildren(
    el('h2', {}, key),
    el('dl.facts', {},
      el('dt', {}, 'Created at revision'), el('dd', {}, kv.create_revision),
      el('dt', {}, 'Modified at revision'), el('dd', {}, kv.mod_revision),
      el('dt', {}, 'Version'), el('dd', {}, kv.version || '0'),
      el('dt', {}, 'Lease'), el('dd', {}, lease ? el('a', { href: `#/leases?id=${lease}` }, idHex(lease)) : 'none'),
      el('dt', {}, 'Size'), el('dd', {}, size(bytes.length))),
    showValue(bytes),
    !mayWrite(kv.key) ? el('p.readonly', {}, 'Read-only: your roles do not let you write this key.') :
    el('details', {}, el('summary', {}, 'Edit'), editor, el('div.actions', {},
      button('Save if unchanged', () => write(['kv/txn', {
        compare: [{ key: kv.key, target: 'MOD', result: 'EQUAL', mod_revision: kv.mod_revision }],
        success: [{ request_put: { key: kv.key, value: toBase64(editor.value), lease: lease || '0' } }],
      }], reload)),
      button('Save', () => write(['kv/put', { key: kv.key, value: toBase64(editor.value), lease: lease || '0' }], reload)),
      button('Delete', () => {
        if (confirm(`Delete ${key}?`)) write(['kv/deleterange', { key: kv.key }], () => go(keysRoute({ prefix })));
      }, { class: 'danger' })), outcome),
    await historyOf(kv));
}

// Earlier versions, read at the revision before each change until compaction cuts the history.
async function historyOf(kv) {
  const versions = [kv];
  let failure = null;
  while (versions.length < 20) {
    const before = num(versions[versions.length - 1].mod_revision) - 1;
    if (before < 1) break;
    try {
      const older = (await v3('kv/range', { key: kv.key, revision: String(before) })).kvs?.[0];
      if (!older) break;
      versions.push(older);
    } catch (error) {
      failure = error;
      break;
    }
  }
  const pick = (name, index) => el('select', { name, 'aria-label': name === 'a' ? 'Older version' : 'Newer version' },
    versions.map((v, i) => el('option', { value: i, selected: i === index }, `revision ${v.mod_revision} (version ${v.version})`)));
  const older = pick('a', Math.min(1, versions.length - 1));
  const newer = pick('b', 0);
  const output = el('div.diff');
  const draw = () => output.replaceChildren(diff(versions[older.value], versions[newer.value]));
  older.addEventListener('change', draw);
  newer.addEventListener('change', draw);
  draw();
  return el('section', {}, el('h3', {}, 'History'),
    el('p', {}, `${versions.length} version(s) read`, failure ? ` (older ones: ${failure.message})` : ''),
    el('div.actions', {}, older, ' → ', newer), output);
}

// A line diff by longest common subsequence of the values as shown (JSON pretty-printed), cut
// at 400 lines.
function diff(a, b) {
  const lines = (kv) => showValue(fromBase64(kv.value)).textContent.split('\n').slice(0, 400);
  const x = lines(a);
  const y = lines(b);
  const lcs = Array.from({ length: x.length + 1 }, () => new Uint16Array(y.length + 1));
  for (let i = x.length - 1; i >= 0; i--) {
    for (let j = y.length - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < x.length || j < y.length) {
    if (i < x.length && j < y.length && x[i] === y[j]) { out.push(el('span.same', {}, `  ${x[i]}\n`)); i++; j++; }
    else if (i < x.length && (j >= y.length || lcs[i + 1][j] >= lcs[i][j + 1])) { out.push(el('del', {}, `- ${x[i]}\n`)); i++; }
    else { out.push(el('ins', {}, `+ ${y[j]}\n`)); j++; }
  }
  return el('pre', { 'aria-label': `Changes from revision ${a.mod_revision} to ${b.mod_revision}` }, out);
}

// ---------- watch ----------

async function watchPage(view, params) {
  const prefix = params.get('prefix') || '';
  const form = el('form.inline', {},
    el('label', {}, 'Prefix ', el('input', { name: 'prefix', value: prefix, size: 30 })),
    el('label', {}, 'From revision ', el('input', { name: 'start', type: 'number', min: 0, size: 8, value: params.get('start') || '' })),
    el('button', { type: 'submit' }, 'Watch'));
  const status = el('p', { role: 'status' });
  const pause = button('Pause', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
    if (!paused) { held.forEach(show); held = []; }
    tell();
  }, { 'aria-pressed': 'false' });
  const rows = el('tbody', { id: 'events' });
  view.append(el('h1', {}, 'Watch'), form, el('div.actions', {}, pause), status,
    el('div.scroll', {}, el('table', {}, el('caption', {}, 'Events, newest first'),
      el('thead', {}, el('tr', {}, ['Revision', 'Event', 'Key', 'Value'].map((h) => el('th', { scope: 'col' }, h)))), rows)));
  let paused = false;
  let held = [];
  let seen = 0;
  const tell = () => status.textContent = `${seen} event(s)${paused ? `, ${held.length} held while paused` : ''}; watching ${prefix ? `“${prefix}”` : 'every key'}`;
  const show = (event) => {
    const kv = event.kv || {};
    const bytes = fromBase64(kv.value);
    rows.prepend(el('tr', {}, el('td', {}, kv.mod_revision), el('td', {}, event.type || 'PUT'), el('td', {}, keyText(kv.key)),
      el('td', {}, event.type === 'DELETE' ? '' : (asText(bytes) ?? hex(bytes)).slice(0, 200))));
    while (rows.children.length > 1000) rows.lastChild.remove();
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    location.hash = `#/watch?prefix=${encodeURIComponent(data.get('prefix'))}&start=${encodeURIComponent(data.get('start'))}`;
  });
  const abort = new AbortController();
  window.addEventListener('hashchange', () => abort.abort(), { once: true });
  const create = { key: toBase64(prefix || '\0'), range_end: prefix ? prefixEnd(prefix) : toBase64('\0') };
  if (params.get('start')) create.start_revision = params.get('start');
  tell();
  try {
    const headers = { 'Content-Type': 'application/json' };
    if (state.token) headers.Authorization = state.token;
    const response = await fetch('/v3/watch', { method: 'POST', headers, body: JSON.stringify({ create_request: create }), signal: abort.signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = JSON.parse(buffer.slice(0, newline));
        buffer = buffer.slice(newline + 1);
        if (line.error) throw new ApiError(line.error.message || 'watch failed');
        const result = line.result || {};
        if (result.created) status.dataset.ready = 'true';
        if (result.canceled) throw new ApiError(result.cancel_reason || `watch canceled (compacted at ${result.compact_revision})`);
        for (const event of result.events || []) {
          seen++;
          if (paused) held.push(event); else show(event);
        }
        tell();
      }
    }
    status.textContent = 'The watch ended; reload the page to start it again.';
  } catch (failure) {
    if (failure.name !== 'AbortError') {
      if (needsLogin(failure.message)) signIn();
      status.replaceChildren(problem(failure));
    }
  }
}

// ---------- leases, locks and elections ----------

async function allLeases() {
  const ids = ((await v3('lease/leases')).leases || []).map((l) => l.ID).slice(0, 500);
  return Promise.all(ids.map((ID) => v3('lease/timetolive', { ID, keys: true }).catch(() => null)))
    .then((answers) => answers.filter((a) => a && num(a.TTL) >= 0));
}

async function leasesPage(view, params) {
  const body = el('div', { 'aria-live': 'polite' });
  view.append(el('h1', {}, 'Leases'), body);
  let leases = [];
  let fetched = 0;
  const draw = () => {
    const elapsed = Math.floor((Date.now() - fetched) / 1000);
    body.replaceChildren(table(`${leases.length} lease(s)`, ['Lease', 'Remaining', 'Granted TTL', 'Keys', ''],
      leases.map((lease) => {
        const keys = (lease.keys || []).map(keyText);
        const remaining = Math.max(0, num(lease.TTL) - elapsed);
        return el('tr', { 'data-lease': idHex(lease.ID), class: params.get('id') === lease.ID ? 'selected' : null },
          el('th', { scope: 'row' }, idHex(lease.ID)),
          el('td', {}, el('span.countdown', {}, `${remaining} s`), el('meter', { min: 0, max: num(lease.grantedTTL) || 1, value: remaining, 'aria-label': 'remaining' })),
          el('td', {}, `${lease.grantedTTL} s`),
          el('td', {}, keys.length ? el('ul.keys', {}, keys.slice(0, 20).map((k) => el('li', {}, el('a', { href: keysRoute({ prefix: '', key: k }) }, k))),
            keys.length > 20 ? el('li', {}, `and ${keys.length - 20} more`) : null) : 'none'),
          el('td', {}, isAdmin() && button('Revoke', async () => {
            if (!confirm(`Revoke lease ${idHex(lease.ID)} and delete its ${keys.length} key(s)?`)) return;
            try { await v3('lease/revoke', { ID: lease.ID }); await load(); } catch (failure) { alert(failure.message); }
          }, { class: 'danger' })));
      })));
  };
  async function load() {
    try {
      leases = await allLeases();
      fetched = Date.now();
      draw();
    } catch (failure) {
      body.replaceChildren(problem(failure));
    }
  }
  await load();
  every(view, 1000, draw);
  every(view, 5000, load);
}

// A lock or election holder is a key `name/<lease in hex>` attached to that lease (etcd's
// concurrency recipes); the holder with the smallest create revision owns the name, and that
// create revision is its fencing token.
async function locksPage(view) {
  const body = el('div', { 'aria-live': 'polite' });
  view.append(el('h1', {}, 'Locks and elections'), body);
  async function load() {
    try {
      const names = new Set();
      for (const lease of await allLeases()) {
        const suffix = `/${idHex(lease.ID)}`;
        for (const key of (lease.keys || []).map(keyText)) {
          if (key.endsWith(suffix)) names.add(key.slice(0, -suffix.length));
        }
      }
      const sections = [];
      for (const name of [...names].sort()) {
        const holders = (await v3('kv/range', {
          key: toBase64(`${name}/`), range_end: prefixEnd(`${name}/`), sort_order: 'ASCEND', sort_target: 'CREATE',
        })).kvs || [];
        sections.push(el('section.lock', { 'data-lock': name }, el('h2', {}, name),
          table(`${holders.length} holder(s) and waiter(s)`, ['', 'Fencing token', 'Lease', 'Value'],
            holders.map((kv, i) => el('tr', {}, el('th', { scope: 'row' }, i === 0 ? 'holds' : `waits (${i})`),
              el('td', {}, kv.create_revision), el('td', {}, idHex(kv.lease)), el('td', {}, keyText(kv.value).slice(0, 200)))))));
      }
      body.replaceChildren(...(sections.length ? sections : [el('p', {}, 'No lock or election is held.')]));
    } catch (failure) {
      body.replaceChildren(problem(failure));
    }
  }
  await load();
  every(view, 3000, load);
}

// ---------- routing ----------

const pages = { cluster: clusterPage, keys: keysPage, watch: watchPage, leases: leasesPage, locks: locksPage };

// Each page draws into a view of its own: a page still loading when another is chosen draws
// into a view no longer shown, and its timers stop.
async function route() {
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  const name = pages[path] ? path : 'cluster';
  for (const link of document.querySelectorAll('nav a[data-page]')) {
    link.toggleAttribute('aria-current', link.dataset.page === name);
  }
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · Synod console`;
  await loadGrants().catch(() => { grants = { root: false, perms: [] }; });
  const view = el('div', { 'data-page': name });
  main.replaceChildren(view);
  await pages[name](view, new URLSearchParams(query || ''));
  view.dataset.loaded = 'true';
}

// Shows `hash`, drawing the page again if it is the one shown.
function go(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

window.addEventListener('hashchange', route);
showWho();
route();
