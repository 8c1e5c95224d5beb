// The dashboard's logic: polls the gateway every second and draws what it answers.
//
// The gateway has no database, so everything here comes from the services' own routes
// through it: /order/... and /pay/... for the business side, /admin/<service>/... (with the
// operator's token) for the message tables. Each service tells only about its own rows; the
// story of an order is joined here, from order's half and pay's half.
//
// Drawing: each panel is rebuilt from the latest answers with plain DOM calls (no
// innerHTML from data; the one innerHTML is a scenario's explanation, our own Markdown
// compiled into the gateway, rendered by the vendored `marked`). Focus and what was typed in
// a field survive a rebuild: every control has a data-key, and the new control with the
// focused key gets the focus back. Text goes through `t` (./i18n.js): English or Chinese.

import { language, setLanguage, t, translatePage } from './i18n.js';
import { marked } from './vendor/marked.esm.js';

const SERVICES = ['order', 'pay'];
const POLL_MS = 1000;
const HISTORY_POINTS = 300; // five minutes at one poll a second
const TOKEN_KEY = 'lmt-admin-token';

/// What each teaching switch does, in a sentence (the service lists the switch, its unit,
/// what remains and its scenario; see docs/scenarios.md, "The teaching switches").
const SWITCHES = {
  pause_relay: 'The relay stops claiming outbox rows: messages wait pending, nothing is lost.',
  fail_handler: 'The inbox handler fails the next N messages (a technical error: retried).',
  lose_confirms: "The relay publishes but treats the next N broker confirms as lost: it publishes again; the receiver's inbox drops the copy.",
  drop_broker_connection: "The service's broker connections are closed once: relay and consumer reconnect.",
  stop_consumer: 'The consumer stops taking deliveries: messages wait in the queue.',
  deliver_twice: 'The next message is delivered twice: the inbox processes it once.',
  hold_ack: 'Crash after commit: the consumer commits the next N deliveries, then drops its connection before the ack. The broker delivers again; the inbox drops the copy as a duplicate (see the copies in the lane).',
};

/// The scenarios no switch shows: a script on the machine does it (kill, rollback, stop).
const SCRIPT_SCENARIOS = [
  '01-rollback-before-send',
  '04-relay-killed-before-mark-sent',
  '06-unroutable',
  '09-poison-message',
  '12-database-down-under-pay',
  '13-lost-message-reconciler',
];

/// The scenarios document in each language, as the gateway serves it.
const SCENARIO_DOCS = { en: '/dashboard/scenarios.md', zh: '/dashboard/scenarios.zh-CN.md' };

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  /// 'none' (no token), 'ok', 'off' (404: ADMIN_TOKEN unset), 'refused' (401), 'down'.
  admin: 'none',
  orders: [],
  ordersError: '',
  open: new Set(),
  stories: new Map(),
  stats: {},
  dead: {},
  faults: {},
  history: { order: [], pay: [] },
  fields: new Map(),
  /// The scenarios document per language, once loaded.
  docs: {},
  /// The scenario the explanation box shows (to reload it in the other language).
  explaining: null,
  /// The order the lane view follows: the last one bought, opened or watched.
  lane: null,
  /// `/admin/<service>/queue`: each service's queue as the broker counts it.
  queues: {},
  reconciliation: null,
  /// When each service last answered (a 2xx or 4xx through the gateway).
  heard: { order: null, pay: null },
};

// ---------------------------------------------------------------------------------------
// HTTP

async function call(path, { method = 'GET', body, admin = false, headers = {} } = {}) {
  const h = { ...headers };
  if (body !== undefined) h['content-type'] = 'application/json';
  if (admin) h.authorization = `Bearer ${state.token}`;
  try {
    const res = await fetch(path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    heardFrom(path, res.status);
    return { status: res.status, ok: res.ok, data, headers: res.headers };
  } catch (e) {
    return { status: 0, ok: false, data: null, error: String(e) };
  }
}

/// A service answered (not the gateway on its behalf: 502, 503 and 504 say it could not).
function heardFrom(path, status) {
  const service = SERVICES.find((s) => path.startsWith(`/${s}/`) || path.startsWith(`/admin/${s}/`));
  if (service && status > 0 && status < 500) state.heard[service] = new Date();
}

const adminCall = (service, path, options = {}) =>
  call(`/admin/${service}${path}`, { ...options, admin: true });

/// The message of an error body (`{"error": {"code", "message"}}`), or the status.
function problem(res) {
  if (res.status === 0) return t('the gateway did not answer ({0})', res.error);
  const err = res.data && res.data.error;
  return err ? `${err.message} (HTTP ${res.status} ${err.code})` : `HTTP ${res.status}`;
}

// ---------------------------------------------------------------------------------------
// DOM

/// el('td', {class: 'num'}, 'text', childNode, ...): an element; attributes starting with
/// `on` are listeners; null children are skipped.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const svgEl = (tag, attrs = {}) => {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
};

