/*
 * The local message table, model-checked: order -> pay over RabbitMQ, and pay's answer back.
 *
 * One process per actor of the real system; one atomic step per database statement or
 * broker exchange; each step's comment names the Rust function it stands for. How to read
 * it, what each property means and the story of each counterexample: docs/model.md.
 *
 * Bounds (so the full check is exhaustive and takes seconds): 2 orders, a 2-cent account,
 * and at most MAXF faults in a run (crashes, lost publishes, nacks, lost confirms, leases
 * expiring under a live relay, duplicate deliveries, failing handlers). Time is not a
 * variable: a lease "runs out" whenever the resend scheduler takes the row back.
 *
 * Variants, each removing one part of the mechanism (scripts/model-check.sh runs them):
 *   -DNO_TOKEN          settles are not guarded by the claim token
 *   -DACK_BEFORE_COMMIT the consumer acks the delivery before its transaction commits
 *   -DNO_DEDUP          the inbox insert does not stop a known message id
 *   -DNO_PAY_GUARD      pay's unique payments.order_id does not stop a second payment
 *   -DNO_MANDATORY      the relay publishes without `mandatory`
 */

#ifndef MAXF
#define MAXF 2
#endif

#define N 2            /* orders; message m < N is OrderCreated of order m,       */
#define M 4            /* message N + i is pay's answer about order i             */
#define INITIAL 2      /* the account's balance, in cents                         */
#define amt(i) (i + 1) /* order 0 costs 1 cent, order 1 costs 2: both cannot be paid */

/* Leg t: 0 = order -> pay (order's outbox, pay's queue and inbox),
 *        1 = pay -> order (pay's outbox, order's queue and inbox).
 * Leg t carries messages t*N and t*N + 1.                                          */
#define NONE 0
/* outbox row status (crate::status::OutboxStatus; "in flight" is a pending row with a token) */
#define PENDING 1
#define SENT 2
/* inbox row status (crate::status::InboxStatus) */
#define PROCESSED 1
#define FAILED 2
/* order status (order's payment_results) and pay's payment rows */
#define PENDING_PAYMENT 1
#define PAID 2
#define PAYMENT_FAILED 3
/* what the relay learns about one publish (outbox::relay::PublishOutcome) */
#define CONFIRMED 1
#define NOT_CONFIRMED 2 /* nack, return, timeout, lost confirm, channel error */
#define CRASHED 3
#define NOBODY 255

/* ---- the databases ---- */
byte order[N];      /* order's `orders` row                         */
byte st[M];         /* `outbox` row status (both services' outboxes) */
byte tok[M];        /* its claim_token: 0 = NULL, else the relay's   */
byte inbox[M];      /* `inbox` row status (both services' inboxes)   */
byte answer[N];     /* pay's decision, carried by message N + i      */
byte paid[N];       /* pay's COMPLETED `payments` rows per order     */
byte refused[N];    /* pay's FAILED `payments` rows per order        */
byte balance = INITIAL;

/* ---- the broker ---- */
bool bound[2];      /* the leg's queue is declared and bound         */
byte q[M];          /* copies of message m ready in its queue        */
byte unacked[M];    /* copies delivered to a consumer, not acked     */

/* ---- the processes' volatile state, seen by the checks ---- */
byte holding[4] = NOBODY; /* the row relay r (its token) is working on    */
bool busy[2];       /* leg t's consumer holds a delivery in memory   */
byte faults;        /* faults so far, at most MAXF                   */
byte commits[M];    /* ghost: committed handler runs per message id  */

