/*
 * Exchange: a uniform-price call auction run once per tick.
 *
 * Every tick the exchange takes the orders that arrived (sent by traders the
 * tick before), matches the highest bids against the lowest asks and trades
 * everything that crosses at one clearing price, halfway between the last
 * matched bid and ask.  That price is at or inside every matched order's
 * limit.  Orders are immediate-or-cancel: each gets exactly one fill message
 * back (possibly for 0 units) and the book starts empty again next tick.
 *
 * Ties at the same price are filled in inbox order, i.e. by trader id, which
 * is the canonical message order: priority is deterministic, not first-come.
 *
 * Observable state (12 bytes): u32 clearing price, u32 volume, u32 orders.
 *
 * config_i32 = [initial_price]
 *
 * Host calls per tick: 2 per order (recv + fill) + 2.
 */
#include "market.h"

/* The scenario's max_sends_per_tick for exchanges must be at least this, as
 * every order gets one fill. */
#define MAX_ORDERS 1024

typedef struct {
    uint32_t trader;
    uint32_t ref;
    uint32_t price;
    int32_t qty; /* units, > 0 */
    int32_t filled;
    bool buy;
} order;

static order orders[MAX_ORDERS];
static uint16_t bids[MAX_ORDERS], asks[MAX_ORDERS], scratch[MAX_ORDERS];
static uint32_t last_price;

int32_t we_init(int32_t agent_id, int64_t seed, int32_t config_len) {
    int32_t cfg[1];
    (void)agent_id;
    (void)seed;
    (void)config_len;
    if (we_config_i32s(cfg, 1) < 1 || cfg[0] <= 0) return 1;
    last_price = (uint32_t)cfg[0];
    return WE_OK;
}

static bool before(uint16_t a, uint16_t b, bool descending) {
    return descending ? orders[a].price > orders[b].price : orders[a].price < orders[b].price;
}

/* Stable bottom-up merge sort of order indices by price: stability keeps
 * equal prices in inbox order, and O(n log n) keeps the fuel needed by a busy
 * exchange predictable (insertion sort would be quadratic in orders). */
static void sort_by_price(uint16_t *idx, uint32_t n, bool descending) {
    uint16_t *src = idx, *dst = scratch;
    for (uint32_t width = 1; width < n; width *= 2) {
        for (uint32_t lo = 0; lo < n; lo += 2 * width) {
            uint32_t mid = lo + width < n ? lo + width : n;
            uint32_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            uint32_t i = lo, j = mid, k = lo;
            /* Take from the right run only when strictly better: stable. */
            while (i < mid && j < hi) dst[k++] = before(src[j], src[i], descending) ? src[j++] : src[i++];
            while (i < mid) dst[k++] = src[i++];
            while (j < hi) dst[k++] = src[j++];
        }
        uint16_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != idx) we_memcpy(idx, src, n * sizeof *idx);
}

static void reply(uint32_t trader, int32_t qty, uint32_t ref) {
    uint8_t out[MSG_BYTES];
    market_msg fill = {qty, last_price, ref};
    market_msg_store(out, fill);
    we_send((int32_t)trader, out, MSG_BYTES);
}

int32_t we_step(int64_t tick) {
    uint32_t n = 0, n_bids = 0, n_asks = 0;
    uint32_t src;
    uint8_t buf[MSG_BYTES];
    int32_t len;
    (void)tick;

    while ((len = we_recv(&src, buf, MSG_BYTES)) >= 0) {
        if (len != MSG_BYTES || src == WE_INFERENCE_SENDER) continue;
        market_msg m = market_msg_load(buf);
        if (m.qty == 0 || m.qty == INT32_MIN || m.price == 0) continue;
        if (n == MAX_ORDERS) {
            reply(src, 0, m.ref); /* book full: rejected, but still answered */
            continue;
        }
        order *o = &orders[n];
        o->trader = src;
        o->ref = m.ref;
        o->price = m.price;
        o->buy = m.qty > 0;
        o->qty = o->buy ? m.qty : -m.qty;
        o->filled = 0;
        if (o->buy) bids[n_bids++] = (uint16_t)n;
        else asks[n_asks++] = (uint16_t)n;
        n++;
    }

    sort_by_price(bids, n_bids, true);
    sort_by_price(asks, n_asks, false);

    uint32_t volume = 0, marginal_bid = 0, marginal_ask = 0;
    for (uint32_t i = 0, j = 0; i < n_bids && j < n_asks;) {
        order *b = &orders[bids[i]], *a = &orders[asks[j]];
        if (b->price < a->price) break;
        int32_t qb = b->qty - b->filled, qa = a->qty - a->filled;
        int32_t q = qb < qa ? qb : qa;
        b->filled += q;
        a->filled += q;
        volume += (uint32_t)q;
        marginal_bid = b->price;
        marginal_ask = a->price;
        if (b->filled == b->qty) i++;
        if (a->filled == a->qty) j++;
    }
    if (volume > 0) last_price = marginal_ask + (marginal_bid - marginal_ask) / 2;

    for (uint32_t k = 0; k < n; k++) {
        order *o = &orders[k];
        reply(o->trader, o->buy ? o->filled : -o->filled, o->ref);
    }

    uint32_t summary[3] = {last_price, volume, n};
    we_publish(summary, sizeof summary);
    return WE_STEP_CONTINUE;
}
