// The dashboard in headless Chromium, as a learner uses it: everything is done by clicking
// and typing on the page; the gateway's API is read only to check what the page showed
// (a balance, the inbox's duplicate count).
//
// Run by scripts/browser-test.sh, which starts the stack and passes DASHBOARD_URL,
// ADMIN_TOKEN, SCREENSHOT_DIR, RESULTS_FILE and INBOX_MAX_ATTEMPTS. Each check is one line
// `ok|not ok<TAB>description<TAB>details` in RESULTS_FILE (the script prints them as
// `ok - ...` / `not ok - ...`); a failed check ends the test, as the next builds on it.

import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

const BASE = process.env.DASHBOARD_URL;
const TOKEN = process.env.ADMIN_TOKEN;
const SHOTS = process.env.SCREENSHOT_DIR;
const RESULTS = process.env.RESULTS_FILE;
const MAX_ATTEMPTS = Number(process.env.INBOX_MAX_ATTEMPTS || 3);
const SETTLE_MS = 30_000;

for (const [name, value] of Object.entries({ DASHBOARD_URL: BASE, ADMIN_TOKEN: TOKEN, SCREENSHOT_DIR: SHOTS, RESULTS_FILE: RESULTS })) {
  if (!value) throw new Error(`${name} is not set (run scripts/browser-test.sh)`);
}
writeFileSync(RESULTS, '');

const oneLine = (text) => String(text).replace(/\s+/g, ' ').slice(0, 400);

async function check(description, body) {
  try {
    await body();
    appendFileSync(RESULTS, `ok\t${description}\t\n`);
  } catch (e) {
    appendFileSync(RESULTS, `not ok\t${description}\t${oneLine(e.message || e)}\n`);
    throw new Error(`stopped at: ${description}`);
  }
}

async function screenshot(page, name) {
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
}

/// The lane view alone, readable at its own size.
async function laneShot(name) {
  await page.locator('#lane').screenshot({ path: join(SHOTS, `${name}-lane.png`) });
}

const userDataDir = mkdtempSync(join(tmpdir(), 'lmt-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  viewport: { width: 1280, height: 900 },
});
const page = context.pages()[0] || (await context.newPage());
const errors = [];
page.on('pageerror', (e) => errors.push(e.message));
page.on('console', (m) => {
  // A refused admin call (the wrong-token step) is logged by Chromium as a failed load.
  if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text());
});

const adminState = page.locator('#admin-state');
const row = (id) => page.locator(`#orders tr[data-order-id="${id}"]`);
const storyOf = (id) => page.locator(`#story-${id}`);
const switchOf = (service, name) => page.locator(`#faults li[data-service="${service}"][data-switch="${name}"]`);
const lane = page.locator('#lane');
const stage = (n) => lane.locator('li.stage').nth(n);

/// Fills the order form and presses Buy; the new order's id (the page opens its story).
async function buy(amount, item) {
  await page.fill('#buy-form input[name="item"]', item);
  await page.fill('#buy-form input[name="amount_cents"]', String(amount));
  await page.click('#buy-form button[type="submit"]');
  const result = page.locator('#buy-result');
  await result.filter({ hasText: /taken: PENDING_PAYMENT/ }).waitFor({ timeout: 10_000 });
  return result.getAttribute('data-order-id');
}

async function paid(id) {
  await row(id).locator('.order-status').filter({ hasText: 'PAID' }).waitFor({ timeout: SETTLE_MS });
  await storyOf(id).filter({ hasText: 'Order settled: PAID' }).waitFor({ timeout: SETTLE_MS });
}

async function turnOn(service, name, amount) {
  const sw = switchOf(service, name);
  if (amount !== undefined) await sw.locator('input').fill(String(amount));
  await sw.getByRole('button', { name: `Turn on ${name} on ${service}` }).click();
  await sw.filter({ hasText: 'active' }).filter({ hasNotText: 'inactive' }).waitFor({ timeout: 5_000 });
}