/* ---- the safety properties: each names what went wrong, and is asserted false ---- */
bool order_without_message;  /* an order committed without its message, or the reverse */
bool message_lost;           /* a sent message nobody holds: not queued, unacked or in an inbox */
bool sent_unrouted;          /* a row marked sent that the broker never queued             */
bool sent_overwritten;       /* a sent row changed by a late settle                       */
bool handler_ran_twice;      /* one message id's handler committed twice                   */
bool money_not_conserved;    /* the account lost more (or less) than the paid orders cost  */
bool answer_contradicts;     /* an order settled one way, then answered the other          */
/* ---- and where every run stops for good (all processes blocked): the liveness properties ---- */
bool order_never_settled;    /* a committed order still PENDING_PAYMENT                    */
bool row_claimed_forever;    /* a row still held by a claim                                */

#define fault_ok (faults < MAXF)
#define violated(flag) flag = true; assert(!flag)

#define claimable(k) (st[k] == PENDING && tok[k] == 0)
/* A claimed row whose lease may run out: always once its holder has crashed (it holds nothing,
 * or another row), and as a fault while the holder still works on it. */
#define expirable(k) (st[k] == PENDING && tok[k] != 0 && (holding[tok[k]] != k || fault_ok))

/* pick m among the two messages of leg t for which cond(m) holds (cond is a macro name) */
#define pick(t, cond, m) if :: cond(t * N) -> m = t * N :: cond(t * N + 1) -> m = t * N + 1 fi
#define any(t, cond) (cond(t * N) || cond(t * N + 1))
#define queued(k) (q[k] > 0)
#define failed(k) (inbox[k] == FAILED)

/* ======================= order: POST /buy ======================= */

/* orders::buy: the order row and its OrderCreated row (outbox::enqueue_quiet) in ONE
 * transaction; the atomic step is its COMMIT. A request that fails before it leaves neither. */
active proctype order_service()
{
    byte i;
    do
    :: i < N ->
        if
        :: atomic { order[i] = PENDING_PAYMENT; st[i] = PENDING }  /* INSERT orders; enqueue; COMMIT */
        :: skip                                                    /* rolled back: neither row */
        fi;
        i++
    :: else -> break
    od
}

/* ======================= the relays (outbox::relay) ======================= */

/* Relay `me` (its claim token) of leg t's outbox: Relay::run_once, round after round.
 * It may crash after any step, or stall (not be scheduled) for as long as it likes. */
inline relay_round(t, me)
{
    atomic { any(t, claimable) -> pick(t, claimable, m); tok[m] = me; holding[me] = m }  /* Relay::claim */
    if
    :: atomic { /* Relay::publish: publish_window (mandatory, persistent), await_confirms, classify */
        if
        :: bound[t] -> q[m]++; stored = true; out = CONFIRMED   /* routed, stored, acked */
#ifdef NO_MANDATORY
        :: !bound[t] -> out = CONFIRMED        /* unroutable: acked, and silently dropped */
#else
        :: !bound[t] -> out = NOT_CONFIRMED    /* unroutable: basic.return, then ack      */
#endif
        :: fault_ok -> faults++; out = NOT_CONFIRMED   /* basic.nack                                  */
        :: fault_ok -> faults++; out = NOT_CONFIRMED   /* lost with the connection, never stored      */
        :: fault_ok && bound[t] -> faults++; q[m]++; stored = true; out = NOT_CONFIRMED /* confirm lost */
        fi }
    :: atomic { fault_ok -> faults++; holding[me] = NOBODY; m = 0; out = CRASHED }  /* crash */
    fi;
    if
    :: atomic { out == CONFIRMED ->   /* Relay::settle: UPDATE .. SET status = 'sent' WHERE claim_token = $token */
#ifndef NO_TOKEN
        if :: tok[m] == me ->
#else
        if :: true ->
#endif
            if :: !stored -> violated(sent_unrouted) :: else fi;
            st[m] = SENT; tok[m] = 0
        :: else    /* the lease ran out and the row was taken over: nothing changes */
        fi;
        holding[me] = NOBODY; m = 0; out = 0; stored = false }
    :: atomic { out == NOT_CONFIRMED ->  /* outbox::record_failures: back to pending, WHERE claim_token = $token */
#ifndef NO_TOKEN
        if :: tok[m] == me ->
#else
        if :: true ->
#endif
            if :: st[m] == SENT -> violated(sent_overwritten) :: else fi;
            st[m] = PENDING; tok[m] = 0
        :: else
        fi;
        holding[me] = NOBODY; m = 0; out = 0; stored = false }
    :: atomic { out != CRASHED && fault_ok -> faults++; holding[me] = NOBODY; m = 0; out = 0; stored = false }  /* crash */
    :: out == CRASHED -> out = 0   /* restarted: a new round */
    fi
}

