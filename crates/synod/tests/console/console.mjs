// Drives Synod's web console in Debian's headless Chromium, through Playwright, against a real
// cluster started by the e2e test `console::console_in_chromium`, while etcdctl changes the
// cluster underneath. Each step waits for the page to show what etcdctl did, and saves a
// screenshot of the page.
//
// Environment: SYNOD_URL (a member's client URL), ETCDCTL_ENDPOINTS (every member's),
// SCREENSHOTS (a directory), CHROMIUM (default /usr/bin/chromium).

import { chromium } from 'playwright-core';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.SYNOD_URL;
const shots = process.env.SCREENSHOTS;
const etcdctlEnv = { ...process.env, ETCDCTL_API: '3' };
const WAIT = 20_000;

function etcdctl(...args) {
  return execFileSync('etcdctl', args, { env: etcdctlEnv, encoding: 'utf8' }).trim();
}

// axe-core (Deque's accessibility engine, as browsers' audit tools run it), for WCAG 2.1 A and AA:
// names, roles, labels, contrast.
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

async function accessible(page, name) {
  await page.evaluate(axeSource);
  const found = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
  }));
  console.log(`axe on ${name}: ${found.passes.length} rules pass, ${found.violations.length} fail`);
  for (const violation of found.violations) {
    const where = violation.nodes.slice(0, 3).map((node) => node.target.join(' ')).join('; ');
    failures.push(`${name}: ${violation.id} (${violation.impact}): ${violation.help}: ${where}`);
  }
}

function step(name) {
  console.log(`-- ${name}`);
}