async function adminGet(service, path) {
  const res = await page.request.get(`${BASE}/admin/${service}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
  if (!res.ok()) throw new Error(`GET /admin/${service}${path}: HTTP ${res.status()}`);
  return res.json();
}

async function balance(user) {
  const res = await page.request.get(`${BASE}/pay/accounts/${user}`);
  return (await res.json()).balance_cents;
}

let failed = false;
try {
  await check('the page loads from the gateway and asks for the admin token', async () => {
    const res = await page.goto(`${BASE}/`);
    if (res.status() !== 200) throw new Error(`GET / answered ${res.status()}`);
    await adminState.filter({ hasText: 'no token yet' }).waitFor({ timeout: 5_000 });
  });

  await check('a wrong admin token is refused, and the page says so (401)', async () => {
    await page.fill('#token', 'not-the-admin-token-at-all');
    await page.click('#token-form button[type="submit"]');
    await adminState.filter({ hasText: 'refused (HTTP 401)' }).waitFor({ timeout: 5_000 });
  });

  await check('with the admin token, the message tables and the teaching switches show', async () => {
    await page.fill('#token', TOKEN);
    await page.press('#token', 'Enter');
    await adminState.filter({ hasText: 'connected' }).waitFor({ timeout: 5_000 });
    await page.locator('#tables [data-service="pay"] dl').first().waitFor({ timeout: 5_000 });
    await switchOf('pay', 'fail_handler').filter({ hasText: 'inactive' }).waitFor({ timeout: 5_000 });
    const tables = await page.locator('#tables').innerText();
    for (const label of ['orders held by a dead message', 'parked (came before their predecessor)']) {
      if (!tables.includes(label)) throw new Error(`the message tables lack "${label}": ${oneLine(tables)}`);
    }
    const stored = await page.evaluate(() => sessionStorage.getItem('lmt-admin-token'));
    if (stored !== TOKEN) throw new Error('the token is not kept in sessionStorage');
  });

  let first;
  await check('buy from the page (keyboard only: Enter in the form) and see PAID, with the story', async () => {
    await page.fill('#buy-form input[name="item"]', 'a book, bought in the browser');
    await page.fill('#buy-form input[name="amount_cents"]', '1299');
    await page.focus('#buy-form input[name="amount_cents"]');
    await page.keyboard.press('Enter');
    const result = page.locator('#buy-result');
    await result.filter({ hasText: /taken: PENDING_PAYMENT/ }).waitFor({ timeout: 10_000 });
    first = await result.getAttribute('data-order-id');
    await paid(first);
    const story = await storyOf(first).innerText();
    for (const step of ["OrderCreated in order's outbox", 'Published, confirmed by the broker', "In pay's inbox", 'Payment COMPLETED', "PaymentCompleted in order's inbox"]) {
      if (!story.includes(step)) throw new Error(`the story lacks "${step}": ${oneLine(story)}`);
    }
    await screenshot(page, '01-bought-and-paid');
  });

  await check('the lane view follows the order: outbox, broker, inbox (one copy), payment, then the reply back', async () => {
    await lane.locator('li.stage').nth(7).waitFor({ timeout: 5_000 });
    const boxes = await lane.locator('li.stage').count();
    if (boxes !== 8) throw new Error(`${boxes} boxes, not 8 (two lanes of four)`);
    await stage(0).filter({ hasText: 'status sent, publish attempts 1' }).waitFor({ timeout: 5_000 });
    await stage(1).filter({ hasText: /ready \d+/ }).waitFor({ timeout: 5_000 });
    await stage(2).filter({ hasText: 'copies received: 1' }).waitFor({ timeout: 5_000 });
    await stage(3).filter({ hasText: 'payments for this order: 1' }).waitFor({ timeout: 5_000 });
    await stage(7).filter({ hasText: 'PAID' }).waitFor({ timeout: 5_000 });
    if ((await lane.locator('li.stage.here').count()) !== 0) throw new Error('a settled order still has a message on its way');
  });

  await check('mid-flight: with pay\'s consumer stopped, the lane shows the message held by the broker', async () => {
    await turnOn('pay', 'stop_consumer', 20);
    const id = await buy(1500, 'held by the broker');
    await stage(1).and(page.locator('.here')).waitFor({ timeout: 10_000 });
    await stage(2).filter({ hasText: 'no row yet' }).waitFor({ timeout: 5_000 });
    await screenshot(page, 'lane-mid-flight');
    await laneShot('lane-mid-flight');
    await switchOf('pay', 'stop_consumer').getByRole('button', { name: 'Turn off stop_consumer on pay' }).click();
    await paid(id);
  });

  await check('hold_ack ("crash after commit") on pay: committed, no ack, redelivered, the copy dropped and shown in the lane', async () => {
    const before = await balance('alice');
    await turnOn('pay', 'hold_ack', 1);
    const id = await buy(1700, 'crash after commit');
    await paid(id);
    await stage(2).filter({ hasText: 'copies received: 2 (1 dropped as duplicates)' }).waitFor({ timeout: SETTLE_MS });
    await stage(3).filter({ hasText: 'payments for this order: 1' }).waitFor({ timeout: 5_000 });
    await switchOf('pay', 'hold_ack').filter({ hasText: 'inactive' }).waitFor({ timeout: 5_000 });
    const after = await balance('alice');
    if (before - after !== 1700) throw new Error(`alice was debited ${before - after}, not 1700 once`);
    const story = await adminGet('pay', `/payments/${id}/story`);
    if (story.order_created[0].duplicates !== 1) throw new Error(`pay's inbox row counts ${story.order_created[0].duplicates} duplicates, not 1`);
    await lane.scrollIntoViewIfNeeded();
    await screenshot(page, 'lane-duplicate-dropped');
    await laneShot('lane-duplicate-dropped');
  });

  await check('Explain: a failed load says so and a retry renders the scenario from Markdown', async () => {
    await page.route('**/dashboard/scenarios.md', (route) => route.fulfill({ status: 500, body: 'down' }));
    await switchOf('pay', 'hold_ack').getByRole('button', { name: 'Explain' }).click();
    const error = page.locator('#explain-error');
    await error.filter({ hasText: 'could not be loaded: HTTP 500' }).waitFor({ timeout: 5_000 });
    await page.unroute('**/dashboard/scenarios.md');
    await page.click('#explain-retry');
    await error.waitFor({ state: 'hidden', timeout: 5_000 });
    await page.locator('#explain-title').filter({ hasText: 'Scenario 07' }).waitFor({ timeout: 5_000 });
    // Rendered, not shown as source: Markdown's code spans and paragraphs are elements.
    if ((await page.locator('#explain-text p').count()) === 0) throw new Error('no paragraph rendered');
    if ((await page.locator('#explain-text code').count()) === 0) throw new Error('no code span rendered');
    const cards = await page.locator('#script-cards li').count();
    if (cards !== 6) throw new Error(`${cards} run-this-script cards, not 6 (01, 04, 06, 09, 12, 13)`);
    await page.locator('#script-cards li[data-scenario="13-lost-message-reconciler"]').getByRole('button', { name: 'Explain' }).click();
    await page.locator('#explain-title').filter({ hasText: 'Scenario 13' }).waitFor({ timeout: 5_000 });
    await page.locator('#reconciler').filter({ hasText: /Last pass|No pass yet/ }).waitFor({ timeout: 5_000 });
    await page.locator('#heard').filter({ hasText: 'Last heard from order' }).waitFor({ timeout: 5_000 });
  });

  await check('the language switch: Chinese UI, remembered after a reload, Explain in Chinese; back to English', async () => {
    await page.click('#lang');
    await page.locator('#buy-title').filter({ hasText: '下单' }).waitFor({ timeout: 5_000 });
    await page.reload();
    await page.locator('#buy-title').filter({ hasText: '下单' }).waitFor({ timeout: 5_000 });
    const stored = await page.evaluate(() => localStorage.getItem('lmt-lang'));
    if (stored !== 'zh') throw new Error(`localStorage lmt-lang is ${stored}`);
    await page.locator('html[lang="zh-CN"]').waitFor({ state: 'attached', timeout: 2_000 });
    await adminState.filter({ hasText: '已连接' }).waitFor({ timeout: 5_000 });
    // A reload forgets which order the lane followed: watch the newest again.
    await page.locator('#orders tbody tr').first().getByRole('button', { name: /^Watch order/ }).click();
    await stage(2).filter({ hasText: '收到的副本' }).waitFor({ timeout: 5_000 });
    await switchOf('pay', 'hold_ack').getByRole('button', { name: '说明' }).click();
    await page.locator('#explain-title').filter({ hasText: '场景 07' }).waitFor({ timeout: 5_000 });
    await page.locator('#explain-text').filter({ hasText: /[\u4e00-\u9fff]/ }).waitFor({ timeout: 5_000 });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: join(SHOTS, 'chinese-ui.png') });
    await page.click('#lang');
    await page.locator('#buy-title').filter({ hasText: 'Place an order' }).waitFor({ timeout: 5_000 });
    await page.click('#explain-close');
  });

  await check('"fail the next 2" on pay: the story shows the retries (handler attempts: 3), then PAID', async () => {
    await turnOn('pay', 'fail_handler', 2);
    await switchOf('pay', 'fail_handler').filter({ hasText: 'active: 2 left' }).waitFor({ timeout: 5_000 });
    const id = await buy(2500, 'retried twice');
    await paid(id);
    const story = storyOf(id);
    await story.filter({ hasText: 'handler attempts: 3' }).waitFor({ timeout: 5_000 });
    await switchOf('pay', 'fail_handler').filter({ hasText: 'inactive' }).waitFor({ timeout: 5_000 });
    const tables = await page.locator('#tables').innerText();
    for (const label of ['orders held by a dead message', 'parked (came before their predecessor)']) {
      if (!tables.includes(label)) throw new Error(`the message tables lack "${label}": ${oneLine(tables)}`);
    }
    await screenshot(page, '02-retried-then-paid');
  });

  let dead;
  await check(`a message dead after ${MAX_ATTEMPTS} failed runs shows in the dead list with its reason`, async () => {
    await turnOn('pay', 'fail_handler', MAX_ATTEMPTS);
    const id = await buy(3100, 'dead, then requeued');
    const story = await adminGet('order', `/orders/${id}/story`);
    const message = story.order.message_id;
    const item = page.locator(`#dead ul[data-service="pay"][data-table="inbox"] li[data-message-id="${message}"]`);
    await item.waitFor({ timeout: SETTLE_MS });
    const text = await item.innerText();
    if (!text.includes(`attempts: ${MAX_ATTEMPTS}`) || !text.includes('fail_handler')) {
      throw new Error(`the dead row does not say attempts and reason: ${oneLine(text)}`);
    }
    await row(id).locator('.order-status').filter({ hasText: 'PENDING_PAYMENT' }).waitFor({ timeout: 2_000 });
    await screenshot(page, '03-dead-message');
    dead = { id, message, item };
  });

  await check('requeue it from the page: it leaves the dead list and the order is PAID', async () => {
    await dead.item.getByRole('button', { name: /^Requeue inbox message/ }).click();
    await dead.item.waitFor({ state: 'detached', timeout: SETTLE_MS });
    await page.locator('#dead-result').filter({ hasText: `Requeued inbox message ${dead.message}` }).waitFor({ timeout: 5_000 });
    await paid(dead.id);
    await screenshot(page, '04-requeued-and-paid');
  });

  await check('lose a confirm on order: published twice, the copy dropped by pay\'s inbox, exactly one payment', async () => {
    const before = await balance('alice');
    const duplicates = (await adminGet('pay', '/stats')).inbox_since_start.duplicates;
    await turnOn('order', 'lose_confirms', 1);
    const id = await buy(4200, 'confirm lost');
    await paid(id);
    const story = storyOf(id);
    await story.filter({ hasText: 'payments for this order: 1' }).waitFor({ timeout: 5_000 });
    // The second publish may come after the order is PAID (the confirm timeout, then a retry).
    await story
      .filter({ hasText: /OrderCreated in order's outbox[^\n]*status: sent; publish attempts: 2/ })
      .waitFor({ timeout: SETTLE_MS });
    let dropped = 0;
    for (let i = 0; i < 50 && dropped < 1; i += 1) {
      dropped = (await adminGet('pay', '/stats')).inbox_since_start.duplicates - duplicates;
      if (dropped < 1) await page.waitForTimeout(200);
    }
    if (dropped !== 1) throw new Error(`pay's inbox dropped ${dropped} copies, not 1`);
    const after = await balance('alice');
    if (before - after !== 4200) throw new Error(`alice was debited ${before - after}, not 4200 once`);
    await screenshot(page, '05-lost-confirm-one-payment');
  });

  await check('cancel a paid order from the page: the story tells the refund, the order ends REFUNDED, the money is back', async () => {
    const before = await balance('alice');
    const id = await buy(3100, 'bought, then cancelled');
    await paid(id);
    await row(id).getByRole('button', { name: `Cancel order ${id}` }).click();
    await page.locator('#buy-result').filter({ hasText: /cancel accepted: CANCEL_REQUESTED/ }).waitFor({ timeout: 10_000 });
    await row(id).locator('.order-status').filter({ hasText: 'REFUNDED' }).waitFor({ timeout: SETTLE_MS });
    await storyOf(id).filter({ hasText: 'Cancellation finished: REFUNDED' }).waitFor({ timeout: SETTLE_MS });
    const story = await storyOf(id).innerText();
    for (const step of ["OrderCancelled in order's outbox", "OrderCancelled in pay's inbox", 'Refunded: 31.00 credited back to alice', "PaymentRefunded in order's inbox"]) {
      if (!story.includes(step)) throw new Error(`the story lacks "${step}": ${oneLine(story)}`);
    }
    if (await row(id).getByRole('button', { name: `Cancel order ${id}` }).count()) throw new Error('a refunded order still offers Cancel');
    if ((await balance('alice')) !== before) throw new Error('alice did not get her 3100 back');
    await screenshot(page, '06-cancelled-and-refunded');
  });

  await check('usable on a phone: nothing wider than the screen, the form and the switches reachable', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(1_500);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 0) throw new Error(`the page is ${overflow} px wider than the screen`);
    await page.locator('#buy-form button[type="submit"]').scrollIntoViewIfNeeded();
    await screenshot(page, '07-phone');
  });

  await check('the page logged no script errors', async () => {
    if (errors.length) throw new Error(errors.join(' | '));
  });
} catch (e) {
  failed = true;
  console.log(`  ${e.message}`);
  await screenshot(page, '99-failure').catch(() => {});
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
