// The dashboard's two languages. The English text is the key: `t('Buy')` is 'Buy' in English
// and the Chinese entry in Chinese; a text without an entry stays English. `{0}`, `{1}`… are
// filled from the arguments. The reader's choice is kept in localStorage.
//
// Static text in index.html carries `data-i18n` (its English content is the key) or
// `data-i18n-attr="placeholder"` and the like; `translatePage` rewrites it on a switch.

const LANG_KEY = 'lmt-lang';

const ZH = {
  // index.html
  'Local message table: the dashboard': '本地消息表：仪表盘',
  'Skip to the content': '跳到正文',
  'Local message table': '本地消息表',
  'order → pay over RabbitMQ, watched live': 'order → pay，经 RabbitMQ，实时观察',
  'Admin token': '管理令牌',
  'Use token': '使用令牌',
  Forget: '清除',
  'Place an order': '下单',
  User: '用户',
  Item: '商品',
  'Amount (cents)': '金额（分）',
  '(optional)': '（可选）',
  Buy: '购买',
  'alice and bob have money, carol has none, anyone else is unknown to pay.': 'alice 和 bob 有余额，carol 没有，其他用户 pay 不认识。',
  'Recent orders': '最近的订单',
  '(every second)': '（每秒刷新）',
  Created: '创建时间',
  Order: '订单',
  Amount: '金额',
  Status: '状态',
  Story: '经过',
  'Message tables': '消息表',
  'Dead messages': 'dead 消息',
  'Attempts exhausted, expired or unreadable: kept for an operator, never retried by themselves. Requeue one once its cause is fixed.':
    '重试耗尽、过期或无法解析：留给运维处理，不会自行重试。原因修复后可重新入队。',
  'Teaching switches': '教学开关',
  'Break delivery on purpose and watch the mechanism recover. Each switch names the failure scenario it shows.':
    '故意破坏投递，观察机制如何恢复。每个开关都标明它演示的故障场景。',
  'Close the explanation': '关闭说明',
  'Watch a message move': '看一条消息走完全程',
  'The last order you bought or opened: its OrderCreated message from order\'s outbox through the broker into pay\'s inbox and its effect, then pay\'s reply the same way back. The highlighted box is where the message is now.':
    '你最近购买或展开的订单：OrderCreated 消息从 order 的 outbox 经 broker 进入 pay 的 inbox 并产生效果，pay 的回复再沿同样的路回来。高亮的格子是消息现在所在的位置。',
  'The reconciler': '补单（reconciler）',
  'order\'s reconciler looks at orders pending too long and asks pay about them: it repairs what the mechanism could not (a message lost outside it).':
    'order 的 reconciler 检查等待过久的订单并向 pay 查询：修复机制本身无法处理的情况（在机制之外丢失的消息）。',
  'Scenarios without a switch: run the script': '没有开关的场景：运行脚本',
  'These failures need a process killed, a transaction rolled back or a database stopped: a script on the machine does it and prints what it sees. Run it in a terminal at the repository root and watch this page.':
    '这些故障需要杀掉进程、回滚事务或停掉数据库：由本机上的脚本完成并打印它看到的内容。在仓库根目录的终端里运行，同时观察本页。',
  'Served by the gateway: it has no database; this page joins what order and pay each say about their own rows.':
    '由网关提供：网关没有数据库；本页把 order 和 pay 各自对自己数据行的说明拼接起来。',
  'Scenario explanations:': '场景说明：',
  Language: '语言',
  // admin state
  'Admin: no token yet. Enter ADMIN_TOKEN to see the message tables, the stories and the switches.':
    '管理：尚无令牌。输入 ADMIN_TOKEN 以查看消息表、订单经过和开关。',
  'Admin: connected. The message tables, stories and switches are live.': '管理：已连接。消息表、订单经过和开关实时更新。',
  'Admin is off: the gateway answers 404 for /admin (it runs without ADMIN_TOKEN). Orders still work.':
    '管理功能关闭：网关对 /admin 返回 404（未设置 ADMIN_TOKEN）。下单仍然可用。',
  "Admin token refused (HTTP 401): it is not the gateway's ADMIN_TOKEN. Enter it again.": '管理令牌被拒绝（HTTP 401）：不是网关的 ADMIN_TOKEN。请重新输入。',
  'Admin: the gateway did not answer.': '管理：网关没有应答。',
  'Needs the admin token.': '需要管理令牌。',
  'Reading…': '读取中…',
  // last heard
  'Last heard from {0}: {1} ({2} s ago)': '最近一次收到 {0} 的应答：{1}（{2} 秒前）',
  'Not heard from {0} yet': '尚未收到 {0} 的应答',
  // orders and stories
  'Show story': '展开经过',
  'Hide story': '收起经过',
  Watch: '观察',
  'No orders yet: place one.': '还没有订单：下一单试试。',
  done: '完成',
  waiting: '等待',
  // switches
  'Turn on': '开启',
  'Turn off': '关闭',
  Explain: '说明',
  inactive: '未开启',
  'active: {0} left': '已开启：剩 {0} 次',
  'active: {0} s left': '已开启：剩 {0} 秒',
  active: '已开启',
  messages: '条消息',
  seconds: '秒',
  Shows: '演示',
  'Scenario {0}': '场景 {0}',
  'The relay stops claiming outbox rows: messages wait pending, nothing is lost.': 'relay 停止认领 outbox 行：消息停在 pending，什么都不会丢。',
  'The inbox handler fails the next N messages (a technical error: retried).': 'inbox 处理器让接下来 N 条消息失败（技术错误：会重试）。',
  "The relay publishes but treats the next N broker confirms as lost: it publishes again; the receiver's inbox drops the copy.":
    'relay 正常发布，但把接下来 N 个 broker confirm 当作丢失：再发一次；接收方的 inbox 丢弃副本。',
  "The service's broker connections are closed once: relay and consumer reconnect.": '服务与 broker 的连接被关闭一次：relay 和消费者自动重连。',
  'The consumer stops taking deliveries: messages wait in the queue.': '消费者停止接收投递：消息在队列中等待。',
  'The next message is delivered twice: the inbox processes it once.': '下一条消息投递两次：inbox 只处理一次。',
  'Crash after commit: the consumer commits the next N deliveries, then drops its connection before the ack. The broker delivers again; the inbox drops the copy as a duplicate (see the copies in the lane).':
    '提交后崩溃：消费者提交接下来 N 次投递后、在 ack 之前断开连接。broker 再次投递；inbox 把副本当作重复丢弃（见消息流中的副本数）。',
  // explain
  'Loading the explanation…': '正在加载说明…',
  'The explanation could not be loaded: {0}': '说明加载失败：{0}',
  Retry: '重试',
  'No section {0} in the scenarios document.': '场景文档中没有第 {0} 节。',
  // lane
  'Buy an order, or press Watch on one, to follow its messages.': '下单，或在某个订单上点“观察”，即可跟随它的消息。',
  'OrderCreated: order → pay': 'OrderCreated：order → pay',
  '{0}: pay → order': '{0}：pay → order',
  'Reply: pay → order': '回复：pay → order',
  "order's outbox": 'order 的 outbox',
  "pay's outbox": 'pay 的 outbox',
  'broker: {0}': 'broker：{0}',
  "pay's inbox": 'pay 的 inbox',
  "order's inbox": 'order 的 inbox',
  'effect: payment': '效果：支付',
  'effect: order settled': '效果：订单进入终态',
  'no row yet': '还没有这一行',
  'status {0}, publish attempts {1}': '状态 {0}，发布次数 {1}',
  'claimed by a relay: lease ends in {0} s': '已被 relay 认领：租约 {0} 秒后到期',
  'next attempt in {0} s': '{0} 秒后再次尝试',
  'confirmed at {0}': '{0} 已确认',
  'ready {0} · unacked {1} · consumers {2}': '待投递 {0} · 未 ack {1} · 消费者 {2}',
  'ready {0} · consumers {1} (unacked: needs the management API)': '待投递 {0} · 消费者 {1}（未 ack 数需要管理 API）',
  'counts of the whole queue, read from the broker ({0})': '整个队列的计数，读自 broker（{0}）',
  'status {0}, handler attempts {1}': '状态 {0}，处理次数 {1}',
  'copies received: {0}': '收到的副本：{0}',
  '{0} dropped as duplicates': '{0} 份作为重复被丢弃',
  'payments for this order: {0}': '该订单的支付：{0} 笔',
  'order {0}': '订单 {0}',
  here: '当前位置',
  // reconciler
  'No pass yet (it runs every {0} s and looks at orders pending longer than {1} s).': '还没有运行过（每 {0} 秒运行一次，检查等待超过 {1} 秒的订单）。',
  'Last pass: {0} → {1}': '上一次：{0} → {1}',
  'looked at': '检查',
  'found: unknown to pay': '发现：pay 不知道',
  'found: settled by pay': '发现：pay 已结算',
  'repaired: republished': '修复：重新发布',
  'repaired: settled': '修复：已结算',
  'reported (not repairable)': '报告（无法修复）',
  'stopped early: {0}': '提前停止：{0}',
  'Since start: {0}': '启动以来：{0}',
  '{0} passes, {1} republished, {2} settled, {3} reported': '{0} 次运行，重新发布 {1}，结算 {2}，报告 {3}',
  // scenario cards
  'Run: {0}': '运行：{0}',
  // scenario titles (the headings of docs/zh-CN/scenarios.md)
  'Message sent, local transaction rolled back': '消息已发出，本地事务却回滚了',
  'Transaction committed, but the send failed': '事务已提交但消息发送失败',
  'The broker is down when the order is taken': '下单时 broker 宕机',
  'The relay dies between publish and mark-sent': 'relay 在发布之后、标记 sent 之前挂掉',
  'A lost confirm': '丢失的 confirm',
  'An unroutable message (no queue bound)': '无法路由的消息（没有绑定队列）',
  'The consumer dies between its commit and its ack': '消费者在提交之后、ack 之前挂掉',
  'The same message twice, and concurrently': '同一条消息重复投递与并发投递',
  'A poison message': '毒消息',
  'The handler fails, then succeeds': '处理失败后重试成功',
  'Attempts exhausted, dead, requeued': '重试耗尽后进入 dead 再重新入队',
  'The database goes down under pay': 'pay 的数据库宕机',
  'A message lost outside the mechanism: the reconciler': '机制之外丢失的消息：补单（reconciler）',
  // the story of an order
  'the gateway did not answer ({0})': '网关没有应答（{0}）',
  'Orders could not be read: {0}': '读取订单失败：{0}',
  'at {0}': '于 {0}',
  'status: {0}': '状态：{0}',
  'publish attempts: {0}': '发布次数：{0}',
  'handler attempts: {0}': '处理次数：{0}',
  'next attempt at {0}': '下次尝试于 {0}',
  'last error: {0}': '最近的错误：{0}',
  'The story needs the admin token (each service shows its message rows only to the operator).':
    '订单经过需要管理令牌（每个服务只向运维展示自己的消息行）。',
  'Reading the story…': '正在读取经过…',
  'Order committed (PENDING_PAYMENT) with its OrderCreated outbox row, in one transaction':
    '订单已提交（PENDING_PAYMENT），与它的 OrderCreated outbox 行在同一个事务里',
  'Order committed (was PENDING_PAYMENT) with its OrderCreated outbox row, in one transaction':
    '订单已提交（当时为 PENDING_PAYMENT），与它的 OrderCreated outbox 行在同一个事务里',
  "OrderCreated in order's outbox": 'OrderCreated 在 order 的 outbox 里',
  'row not found (retention deleted it?)': '找不到这一行（被保留期清理删掉了？）',
  'Published, confirmed by the broker': '已发布，broker 已确认',
  'a relay holds it now': '一个 relay 正持有它',
  "In pay's inbox": '在 pay 的 inbox 里',
  'pay has not received it': 'pay 还没有收到',
  "In pay's inbox (deduplicated by message id)": '在 pay 的 inbox 里（按消息 id 去重）',
  'Payment {0}': '支付 {0}',
  'payments for this order: 1 (payments.order_id is unique)': '该订单的支付：1 笔（payments.order_id 唯一）',
  Payment: '支付',
  "Reply in pay's outbox": 'pay 的 outbox 里的回复',
  "{0} in pay's outbox": '{0} 在 pay 的 outbox 里',
  '{0} published, confirmed by the broker': '{0} 已发布，broker 已确认',
  "Reply in order's inbox": 'order 的 inbox 里的回复',
  "{0} in order's inbox": '{0} 在 order 的 inbox 里',
  'Order settled: {0}': '订单进入终态：{0}',
  Cancel: '取消',
  'orders held by a dead message': '被 dead 消息拖住的订单',
  'parked (came before their predecessor)': '停放（先于前一条到达）',
  'Order {0} cancel accepted: {1}': '订单 {0} 的取消已受理：{1}',
  'Cancel refused: {0}': '取消被拒绝：{0}',
  "Cancelled: OrderCancelled in order's outbox, in one transaction with the status change": '已取消：OrderCancelled 写入 order 的 outbox，与状态变更在同一事务中',
  "OrderCancelled in pay's inbox": 'OrderCancelled 进入 pay 的 inbox',
  'Refunded: {0} credited back to {1}': '已退款：{0} 退回给 {1}',
  'refunds for this order: 1 (refunds.order_id is unique)': '该订单的退款：1 笔（refunds.order_id 唯一）',
  'Tombstone: pay will never charge this order': '墓碑：pay 永远不会为该订单扣款',
  'Refund or tombstone': '退款或墓碑',
  'Cancellation finished: {0}': '取消完成：{0}',
  'Cancellation finished': '取消完成',
  'Order settled': '订单进入终态',
  // placing an order
  'Sending…': '发送中…',
  'Order {0} taken: {1}': '订单 {0} 已受理：{1}',
  'Order {0} replayed (same Idempotency-Key): {1}': '订单 {0} 已重放（同一个 Idempotency-Key）：{1}',
  'Refused: {0}': '被拒绝：{0}',
  // the message tables
  'Outbox (messages it sends)': 'Outbox（它发送的消息）',
  'Inbox (messages it received)': 'Inbox（它收到的消息）',
  'in flight': '发送中',
  'oldest pending': '最早的 pending',
  '{0} s': '{0} 秒',
  'failed (to retry)': 'failed（待重试）',
  'duplicates dropped*': '丢弃的重复*',
  'handler failures*': '处理失败*',
  'poison*': '毒消息*',
  '* since this process started': '* 自本进程启动以来',
  Throughput: '吞吐',
  Backlog: '积压',
  published: '已发布',
  processed: '已处理',
  'messages/s': '条/秒',
  'outbox pending': 'outbox 待发',
  'inbox awaiting retry': 'inbox 待重试',
  rows: '行',
  'solid: {0} {1}; dashed: {2} {3} ({4}, now); top of the chart: {5}': '实线：{0} {1}；虚线：{2} {3}（{4}，当前）；图顶：{5}',
  // dead messages
  'Requeued {0} message {1} on {2}.': '已把 {2} 的 {0} 消息 {1} 重新入队。',
  'Requeue refused: {0}': '重新入队被拒绝：{0}',
  '{0}: none dead': '{0}：没有 dead',
  '{0}: {1} dead': '{0}：{1} 条 dead',
  '{0}, attempts: {1}': '{0}，尝试次数：{1}',
  'reason: {0}': '原因：{0}',
  'none recorded': '没有记录',
  Requeue: '重新入队',
  'Poison: cannot requeue': '毒消息：不能重新入队',
  // switches, results
  '{0}: {1} on.': '{0}：{1} 已开启。',
  '{0}: {1} off.': '{0}：{1} 已关闭。',
  '{0}: {1} refused: {2}': '{0}：{1} 被拒绝：{2}',
  'The teaching switches are off on {0}: it runs without DEMO_FAULTS=1.': '{0} 上的教学开关没有打开：它运行时没有设置 DEMO_FAULTS=1。',
};

const DICTIONARIES = { en: {}, zh: ZH };

export function language() {
  const saved = localStorage.getItem(LANG_KEY);
  return saved === 'zh' || saved === 'en' ? saved : 'en';
}

export function setLanguage(lang) {
  localStorage.setItem(LANG_KEY, lang);
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
}

/// The text in the reader's language, `{0}`… filled in.
export function t(english, ...args) {
  const text = DICTIONARIES[language()][english] ?? english;
  return text.replace(/\{(\d+)\}/g, (_, i) => String(args[Number(i)]));
}

/// Rewrites index.html's static text (remembering the English the first time).
export function translatePage() {
  for (const node of document.querySelectorAll('[data-i18n]')) {
    if (!node.dataset.en) node.dataset.en = node.textContent.trim();
    node.textContent = t(node.dataset.en);
  }
  for (const node of document.querySelectorAll('[data-i18n-attr]')) {
    const attr = node.dataset.i18nAttr;
    if (!node.dataset.en) node.dataset.en = node.getAttribute(attr);
    node.setAttribute(attr, t(node.dataset.en));
  }
  document.title = t('Local message table: the dashboard');
}
