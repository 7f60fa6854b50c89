/*
 * Trader: sends one limit order per tick to its exchange and books the fills.
 *
 * Each trader has a private valuation of the asset.  It starts scattered
 * around the initial price, then every tick takes a random step and is pulled
 * a little towards the last clearing price the trader heard of, so beliefs
 * disperse and herd at the same time.  A trader whose valuation is above the
 * market price bids a little under its valuation; one below it asks a little
 * over.  Trades happen where the high valuations meet the low ones.
 *
 * Exchanges are listed first in the scenario, so they have ids
 * 0 .. n_exchanges-1 and trader `id` uses exchange `id % n_exchanges`.
 *
 * Observable state (16 bytes): i64 cash (cents), i32 position (units),
 * u32 valuation (cents).
 *
 * config_i32 = [n_exchanges, initial_price, max_position, max_qty, spread,
 *               volatility]   (prices in cents)
 *
 * Host calls per tick: recv x2 (one fill, then "empty"), rand, send,
 * publish = 5.
 */
#include "market.h"

#define N_PARAMS 6
#define INITIAL_CASH 10000000 /* cents */

static uint32_t exchange;
static int32_t max_position, max_qty, spread, volatility;

static int64_t cash;
static int32_t position;
static int32_t valuation;
static int32_t last_price;
static uint32_t next_ref;

int32_t we_init(int32_t agent_id, int64_t seed, int32_t config_len) {
    int32_t cfg[N_PARAMS];
    (void)config_len;
    if (we_config_i32s(cfg, N_PARAMS) < N_PARAMS) return 1;
    int32_t n_exchanges = cfg[0], initial_price = cfg[1];
    if (n_exchanges < 1 || agent_id < n_exchanges || initial_price < 100) return 2;
    if (cfg[2] < 1 || cfg[3] < 1 || cfg[4] < 0 || cfg[5] < 0) return 3;

    exchange = (uint32_t)(agent_id % n_exchanges);
    max_position = cfg[2];
    max_qty = cfg[3];
    spread = cfg[4];
    volatility = cfg[5];

    cash = INITIAL_CASH;
    position = 0;
    last_price = initial_price;
    /* Valuations spread +-10% around the initial price, fixed by (seed, id). */
    we_rng rng = we_rng_seed(we_mix64((uint64_t)seed ^ ((uint64_t)(uint32_t)agent_id << 32)));
    int32_t band = initial_price / 10;
    valuation = initial_price - band + (int32_t)we_rng_below(&rng, (uint32_t)(2 * band + 1));
    next_ref = 0;
    return WE_OK;
}

static void book_fills(void) {
    uint32_t src;
    uint8_t buf[MSG_BYTES];
    int32_t len;
    while ((len = we_recv(&src, buf, MSG_BYTES)) >= 0) {
        if (src != exchange || len != MSG_BYTES) continue;
        market_msg fill = market_msg_load(buf);
        position += fill.qty;
        cash -= (int64_t)fill.qty * (int64_t)fill.price;
        if (fill.price > 0) last_price = (int32_t)fill.price;
    }
}

int32_t we_step(int64_t tick) {
    (void)tick;
    book_fills();

    we_rng rng = we_rng_from_host();
    valuation += (int32_t)we_rng_below(&rng, (uint32_t)(2 * volatility + 1)) - volatility;
    valuation += (last_price - valuation) / 16;
    if (valuation < 1) valuation = 1;

    bool buy = valuation > last_price || (valuation == last_price && we_rng_below(&rng, 2));
    int32_t qty = 1 + (int32_t)we_rng_below(&rng, (uint32_t)max_qty);
    /* Soft position limit: orders still in flight are not counted. */
    int32_t room = buy ? max_position - position : max_position + position;
    if (qty > room) qty = room;

    if (qty > 0) {
        int32_t edge = (int32_t)we_rng_below(&rng, (uint32_t)spread + 1);
        int32_t limit = buy ? valuation - edge : valuation + edge;
        if (limit < 1) limit = 1;
        uint8_t out[MSG_BYTES];
        market_msg order = {buy ? qty : -qty, (uint32_t)limit, next_ref++};
        market_msg_store(out, order);
        we_send((int32_t)exchange, out, MSG_BYTES);
    }

    uint8_t state[16];
    we_store_i64(state, cash);
    we_store_i32(state + 8, position);
    we_store_u32(state + 12, (uint32_t)valuation);
    we_publish(state, sizeof state);
    return WE_STEP_CONTINUE;
}