/* Two relays on order's outbox (OUTBOX_RELAYS=2, or two instances), one on pay's. */
active proctype order_relay_1() { byte m; byte out; bool stored; end: do :: relay_round(0, 1) od }
active proctype order_relay_2() { byte m; byte out; bool stored; end: do :: relay_round(0, 2) od }
active proctype pay_relay()     { byte m; byte out; bool stored; end: do :: relay_round(1, 3) od }

/* outbox::resend_scheduler, ResendScheduler::tick step 1: a row whose lease expired goes back
 * to pending (record_failures, compare-and-set on the token it read). The lease of a crashed
 * relay always runs out; one that runs out under a live relay is a fault. */
active proctype resend_scheduler()
{
    byte m;
end:
    do
    :: atomic { (any(0, expirable) || any(1, expirable)) ->
        if
        :: expirable(0) -> m = 0
        :: expirable(1) -> m = 1
        :: expirable(2) -> m = 2
        :: expirable(3) -> m = 3
        fi;
        if :: holding[tok[m]] == m -> faults++ :: else fi;   /* its relay was alive */
        tok[m] = 0; m = 0 }
    od
}

/* ======================= the handlers ======================= */

/* pay's PaymentHandler::pay_all, on the inbox's transaction: the payment row first (its unique
 * order_id: a second message about one order pays nothing), the debit when the balance
 * allows, and the answer in pay's outbox (outbox::enqueue), all in that transaction. */
inline pay(i)
{
    if
#ifndef NO_PAY_GUARD
    :: paid[i] + refused[i] > 0 -> skip       /* INSERT payments .. ON CONFLICT (order_id) DO NOTHING */
#endif
    :: else ->
        if
        :: balance >= amt(i) -> balance = balance - amt(i); paid[i]++; answer[i] = PAID
        :: else -> refused[i]++; answer[i] = PAYMENT_FAILED
        fi;
        if
        :: balance + (paid[0] > 0) * amt(0) + (paid[1] > 0) * amt(1) != INITIAL ->
            violated(money_not_conserved)
        :: else
        fi;
        st[N + i] = PENDING                   /* outbox::enqueue of the answer */
    fi
}

/* order's PaymentResultHandler: payment_results::settle, guarded by status = PENDING_PAYMENT. */
inline settle(i)
{
    if
    :: order[i] == PENDING_PAYMENT -> order[i] = answer[i]
    :: order[i] == answer[i] -> skip          /* Settled::Already */
    :: else -> violated(answer_contradicts)
    fi
}

inline handle(t, m)
{
    if
    :: t == 0 -> pay(m)
    :: else -> settle(m - N)
    fi;
    commits[m]++;
    if :: commits[m] > 1 -> violated(handler_ran_twice) :: else fi
}

/* ======================= the consumers (inbox) ======================= */

/* Leg t's InboxConsumer (t = 0: pay's, t = 1: order's), one delivery, manual ack.
 * It may crash (or lose its connection) at any step: the broker requeues what it did not ack. */