const holders = [];
const failures = [];
const profile = mkdtempSync(join(tmpdir(), 'synod-console-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking'],
  viewport: { width: 1280, height: 800 },
});
const page = context.pages()[0] || (await context.newPage());
try {
  page.on('pageerror', (error) => failures.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    // A refused request is logged by Chromium itself; the steps check what the page shows.
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      failures.push(`console error: ${message.text()}`);
    }
  });
  page.setDefaultTimeout(WAIT);

  step('the cluster page shows the leader, and moves it after etcdctl move-leader');
  await page.goto(`${base}/ui/`);
  await page.waitForSelector('[data-page="cluster"][data-loaded] tr[data-role="leader"]');
  await page.waitForFunction(() => document.querySelectorAll('tr[data-member] td.role-follower').length === 2);
  const leader = await page.textContent('#leader-name');
  const target = await page.getAttribute('tr[data-role="follower"]', 'data-member');
  const targetId = await page.textContent(`tr[data-member="${target}"] th small`);
  etcdctl('move-leader', targetId);
  await page.waitForFunction((name) => document.getElementById('leader-name')?.textContent === name, target);
  await page.waitForFunction(() => document.querySelectorAll('.timeline li').length >= 2);
  await page.screenshot({ path: join(shots, 'cluster.png'), fullPage: true });
  await accessible(page, 'cluster');
  await page.emulateMedia({ colorScheme: 'dark' });
  await accessible(page, 'cluster, dark');
  await page.emulateMedia({ colorScheme: 'light' });
  console.log(`leader moved from ${leader} to ${target}`);

  step('keyboard: the navigation is reachable and works without a mouse');
  await page.focus('nav a[data-page="cluster"]');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Enter');
  await page.waitForSelector('[data-page="keys"][data-loaded]');

  step('browsing finds a key written by etcdctl, with its value, revisions and history');
  etcdctl('put', '/app/config/db', '{"host":"db1","port":5432}');
  etcdctl('put', '/app/config/db', '{"host":"db2","port":5432}');
  etcdctl('put', '/app/config/cache', 'redis://cache:6379');
  await page.goto(`${base}/ui/#/keys?prefix=`);
  await page.click('li.folder >> text="/"');
  await page.click('li.folder >> text="app/"');
  await page.click('li.folder >> text="config/"');
  await page.click('li.key >> text="db"');
  await page.waitForSelector('pre.value[data-format="json"]');
  const shown = await page.textContent('pre.value');
  if (!shown.includes('"host": "db2"')) throw new Error(`the key's value is not shown pretty-printed: ${shown}`);
  await page.waitForSelector('.diff del >> text=db1');
  await page.waitForSelector('.diff ins >> text=db2');
  await page.screenshot({ path: join(shots, 'keys.png'), fullPage: true });
  await accessible(page, 'keys');

  step('a compare-and-swap from the page is refused once the key has changed underneath');
  await page.click('summary >> text=Edit');
  await page.fill('textarea[aria-label="New value"]', '{"host":"db3","port":5432}');
  etcdctl('put', '/app/config/db', '{"host":"db4","port":5432}');
  await page.click('button >> text="Save if unchanged"');
  await page.waitForSelector('text=Not written: the key changed');
  if (!etcdctl('get', '/app/config/db', '--print-value-only').includes('db4')) {
    throw new Error('a refused compare-and-swap wrote the key');
  }

  step('the watch tail shows a put made while the page is open');
  await page.goto(`${base}/ui/#/watch?prefix=/app/`);
  await page.waitForSelector('[role="status"][data-ready]');
  etcdctl('put', '/app/live', 'hello from etcdctl');
  await page.waitForSelector('#events td >> text="/app/live"');
  await page.waitForSelector('#events tr >> text=hello from etcdctl');
  await page.click('button >> text=Pause');
  etcdctl('put', '/app/live', 'held while paused');
  await page.waitForSelector('text=1 held while paused');
  await page.screenshot({ path: join(shots, 'watch.png'), fullPage: true });
  await accessible(page, 'watch');
  await page.click('button >> text=Resume');
  await page.waitForSelector('#events tr >> text=held while paused');

  step('a lease and its keys are shown, and vanish when it is revoked');
  const lease = BigInt(`0x${etcdctl('lease', 'grant', '300').split(' ')[1]}`).toString(16);
  etcdctl('put', '--lease', lease, '/services/worker-1', 'up');
  etcdctl('put', '--lease', lease, '/services/worker-2', 'up');
  await page.goto(`${base}/ui/#/leases`);
  await page.waitForSelector(`tr[data-lease="${lease}"] >> text="/services/worker-2"`);

  step('locks and elections: the holder and the waiter with their fencing tokens, the leader with its value');
  for (let i = 0; i < 2; i++) {
    const holder = spawn('etcdctl', ['lock', '/locks/db-migration', 'sleep', '120'], { env: etcdctlEnv, stdio: 'ignore' });
    holders.push(holder);
    await new Promise((resolve) => setTimeout(resolve, 700));
  }
  holders.push(spawn('etcdctl', ['elect', '/elections/scheduler', 'node-a'], { env: etcdctlEnv, stdio: 'ignore' }));
  await page.goto(`${base}/ui/#/locks`);
  await page.waitForSelector('section[data-lock="/locks/db-migration"] tr >> text=waits (1)');
  await page.waitForSelector('section[data-lock="/elections/scheduler"] td >> text="node-a"');
  await page.screenshot({ path: join(shots, 'locks.png'), fullPage: true });
  await accessible(page, 'locks');

  await page.goto(`${base}/ui/#/leases?id=0`);
  await page.waitForSelector(`tr[data-lease="${lease}"] >> text="/services/worker-1"`);
  await page.screenshot({ path: join(shots, 'leases.png'), fullPage: true });
  await accessible(page, 'leases');
  etcdctl('lease', 'revoke', lease);
  await page.waitForFunction((id) => !document.querySelector(`tr[data-lease="${id}"]`), lease);
  if (await page.$('text="/services/worker-1"')) throw new Error('a revoked lease\'s key is still shown');

  step('on a phone-sized screen');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${base}/ui/#/cluster`);
  await page.waitForSelector('[data-page="cluster"][data-loaded]');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) throw new Error(`the page is ${overflow}px wider than a phone's screen`);
  await page.screenshot({ path: join(shots, 'phone.png') });
  await accessible(page, 'phone');

  step('with auth on: the page asks to sign in, and a user who may only read gets no edit controls');
  await page.setViewportSize({ width: 1280, height: 800 });
  for (const args of [['user', 'add', 'root:rootpw'], ['user', 'grant-role', 'root', 'root'], ['role', 'add', 'reader'],
    ['role', 'grant-permission', 'reader', 'read', '/app/', '--prefix=true'], ['user', 'add', 'viewer:viewerpw'],
    ['user', 'grant-role', 'viewer', 'reader'], ['auth', 'enable']]) {
    etcdctl(...args);
  }
  const signIn = async (name, password) => {
    await page.waitForSelector('dialog#login[open]');
    await page.fill('input[name="name"]', name);
    await page.fill('input[name="password"]', password);
    await page.click('button >> text="Sign in"');
    await page.waitForSelector('dialog#login', { state: 'hidden' });
  };
  await page.goto(`${base}/ui/#/keys?prefix=%2Fapp%2Fconfig%2F&key=%2Fapp%2Fconfig%2Fdb`);
  await signIn('viewer', 'viewerpw');
  await page.waitForSelector('text=Read-only: your roles do not let you write this key.');
  if (await page.$('summary >> text=Edit')) throw new Error('a read-only user is offered to edit');
  await page.click('button >> text="Sign out"');
  await signIn('root', 'rootpw');
  await page.waitForSelector('[data-page="keys"][data-loaded] summary >> text=Edit');

  if (failures.length) throw new Error(failures.join('\n'));
  console.log('console: every step passed');
} catch (failure) {
  await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  console.log(`page when it failed: ${join(shots, 'failure.png')}`);
  throw failure;
} finally {
  for (const holder of holders) holder.kill('SIGKILL');
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