/// Replaces `container`'s children, keeping the focus (by data-key) and typed values.
function replace(container, ...children) {
  const focused = document.activeElement;
  const key = focused && container.contains(focused) ? focused.dataset.key : null;
  container.replaceChildren(...children.flat(Infinity).filter(Boolean));
  if (key) {
    const again = container.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

/// A remembered input: its value survives rebuilds.
function field(key, attrs) {
  const input = el('input', { ...attrs, dataset: { key } });
  if (state.fields.has(key)) input.value = state.fields.get(key);
  input.addEventListener('input', () => state.fields.set(key, input.value));
  return input;
}

/// A status as text in a badge; the class (colour, border style) only repeats it.
function badge(text, kind) {
  return el('span', { class: `status ${kind}` }, text);
}

// Every order status (services/order/src/status.rs): settled ok, on its way, or refused.
const ORDER_KIND = {
  PENDING_PAYMENT: 'wait',
  PAID: 'ok',
  PAYMENT_FAILED: 'bad',
  CANCEL_REQUESTED: 'wait',
  CANCELLED: 'ok',
  REFUNDED: 'ok',
};
const ROW_KIND = { sent: 'ok', processed: 'ok', pending: 'wait', failed: 'wait', dead: 'bad' };

function time(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/// `+1.23 s` after `from`.
function after(iso, from) {
  if (!iso || !from) return '';
  const s = (new Date(iso) - new Date(from)) / 1000;
  return ` (+${s.toFixed(2)} s)`;
}

const money = (cents) => (cents / 100).toFixed(2);
const short = (id) => String(id).slice(-12);

// ---------------------------------------------------------------------------------------
// Admin token

function showAdminState() {
  const node = document.getElementById('admin-state');
  const text = {
    none: 'Admin: no token yet. Enter ADMIN_TOKEN to see the message tables, the stories and the switches.',
    ok: 'Admin: connected. The message tables, stories and switches are live.',
    off: 'Admin is off: the gateway answers 404 for /admin (it runs without ADMIN_TOKEN). Orders still work.',
    refused: "Admin token refused (HTTP 401): it is not the gateway's ADMIN_TOKEN. Enter it again.",
    down: 'Admin: the gateway did not answer.',
  }[state.admin];
  node.textContent = t(text);
  node.classList.toggle('problem', state.admin === 'off' || state.admin === 'refused');
}

function adminFrom(res) {
  if (res.ok) return 'ok';
  if (res.status === 401) return 'refused';
  if (res.status === 404) return 'off';
  if (res.status === 0) return 'down';
  return 'ok'; // a service's own error (503): the token is fine
}

// ---------------------------------------------------------------------------------------
// Orders and their stories

async function pollOrders() {
  const res = await call('/order/orders?limit=15');
  if (res.ok) {
    state.orders = res.data.orders;
    state.ordersError = '';
  } else {
    state.ordersError = t('Orders could not be read: {0}', problem(res));
  }
}

async function pollStories() {
  if (state.admin !== 'ok') return;
  const ids = new Set(state.open);
  if (state.lane) ids.add(state.lane);
  await Promise.all(
    [...ids].map(async (id) => {
      const [order, pay] = await Promise.all([
        adminCall('order', `/orders/${id}/story`),
        adminCall('pay', `/payments/${id}/story`),
      ]);
      state.stories.set(id, { order, pay });
    }),
  );
}

function drawOrders() {
  const body = document.querySelector('#orders tbody');
  const rows = [];
  for (const o of state.orders) {
    const open = state.open.has(o.order_id);
    rows.push(
      el(
        'tr',
        { dataset: { orderId: o.order_id } },
        el('td', {}, time(o.created_at)),
        el('td', { class: 'id', title: o.order_id }, short(o.order_id)),
        el('td', {}, o.user_id),
        el('td', {}, o.item),
        el('td', { class: 'num' }, money(o.amount_cents)),
        el('td', { class: 'order-status' }, badge(o.status, ORDER_KIND[o.status] || 'wait'),
          o.failure_reason ? ` ${o.failure_reason}` : null),
        el(
          'td',
          {},
          el(
            'button',
            {
              type: 'button',
              'aria-expanded': open ? 'true' : 'false',
              'aria-controls': `story-${o.order_id}`,
              dataset: { key: `story-${o.order_id}` },
              onclick: () => toggleStory(o.order_id),
            },
            t(open ? 'Hide story' : 'Show story'),
          ),
          ' ',
          el(
            'button',
            {
              type: 'button',
              'aria-pressed': state.lane === o.order_id ? 'true' : 'false',
              'aria-label': `Watch order ${o.order_id} in the lane view`,
              dataset: { key: `watch-${o.order_id}` },
              onclick: () => watch(o.order_id),
            },
            t('Watch'),
          ),
          CANCELLABLE.includes(o.status) ? ' ' : null,
          CANCELLABLE.includes(o.status)
            ? el(
              'button',
              {
                type: 'button',
                'aria-label': `Cancel order ${o.order_id}`,
                dataset: { key: `cancel-${o.order_id}` },
                onclick: () => cancelOrder(o.order_id),
              },
              t('Cancel'),
            )
            : null,
        ),
      ),
    );
    if (open) {
      rows.push(
        el('tr', { class: 'story', id: `story-${o.order_id}` },
          el('td', { colspan: 7 }, story(o))),
      );
    }
  }
  replace(body, rows);
  const info = document.getElementById('orders-state');
  info.textContent = state.ordersError || (state.orders.length ? '' : t('No orders yet: place one.'));
  info.classList.toggle('problem', Boolean(state.ordersError));
}

function toggleStory(id) {
  if (state.open.has(id)) state.open.delete(id);
  else {
    state.open.add(id);
    state.lane = id;
  }
  drawOrders();
  pollStories().then(() => {
    drawOrders();
    drawLane();
  });
}

function watch(id) {
  state.lane = id;
  drawOrders();
  pollStories().then(drawLane);
}

/// One step of a story: what happened, when, and how it went.
function step(done, title, when, from, ...details) {
  return el(
    'li',
    { class: done ? 'done' : 'waiting' },
    badge(t(done ? 'done' : 'waiting'), done ? 'ok' : 'wait'),
    ` ${title}`,
    when ? el('span', { class: 'when' }, ` ${t('at {0}', time(when))}${after(when, from)}`) : null,
    details.filter(Boolean).length ? ` — ${details.filter(Boolean).join('; ')}` : null,
  );
}

function rowDetails(row, kind) {
  return [
    t('status: {0}', row.status),
    t(kind === 'publish' ? 'publish attempts: {0}' : 'handler attempts: {0}', row.attempts),
    row.status === 'failed' && row.next_attempt_at ? t('next attempt at {0}', time(row.next_attempt_at)) : null,
    row.last_error ? t('last error: {0}', row.last_error) : null,
  ];
}

/// The order's story: order's rows and pay's, in the order they happen.
function story(o) {
  if (state.admin !== 'ok') {
    return el('p', {}, t('The story needs the admin token (each service shows its message rows only to the operator).'));
  }
  const told = state.stories.get(o.order_id);
  if (!told) return el('p', {}, t('Reading the story…'));
  const from = o.created_at;
  const parts = [];
  if (!told.order.ok) parts.push(el('p', { class: 'state problem' }, `order: ${problem(told.order)}`));
  if (!told.pay.ok) parts.push(el('p', { class: 'state problem' }, `pay: ${problem(told.pay)}`));
  const mine = told.order.ok ? told.order.data : { order: o, order_created: null, replies: [] };
  const theirs = told.pay.ok ? told.pay.data : { order_created: [], payment: null, replies: [] };
  const order = mine.order;
  const out = mine.order_created;
  const steps = [
    step(true, t(o.status === 'PENDING_PAYMENT'
      ? 'Order committed (PENDING_PAYMENT) with its OrderCreated outbox row, in one transaction'
      : 'Order committed (was PENDING_PAYMENT) with its OrderCreated outbox row, in one transaction'), order.created_at, null),
    out
      ? step(true, t("OrderCreated in order's outbox"), out.created_at, from, ...rowDetails(out, 'publish'))
      : step(false, t("OrderCreated in order's outbox"), null, null, t('row not found (retention deleted it?)')),
    step(Boolean(out && out.sent_at), t('Published, confirmed by the broker'), out && out.sent_at, from,
      out && !out.sent_at && out.in_flight ? t('a relay holds it now') : null),
  ];
  const inbox = theirs.order_created;
  if (inbox.length === 0) steps.push(step(false, t("In pay's inbox"), null, null, t('pay has not received it')));
  for (const row of inbox) {
    steps.push(step(row.status === 'processed', t("In pay's inbox (deduplicated by message id)"), row.received_at, from,
      ...rowDetails(row, 'handler')));
  }
  const p = theirs.payment;
  steps.push(p
    ? step(true, t('Payment {0}', `${p.status}${p.failure_reason ? ` (${p.failure_reason})` : ''}`), p.created_at, from,
      t('payments for this order: 1 (payments.order_id is unique)'))
    : step(false, t('Payment'), null, null, t('payments for this order: {0}', 0)));
  const payReplies = theirs.replies.filter((r) => !UNDO_ANSWERS.includes(r.event_type));
  const orderReplies = mine.replies.filter((r) => !UNDO_ANSWERS.includes(r.event_type));
  if (payReplies.length === 0) steps.push(step(false, t("Reply in pay's outbox"), null, null));
  steps.push(...answers(payReplies, orderReplies, from));
  if (orderReplies.length === 0) steps.push(step(false, t("Reply in order's inbox"), null, null));
  const cancel = mine.order_cancelled;
  const settled = order.status !== 'PENDING_PAYMENT' && !(cancel && !orderReplies.length);
  if (settled) steps.push(step(true, t('Order settled: {0}', cancel ? paidOrFailed(orderReplies) : order.status), orderReplies.length ? orderReplies[0].processed_at : order.updated_at, from));
  else if (!cancel) steps.push(step(false, t('Order settled'), null, null));
  if (cancel) steps.push(...undoing(order, cancel, theirs, mine, from));
  parts.push(el('ol', { 'aria-label': `Story of order ${o.order_id}` }, steps));
  return parts;
}

/// Pay's answers to the cancellation; the others answer the payment.
const UNDO_ANSWERS = ['PaymentRefunded', 'PaymentCancelled'];

/// What the first answer settled the order as, before it was cancelled.
function paidOrFailed(replies) {
  return replies.length && replies[0].event_type === 'PaymentFailed' ? 'PAYMENT_FAILED' : 'PAID';
}

/// Pay's answers: each in pay's outbox, published, then in order's inbox.
function answers(outgoing, incoming, from) {
  const steps = [];
  for (const r of outgoing) {
    steps.push(step(true, t("{0} in pay's outbox", r.event_type), r.created_at, from, ...rowDetails(r, 'publish')));
    steps.push(step(Boolean(r.sent_at), t('{0} published, confirmed by the broker', r.event_type), r.sent_at, from));
  }
  for (const row of incoming) {
    steps.push(step(row.status === 'processed', t("{0} in order's inbox", row.event_type), row.received_at, from,
      ...rowDetails(row, 'handler')));
  }
  return steps;
}

/// The second half of a cancelled order's story: the compensation, through the same
/// outbox and inbox (a refund of a charge, or a tombstone where there was none).
function undoing(order, cancel, theirs, mine, from) {
  const steps = [
    step(true, t("Cancelled: OrderCancelled in order's outbox, in one transaction with the status change"), cancel.created_at, from,
      ...rowDetails(cancel, 'publish')),
    step(Boolean(cancel.sent_at), t('{0} published, confirmed by the broker', 'OrderCancelled'), cancel.sent_at, from),
  ];
  if (theirs.order_cancelled.length === 0) steps.push(step(false, t("OrderCancelled in pay's inbox"), null, null));
  for (const row of theirs.order_cancelled) {
    steps.push(step(row.status === 'processed', t("OrderCancelled in pay's inbox"), row.received_at, from, ...rowDetails(row, 'handler')));
  }
  const p = theirs.payment;
  if (theirs.refund) {
    steps.push(step(true, t('Refunded: {0} credited back to {1}', money(theirs.refund.amount_cents), theirs.refund.user_id),
      theirs.refund.created_at, from, t('refunds for this order: 1 (refunds.order_id is unique)')));
  } else if (p && p.status === 'CANCELLED') {
    steps.push(step(true, t('Tombstone: pay will never charge this order'), p.created_at, from));
  } else {
    steps.push(step(false, t('Refund or tombstone'), null, null));
  }
  const undoOut = theirs.replies.filter((r) => UNDO_ANSWERS.includes(r.event_type));
  const undoIn = mine.replies.filter((r) => UNDO_ANSWERS.includes(r.event_type));
  steps.push(...answers(undoOut, undoIn, from));
  const done = order.status === 'REFUNDED' || order.status === 'CANCELLED';
  steps.push(step(done, done ? t('Cancellation finished: {0}', order.status) : t('Cancellation finished'), done ? order.updated_at : null, from));
  return steps;
}

// ---------------------------------------------------------------------------------------
// Placing an order

async function buy(event) {
  event.preventDefault();
  const form = event.target;
  const data = new FormData(form);
  const out = document.getElementById('buy-result');
  const headers = {};
  const key = data.get('idempotency_key').trim();
  if (key) headers['idempotency-key'] = key;
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  out.textContent = t('Sending…');
  const res = await call('/order/buy', {
    method: 'POST',
    headers,
    body: {
      user_id: data.get('user_id'),
      item: data.get('item'),
      amount_cents: Number(data.get('amount_cents')),
    },
  });
  button.disabled = false;
  if (res.ok) {
    const replayed = res.headers.get('idempotent-replayed') === 'true';
    out.textContent = t(replayed ? 'Order {0} replayed (same Idempotency-Key): {1}' : 'Order {0} taken: {1}', res.data.order_id, res.data.status);
    out.dataset.orderId = res.data.order_id;
    state.open.add(res.data.order_id);
    state.lane = res.data.order_id;
    await tick();
  } else {
    out.textContent = t('Refused: {0}', problem(res));
  }
}

/// Orders a client may still cancel: waiting for the payment, or paid (then refunded).
const CANCELLABLE = ['PENDING_PAYMENT', 'PAID'];

/// `POST /order/orders/{id}/cancel`. The Idempotency-Key is the order's own, so a double
/// click is one cancellation, replayed.
async function cancelOrder(id) {
  const out = document.getElementById('buy-result');
  const res = await call(`/order/orders/${id}/cancel`, { method: 'POST', headers: { 'idempotency-key': `dashboard-cancel-${id}` } });
  out.textContent = res.ok ? t('Order {0} cancel accepted: {1}', id, res.data.status) : t('Cancel refused: {0}', problem(res));
  if (res.ok) {
    state.open.add(id);
    state.lane = id;
    await tick();
  }
}

// ---------------------------------------------------------------------------------------
// The message tables: counts, charts, dead rows

async function pollTables() {
  await Promise.all(
    SERVICES.map(async (service) => {
      const [stats, outbox, inbox] = await Promise.all([
        adminCall(service, '/stats'),
        adminCall(service, '/outbox/dead'),
        adminCall(service, '/inbox/dead'),
      ]);
      state.stats[service] = stats;
      state.dead[service] = { outbox, inbox };
      if (stats.ok) remember(service, stats.data);
    }),
  );
  const first = state.stats.order;
  state.admin = adminFrom(first);
}

/// One point of the charts: published and processed per second since the last poll, and
/// the backlog (outbox waiting or in flight, inbox waiting for a retry).
function remember(service, s) {
  const history = state.history[service];
  const now = Date.now();
  const point = {
    t: now,
    sent: s.outbox.sent,
    processed: s.inbox.processed,
    outboxBacklog: s.outbox.pending + s.outbox.in_flight,
    inboxBacklog: s.inbox.failed,
    published: 0,
    handled: 0,
  };
  const last = history[history.length - 1];
  if (last) {
    const secs = Math.max((now - last.t) / 1000, 0.001);
    // Retention deletes old rows: a count that went down is no throughput.
    point.published = Math.max(point.sent - last.sent, 0) / secs;
    point.handled = Math.max(point.processed - last.processed, 0) / secs;
  }
  history.push(point);
  if (history.length > HISTORY_POINTS) history.shift();
}

function counts(title, pairs) {
  return [
    el('h4', {}, title),
    el('dl', { class: 'counts' }, pairs.map(([name, value]) => el('div', {}, el('dt', {}, name), el('dd', {}, value)))),
  ];
}

/// A small line chart of two series over the history, drawn as inline SVG, with its
/// numbers in text beside it.
function chart(service, title, a, b, unit) {
  const history = state.history[service];
  const w = 300;
  const h = 60;
  const values = history.flatMap((p) => [p[a.field], p[b.field]]);
  const max = Math.max(1, ...values);
  const line = (fieldName) =>
    history
      .map((p, i) => {
        // The newest point at the right edge; the chart fills leftwards over five minutes.
        const x = w - ((history.length - 1 - i) / (HISTORY_POINTS - 1)) * w;
        const y = h - (p[fieldName] / max) * (h - 4) - 2;
        return `${i ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`;
      })
      .join(' ');
  const last = history[history.length - 1] || {};
  const fmt = (v) => (v === undefined ? '–' : Number.isInteger(v) ? v : v.toFixed(1));
  const svg = svgEl('svg', { class: 'chart', viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': `${title}, last five minutes` });
  const tip = svgEl('title');
  tip.textContent = `${title}: ${a.name} ${fmt(last[a.field])}, ${b.name} ${fmt(last[b.field])} ${unit}`;
  svg.append(tip);
  if (history.length > 1) {
    svg.append(svgEl('path', { class: 'a', d: line(a.field) }), svgEl('path', { class: 'b', d: line(b.field) }));
  }
  return [
    el('h4', {}, title),
    svg,
    el('p', { class: 'legend' }, t('solid: {0} {1}; dashed: {2} {3} ({4}, now); top of the chart: {5}', a.name, fmt(last[a.field]), b.name, fmt(last[b.field]), unit, fmt(max))),
  ];
}

function drawTables() {
  const blocks = SERVICES.map((service) => {
    const res = state.stats[service];
    const parts = [el('h3', {}, service)];
    if (state.admin !== 'ok') {
      parts.push(el('p', { class: 'hint' }, t('Needs the admin token.')));
    } else if (!res || !res.ok) {
      parts.push(el('p', { class: 'state problem' }, res ? problem(res) : t('Reading…')));
    } else {
      const s = res.data;
      parts.push(
        ...counts(t('Outbox (messages it sends)'), [
          ['pending', s.outbox.pending],
          [t('in flight'), s.outbox.in_flight],
          ['sent', s.outbox.sent],
          ['dead', s.outbox.dead],
          [t('orders held by a dead message'), s.outbox.blocked_aggregates],
          [t('oldest pending'), t('{0} s', s.outbox_oldest_pending_age_seconds.toFixed(1))],
        ]),
        ...counts(t('Inbox (messages it received)'), [
          ['processed', s.inbox.processed],
          [t('failed (to retry)'), s.inbox.failed],
          ['dead', s.inbox.dead],
          [t('parked (came before their predecessor)'), s.inbox.parked],
          [t('duplicates dropped*'), s.inbox_since_start.duplicates],
          [t('handler failures*'), s.inbox_since_start.failed],
          [t('poison*'), s.inbox_since_start.poison],
        ]),
        el('p', { class: 'hint' }, t('* since this process started')),
        ...chart(service, t('Throughput'), { field: 'published', name: t('published') }, { field: 'handled', name: t('processed') }, t('messages/s')),
        ...chart(service, t('Backlog'), { field: 'outboxBacklog', name: t('outbox pending') }, { field: 'inboxBacklog', name: t('inbox awaiting retry') }, t('rows')),
      );
    }
    return el('div', { class: 'service', dataset: { service } }, parts);
  });
  replace(document.getElementById('tables'), blocks);
}

async function requeue(service, table, id) {
  const res = await adminCall(service, `/${table}/${id}/requeue`, { method: 'POST' });
  const out = document.getElementById('dead-result');
  if (out) out.textContent = res.ok ? t('Requeued {0} message {1} on {2}.', table, id, service) : t('Requeue refused: {0}', problem(res));
  await tick();
}

function deadList(service, table, res) {
  const title = `${service} ${table}`;
  if (!res || !res.ok) return [el('h4', {}, title), el('p', { class: 'state problem' }, res ? problem(res) : t('Reading…'))];
  const rows = res.data.dead;
  if (rows.length === 0) return [el('h4', {}, t('{0}: none dead', title))];
  return [
    el('h4', {}, t('{0}: {1} dead', title, rows.length)),
    el(
      'ul',
      { class: 'dead-list', dataset: { service, table } },
      rows.map((row) => {
        const id = row.id || row.message_id;
        const can = table === 'outbox' || row.requeueable;
        return el(
          'li',
          { dataset: { messageId: id } },
          badge('dead', 'bad'),
          el('span', { class: 'id', title: id }, short(id)),
          el('span', {}, t('{0}, attempts: {1}', row.event_type, row.attempts)),
          el('span', { class: 'reason' }, t('reason: {0}', row.last_error || t('none recorded'))),
          el(
            'button',
            {
              type: 'button',
              disabled: !can,
              'aria-label': `Requeue ${table} message ${id} on ${service}`,
              dataset: { key: `requeue-${service}-${table}-${id}` },
              onclick: () => requeue(service, table, id),
            },
            t(can ? 'Requeue' : 'Poison: cannot requeue'),
          ),
        );
      }),
    ),
  ];
}

function drawDead() {
  const container = document.getElementById('dead');
  if (state.admin !== 'ok') {
    replace(container, el('p', { class: 'hint' }, t('Needs the admin token.')));
    return;
  }
  const result = document.getElementById('dead-result');
  replace(
    container,
    SERVICES.flatMap((service) => [
      deadList(service, 'outbox', state.dead[service] && state.dead[service].outbox),
      deadList(service, 'inbox', state.dead[service] && state.dead[service].inbox),
    ]),
    el('p', { id: 'dead-result', role: 'status' }, result ? result.textContent : ''),
  );
}

// ---------------------------------------------------------------------------------------
// Teaching switches

async function pollFaults() {
  await Promise.all(
    SERVICES.map(async (service) => {
      state.faults[service] = await adminCall(service, '/faults');
    }),
  );
}

async function turn(service, sw, on) {
  let body;
  if (on) {
    const amount = Number(state.fields.get(`amount-${service}-${sw.switch}`) || defaultAmount(sw));
    body = sw.unit === 'count' ? { count: amount } : sw.unit === 'seconds' ? { seconds: amount } : {};
  }
  const res = await adminCall(service, `/faults/${sw.switch}`, { method: on ? 'POST' : 'DELETE', body });
  const out = document.getElementById('faults-result');
  if (out) {
    out.textContent = res.ok
      ? t(res.data.active ? '{0}: {1} on.' : '{0}: {1} off.', service, sw.switch)
      : t('{0}: {1} refused: {2}', service, sw.switch, problem(res));
  }
  await pollFaults();
  drawFaults();
}

const defaultAmount = (sw) => (sw.unit === 'count' ? 2 : 30);

function remaining(sw) {
  if (!sw.active) return t('inactive');
  if (sw.remaining_count !== undefined) return t('active: {0} left', sw.remaining_count);
  if (sw.remaining_seconds !== undefined) return t('active: {0} s left', sw.remaining_seconds);
  return t('active');
}

/// Each scenario's title, as its heading in docs/scenarios.md (translated through `t`).
const SCENARIO_TITLES = {
  '01': 'Message sent, local transaction rolled back',
  '02': 'Transaction committed, but the send failed',
  '03': 'The broker is down when the order is taken',
  '04': 'The relay dies between publish and mark-sent',
  '05': 'A lost confirm',
  '06': 'An unroutable message (no queue bound)',
  '07': 'The consumer dies between its commit and its ack',
  '08': 'The same message twice, and concurrently',
  '09': 'A poison message',
  '10': 'The handler fails, then succeeds',
  '11': 'Attempts exhausted, dead, requeued',
  '12': 'The database goes down under pay',
  '13': 'A message lost outside the mechanism: the reconciler',
};

function scenarioTitle(name) {
  const number = name.slice(0, 2);
  const title = SCENARIO_TITLES[number] ? t(SCENARIO_TITLES[number]) : name.slice(3).replaceAll('-', ' ');
  return `${t('Scenario {0}', number)}: ${title}`;
}

function switchItem(service, sw) {
  const key = `${service}-${sw.switch}`;
  const unitLabel = t(sw.unit === 'count' ? 'messages' : 'seconds');
  return el(
    'li',
    { dataset: { service, switch: sw.switch } },
    el('div', {}, el('strong', {}, sw.switch), ' ', badge(remaining(sw), sw.active ? 'bad' : 'ok')),
    el('div', { class: 'hint' }, SWITCHES[sw.switch] ? t(SWITCHES[sw.switch]) : ''),
    el('div', {}, `${t('Shows')} `,
      el('a', { href: SCENARIO_DOCS[language()], dataset: { key: `doc-${key}` } }, scenarioTitle(sw.scenario)),
      ' (scripts/scenarios/', el('code', {}, `${sw.scenario}.sh`), ') ',
      el('button', { type: 'button', dataset: { key: `explain-${key}` }, onclick: () => explain(sw.scenario) }, t('Explain'))),
    el(
      'div',
      { class: 'controls' },
      sw.unit === 'once'
        ? null
        : el('label', {}, `${unitLabel}`,
          field(`amount-${key}`, { type: 'number', min: 1, step: 1, value: defaultAmount(sw), 'aria-label': `${sw.switch} on ${service}: ${unitLabel}` })),
      el('button', { type: 'button', class: 'primary', dataset: { key: `on-${key}` }, 'aria-label': `Turn on ${sw.switch} on ${service}`, onclick: () => turn(service, sw, true) }, t('Turn on')),
      el('button', { type: 'button', dataset: { key: `off-${key}` }, 'aria-label': `Turn off ${sw.switch} on ${service}`, disabled: !sw.active, onclick: () => turn(service, sw, false) }, t('Turn off')),
    ),
  );
}

function drawFaults() {
  const container = document.getElementById('faults');
  const result = document.getElementById('faults-result');
  const blocks = SERVICES.map((service) => {
    const res = state.faults[service];
    const parts = [el('h3', {}, service)];
    if (state.admin !== 'ok') parts.push(el('p', { class: 'hint' }, t('Needs the admin token.')));
    else if (res && res.status === 404) {
      parts.push(el('p', { class: 'state problem' }, t('The teaching switches are off on {0}: it runs without DEMO_FAULTS=1.', service)));
    } else if (!res || !res.ok) parts.push(el('p', { class: 'state problem' }, res ? problem(res) : t('Reading…')));
    else parts.push(el('ul', { class: 'switches' }, res.data.switches.map((sw) => switchItem(service, sw))));
    return el('div', { class: 'service', dataset: { service } }, parts);
  });
  replace(container, blocks, el('p', { id: 'faults-result', role: 'status' }, result ? result.textContent : ''));
}

/// Shows the scenario's section of the scenarios document in the reader's language, rendered
/// from Markdown. A failed load says why and offers a retry; nothing is cached until it works.
async function explain(scenario) {
  state.explaining = scenario;
  const box = document.getElementById('explain');
  const error = document.getElementById('explain-error');
  const retry = document.getElementById('explain-retry');
  const body = document.getElementById('explain-text');
  const lang = language();
  box.hidden = false;
  error.hidden = true;
  retry.hidden = true;
  if (state.docs[lang] === undefined) {
    body.replaceChildren(el('p', { class: 'hint' }, t('Loading the explanation…')));
    let why = '';
    try {
      const res = await fetch(SCENARIO_DOCS[lang]);
      if (res.ok) state.docs[lang] = await res.text();
      else why = `HTTP ${res.status}`;
    } catch (e) {
      why = String(e);
    }
    if (state.docs[lang] === undefined) {
      body.replaceChildren();
      error.textContent = t('The explanation could not be loaded: {0}', why);
      error.hidden = false;
      retry.hidden = false;
      retry.onclick = () => explain(scenario);
      retry.focus();
      return;
    }
  }
  const number = scenario.slice(0, 2);
  const sections = state.docs[lang].split(/\n(?=## )/);
  const section = sections.find((part) => part.startsWith(`## ${number} `));
  if (!section) {
    document.getElementById('explain-title').textContent = t('Scenario {0}', number);
    body.replaceChildren(el('p', {}, t('No section {0} in the scenarios document.', number)));
    return;
  }
  const [heading, ...rest] = section.split('\n');
  document.getElementById('explain-title').textContent = `${t('Scenario {0}', number)}: ${heading.replace(/^## \d+ /, '')}`;
  // Our own document, compiled into the gateway: the one innerHTML of the page.
  body.innerHTML = marked.parse(rest.join('\n').trim());
  body.focus();
}

// ---------------------------------------------------------------------------------------
// The lane view: one order's messages, box by box

async function pollQueues() {
  await Promise.all(
    SERVICES.map(async (service) => {
      state.queues[service] = await adminCall(service, '/queue');
    }),
  );
}

async function pollReconciliation() {
  state.reconciliation = await adminCall('order', '/reconciliation');
}

/// Seconds from now until `iso` (negative when past), whole.
const secondsUntil = (iso) => Math.ceil((new Date(iso) - Date.now()) / 1000);

/// One box of a lane: a title, lines of facts, and where the message is.
function box(title, where, ...lines) {
  return el(
    'li',
    { class: `stage ${where}`, dataset: { stage: title } },
    el('strong', {}, title),
    where === 'here' ? [' ', badge(t('here'), 'wait')] : null,
    lines.filter(Boolean).map((line) => el('div', { class: 'fact' }, line)),
  );
}

function outboxFacts(row) {
  if (!row) return [t('no row yet')];
  return [
    t('status {0}, publish attempts {1}', row.status, row.attempts),
    row.in_flight && row.lease_expires_at ? t('claimed by a relay: lease ends in {0} s', Math.max(secondsUntil(row.lease_expires_at), 0)) : null,
    row.status === 'pending' && !row.in_flight && secondsUntil(row.next_attempt_at) > 0
      ? t('next attempt in {0} s', secondsUntil(row.next_attempt_at))
      : null,
    row.sent_at ? t('confirmed at {0}', time(row.sent_at)) : null,
    row.last_error ? row.last_error : null,
  ];
}

function queueFacts(service) {
  const res = state.queues[service];
  if (!res) return [t('Reading…')];
  if (!res.ok) return [problem(res)];
  const q = res.data;
  return [
    q.unacked === null
      ? t('ready {0} · consumers {1} (unacked: needs the management API)', q.ready, q.consumers)
      : t('ready {0} · unacked {1} · consumers {2}', q.ready, q.unacked, q.consumers),
    el('span', { class: 'hint' }, t('counts of the whole queue, read from the broker ({0})', q.source)),
  ];
}

function inboxFacts(row) {
  if (!row) return [t('no row yet')];
  const copies = 1 + (row.duplicates || 0);
  return [
    t('status {0}, handler attempts {1}', row.status, row.attempts),
    el('span', { class: row.duplicates ? 'copies dup' : 'copies' },
      t('copies received: {0}', copies),
      row.duplicates ? ` (${t('{0} dropped as duplicates', row.duplicates)})` : ''),
    row.last_error ? row.last_error : null,
  ];
}

/// Where a message is: each box before it passed, it here, the rest still to come.
function places(reached, count) {
  return Array.from({ length: count }, (_, i) => (i < reached ? 'passed' : i === reached ? 'here' : 'todo'));
}

function lane(title, stages, reached) {
  const where = places(reached, stages.length);
  return [
    el('h3', {}, title),
    el('ol', { class: 'lane', 'aria-label': title }, stages.map(([name, lines], i) => box(name, where[i], ...lines))),
  ];
}

function drawLane() {
  const container = document.getElementById('lane');
  if (state.admin !== 'ok') {
    replace(container, el('p', { class: 'hint' }, t('Needs the admin token.')));
    return;
  }
  const id = state.lane;
  const told = id && state.stories.get(id);
  if (!id || !told) {
    replace(container, el('p', { class: 'hint' }, id ? t('Reading…') : t('Buy an order, or press Watch on one, to follow its messages.')));
    return;
  }
  const mine = told.order.ok ? told.order.data : null;
  const theirs = told.pay.ok ? told.pay.data : { order_created: [], payment: null, replies: [] };
  if (!mine) {
    replace(container, el('p', { class: 'state problem' }, `order: ${problem(told.order)}`));
    return;
  }
  const out = mine.order_created;
  const inbox = theirs.order_created[0];
  const payment = theirs.payment;
  // The box the OrderCreated message has reached: 0 outbox, 1 broker, 2 inbox, 3 effect, 4 beyond.
  let first = 0;
  if (out && out.status === 'sent') first = 1;
  if (inbox) first = inbox.status === 'processed' ? 3 : 2;
  if (payment) first = 4;
  const reply = theirs.replies[0];
  const back = mine.replies[0];
  const settled = mine.order.status !== 'PENDING_PAYMENT';
  let second = 0;
  if (reply && reply.status === 'sent') second = 1;
  if (back) second = back.status === 'processed' ? 3 : 2;
  if (settled && back) second = 4;
  if (!reply) second = -1;
  replace(
    container,
    el('p', { class: 'hint' }, el('span', { class: 'id', title: id }, t('order {0}', id))),
    lane(t('OrderCreated: order → pay'), [
      [t("order's outbox"), outboxFacts(out)],
      [t('broker: {0}', state.queues.pay && state.queues.pay.ok ? state.queues.pay.data.queue : 'pay'), queueFacts('pay')],
      [t("pay's inbox"), inboxFacts(inbox)],
      [t('effect: payment'), [payment ? `${payment.status}${payment.failure_reason ? ` (${payment.failure_reason})` : ''}` : t('no row yet'),
        t('payments for this order: {0}', payment ? 1 : 0)]],
    ], first),
    lane(reply ? t('{0}: pay → order', reply.event_type) : t('Reply: pay → order'), [
      [t("pay's outbox"), outboxFacts(reply)],
      [t('broker: {0}', state.queues.order && state.queues.order.ok ? state.queues.order.data.queue : 'order'), queueFacts('order')],
      [t("order's inbox"), inboxFacts(back)],
      [t('effect: order settled'), [mine.order.status]],
    ], second),
  );
}

// ---------------------------------------------------------------------------------------
// The reconciler, the script cards, when the services last answered

function drawReconciler() {
  const container = document.getElementById('reconciler');
  if (state.admin !== 'ok') {
    replace(container, el('p', { class: 'hint' }, t('Needs the admin token.')));
    return;
  }
  const res = state.reconciliation;
  if (!res || !res.ok) {
    replace(container, el('p', { class: 'state problem' }, res ? problem(res) : t('Reading…')));
    return;
  }
  const r = res.data;
  const pass = r.last_report;
  if (!pass) {
    replace(container, el('p', {}, t('No pass yet (it runs every {0} s and looks at orders pending longer than {1} s).', r.interval_secs, r.pending_after_secs)));
    return;
  }
  replace(
    container,
    el('p', {}, t('Last pass: {0} → {1}', time(pass.started_at), time(pass.finished_at))),
    el('dl', { class: 'counts' }, [
      [t('looked at'), pass.looked_at],
      [t('found: unknown to pay'), pass.found.unknown_to_pay],
      [t('found: settled by pay'), pass.found.settled_by_pay],
      [t('repaired: republished'), pass.fixed.republished],
      [t('repaired: settled'), pass.fixed.settled],
      [t('reported (not repairable)'), pass.unfixed_count],
    ].map(([name, value]) => el('div', {}, el('dt', {}, name), el('dd', {}, value)))),
    pass.unfixed.length
      ? el('ul', {}, pass.unfixed.map((u) => el('li', {}, el('span', { class: 'id' }, short(u.order_id)), ` ${u.reason}`)))
      : null,
    pass.error ? el('p', { class: 'state problem' }, t('stopped early: {0}', pass.error)) : null,
    el('p', { class: 'hint' }, t('Since start: {0}', t('{0} passes, {1} republished, {2} settled, {3} reported',
      r.since_start.passes, r.since_start.fixed.republished, r.since_start.fixed.settled, r.since_start.unfixed))),
  );
}

function drawScriptCards() {
  const container = document.getElementById('script-cards');
  replace(
    container,
    SCRIPT_SCENARIOS.map((name) =>
      el(
        'li',
        { class: 'script-card', dataset: { scenario: name } },
        el('strong', {}, scenarioTitle(name)),
        el('div', {}, t('Run: {0}', ''), el('code', {}, `scripts/scenarios/${name}.sh`)),
        el('button', { type: 'button', dataset: { key: `explain-script-${name}` }, onclick: () => explain(name) }, t('Explain')),
      ),
    ),
  );
}

function drawHeard() {
  const parts = SERVICES.map((service) => {
    const at = state.heard[service];
    if (!at) return t('Not heard from {0} yet', service);
    return t('Last heard from {0}: {1} ({2} s ago)', service, time(at.toISOString()), ((Date.now() - at) / 1000).toFixed(1));
  });
  document.getElementById('heard').textContent = parts.join(' · ');
}

function drawAll() {
  showAdminState();
  drawHeard();
  drawLane();
  drawOrders();
  drawTables();
  drawDead();
  drawFaults();
  drawReconciler();
}

// ---------------------------------------------------------------------------------------
// The loop

let ticking = false;

async function tick() {
  if (ticking) return;
  ticking = true;
  try {
    const jobs = [pollOrders()];
    if (state.token) {
      jobs.push(pollTables().then(() =>
        state.admin === 'ok' ? Promise.all([pollStories(), pollFaults(), pollQueues(), pollReconciliation()]) : null));
    } else state.admin = 'none';
    await Promise.all(jobs);
    drawAll();
  } finally {
    ticking = false;
  }
}

function showLanguage() {
  setLanguage(language());
  translatePage();
  // The button names the other language, in that language.
  document.getElementById('lang-next').textContent = language() === 'zh' ? 'English' : '中文';
  drawScriptCards();
}

function start() {
  showLanguage();
  document.getElementById('lang').addEventListener('click', () => {
    setLanguage(language() === 'zh' ? 'en' : 'zh');
    showLanguage();
    drawAll();
    if (!document.getElementById('explain').hidden && state.explaining) explain(state.explaining);
  });
  const tokenInput = document.getElementById('token');
  tokenInput.value = state.token;
  document.getElementById('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    state.token = tokenInput.value.trim();
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
    tick();
  });
  document.getElementById('forget-token').addEventListener('click', () => {
    state.token = '';
    tokenInput.value = '';
    sessionStorage.removeItem(TOKEN_KEY);
    tick();
  });
  document.getElementById('buy-form').addEventListener('submit', buy);
  document.getElementById('explain-close').addEventListener('click', () => {
    document.getElementById('explain').hidden = true;
  });
  tick();
  setInterval(tick, POLL_MS);
}

start();