inline consume(t)
{
    atomic { any(t, queued) -> pick(t, queued, m);   /* basic.deliver */
        if
        :: q[m]--
        :: fault_ok -> faults++   /* the broker keeps a copy: this message is delivered twice */
        fi;
        unacked[m]++; busy[t] = true }
#ifdef ACK_BEFORE_COMMIT
    atomic { unacked[m]--; acked = true }   /* basic.ack, before the transaction */
#endif
    if
    :: atomic {  /* Inbox::receive_batch: ONE transaction, then COMMIT */
        if
#ifndef NO_DEDUP
        :: inbox[m] != NONE -> skip   /* Inbox::remember: INSERT .. ON CONFLICT DO NOTHING: a duplicate */
#endif
        :: else ->
            if
            :: t == 0 && fault_ok -> faults++; inbox[m] = FAILED   /* the handler failed: rolled back to
                                                                      its savepoint, record_failure */
            :: else -> handle(t, m); inbox[m] = PROCESSED
            fi
        fi;
        committed = true }
    :: atomic { fault_ok -> faults++;   /* crash before COMMIT: the transaction is rolled back */
        if :: !acked -> unacked[m]--; q[m]++ :: else fi;   /* the broker requeues the unacked */
        busy[t] = false; acked = false; m = 0 }
    fi;
    if
    :: atomic { committed && !acked -> unacked[m]--; busy[t] = false; committed = false; m = 0 }
                                                   /* handle_batch: basic.ack after the COMMIT */
    :: atomic { committed && !acked && fault_ok -> faults++;   /* crash between COMMIT and ack */
        unacked[m]--; q[m]++; busy[t] = false; committed = false; m = 0 }   /* redelivered */
    :: atomic { committed && acked -> busy[t] = false; committed = false; acked = false; m = 0 }
    :: !committed -> skip   /* crashed: reconnects */
    fi
}

/* InboxConsumer::consume_until_lost: declare the queue and bind it, then consume. */
active proctype pay_consumer()
{
    byte m; bool acked; bool committed;
    bound[0] = true;
end:
    do :: consume(0) od
}

active proctype order_consumer()
{
    byte m; bool acked; bool committed;
    bound[1] = true;
end:
    do :: consume(1) od
}

/* pay's RetrySweeper::retry_next: a failed inbox row, locked, run again through
 * Inbox::process; record_processed, or record_failure for the next backoff. */
active proctype retry_sweeper()
{
    byte m;
end:
    do
    :: atomic { any(0, failed) -> pick(0, failed, m);
        if
        :: handle(0, m); inbox[m] = PROCESSED   /* Inbox::process, record_processed, COMMIT */
        :: fault_ok -> faults++                 /* fails again: record_failure */
        fi;
        m = 0 }
    od
}

/* ======================= the checks ======================= */

/* No message lost: a message whose row is `sent` is queued, delivered and unacked, or in its
 * receiver's inbox, whenever its consumer holds nothing in memory. */
#define lost(k) (st[k] == SENT && q[k] == 0 && unacked[k] == 0 && inbox[k] == NONE && !busy[k / N])
#define orphan(i) ((order[i] != NONE) != (st[i] != NONE))

#define settled(i) (order[i] != PENDING_PAYMENT)
#define unclaimed (tok[0] == 0 && tok[1] == 0 && tok[2] == 0 && tok[3] == 0)

#ifndef LIVENESS   /* checked in the safety run; left out of the (costlier) liveness runs */
active proctype invariants()
{
end:
    if
    :: atomic { (lost(0) || lost(1) || lost(2) || lost(3)) -> violated(message_lost) }
    :: atomic { (orphan(0) || orphan(1)) -> violated(order_without_message) }
    /* `timeout`: no process can move any more. The liveness properties, on the runs that stop:
     * spin's fair cycle search (below) sees only the runs that go on for ever. */
    :: atomic { timeout && !(settled(0) && settled(1)) -> violated(order_never_settled) }
    :: atomic { timeout && !unclaimed -> violated(row_claimed_forever) }
    fi
}
#endif

/* Liveness, checked with `pan -a -f` (weak fairness) on the runs that never stop, and by the
 * `timeout` checks above on those that do; faults are finite (MAXF). */
ltl every_order_settled { <> [] (settled(0) && settled(1)) }
ltl nothing_claimed_forever { <> [] unclaimed }
