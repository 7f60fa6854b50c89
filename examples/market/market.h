/*
 * Wire format shared by trader.c and exchange.c.  All fields little-endian.
 *
 * order (trader -> exchange), 12 bytes:
 *   i32 qty     > 0 buy, < 0 sell (number of units)
 *   u32 limit   limit price in cents: the most a buyer pays / least a seller takes
 *   u32 ref     the trader's order number, echoed in the fill
 *
 * fill (exchange -> trader), one per order, 12 bytes:
 *   i32 qty     units traded, signed like the order (0 = nothing traded)
 *   u32 price   the auction's clearing price in cents (also sent when qty = 0,
 *               so every trader learns the market price)
 *   u32 ref     the order's ref
 */
#ifndef MARKET_H
#define MARKET_H

#include "we_agent.h"

#define MSG_BYTES 12

typedef struct {
    int32_t qty;
    uint32_t price;
    uint32_t ref;
} market_msg;

static inline void market_msg_store(uint8_t out[MSG_BYTES], market_msg m) {
    we_store_i32(out, m.qty);
    we_store_u32(out + 4, m.price);
    we_store_u32(out + 8, m.ref);
}

static inline market_msg market_msg_load(const uint8_t in[MSG_BYTES]) {
    market_msg m;
    m.qty = we_load_i32(in);
    m.price = we_load_u32(in + 4);
    m.ref = we_load_u32(in + 8);
    return m;
}

#endif /* MARKET_H */
