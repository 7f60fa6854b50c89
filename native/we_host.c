/*
 * wasm-engine native host functions (see we_host.h). Each one mirrors, check
 * for check and in the same order, the Python fast-path version of the same
 * import in worker/_host.py (`_fast_imports`), which stays the yardstick the
 * tests cross-check this one against, and which serves every case this file
 * hands over through the context's fallback callbacks.
 */
#include <string.h>

#include "we_host.h"
#include "we_native.h"

/* Value slot k of an unchecked call: 16 bytes, the value in the low bytes. */
static inline uint8_t *slot(void *slots, size_t k) { return (uint8_t *)slots + 16 * k; }
static inline int32_t get_i32(void *slots, size_t k) {
    int32_t v;
    memcpy(&v, slot(slots, k), 4);
    return v;
}
static inline uint32_t get_u32(void *slots, size_t k) { return (uint32_t)get_i32(slots, k); }
static inline void set_i32(void *slots, int32_t v) { memcpy(slot(slots, 0), &v, 4); }
static inline void set_i64(void *slots, int64_t v) { memcpy(slot(slots, 0), &v, 8); }

/* [ptr, ptr + n) inside the memory size known to be there (n >= 0). */
static inline int in_known(const we_agent_state *a, uint64_t ptr, int64_t n) {
    return n >= 0 && ptr + (uint64_t)n <= a->mem_lo;
}

static inline int arena_has_room(const we_host_ctx *c, uint32_t n) {
    return c->out_n < c->out_cap && c->out_pay_cap - c->out_used >= n;
}

static void arena_put(we_host_ctx *c, uint16_t kind, uint32_t source, uint32_t destination, uint32_t seq,
                      const uint8_t *payload, uint32_t n) {
    we_record_header *h = (we_record_header *)c->out_hdr + c->out_n;
    memset(h, 0, sizeof *h);
    h->kind = kind;
    h->payload_len = n;
    h->source = source;
    h->destination = destination;
    h->seq = seq;
    if (n) memcpy(c->out_pay + c->out_used, payload, n);
    c->out_used += n;
    c->out_n += 1;
}

int we_host_emit(we_host_ctx *c, uint16_t kind, uint32_t source, uint32_t destination, uint32_t seq,
                 const char *payload, uint32_t payload_len) {
    if (!arena_has_room(c, payload_len)) return WE_ERR_FULL_TIMEOUT;
    arena_put(c, kind, source, destination, seq, (const uint8_t *)payload, payload_len);
    return WE_OK;
}

/* recv(src_ptr, buf_ptr, buf_cap) -> i32 */
void *we_host_recv(void *env, void *caller, void *slots, size_t n_slots) {
    we_host_ctx *c = (we_host_ctx *)env;
    we_agent_state *a = c->cur;
    if (a == NULL) return c->fallback_recv(env, caller, slots, n_slots);
    uint32_t i = a->in_lo;
    if (i >= a->in_hi) {
        set_i32(slots, -1);
        return NULL;
    }
    uint64_t src_ptr = get_u32(slots, 0), buf_ptr = get_u32(slots, 1);
    int32_t cap = get_i32(slots, 2);
    if (!in_known(a, src_ptr, 4) || !in_known(a, buf_ptr, cap))
        return c->fallback_recv(env, caller, slots, n_slots);
    a->in_lo = i + 1;
    int64_t off = c->in_off[i];
    int64_t n = c->in_off[i + 1] - off;
    uint8_t *mem = (uint8_t *)(uintptr_t)a->base;
    memcpy(mem + src_ptr, &c->in_src[i], 4);
    if (n && cap) memcpy(mem + buf_ptr, c->in_pay + off, (size_t)(n < cap ? n : cap));
    set_i32(slots, (int32_t)n);
    return NULL;
}

/* send(dst, ptr, len) -> i32 */
void *we_host_send(void *env, void *caller, void *slots, size_t n_slots) {
    we_host_ctx *c = (we_host_ctx *)env;
    we_agent_state *a = c->cur;
    if (a == NULL) return c->fallback_send(env, caller, slots, n_slots);
    uint64_t ptr = get_u32(slots, 1);
    int32_t n = get_i32(slots, 2);
    if (!in_known(a, ptr, n)) return c->fallback_send(env, caller, slots, n_slots);
    if ((uint32_t)n > c->max_message_bytes) {
        set_i32(slots, -3);
        return NULL;
    }
    if (a->sends >= a->quota) {
        set_i32(slots, -1);
        return NULL;
    }
    uint32_t dst = get_u32(slots, 0);
    if (dst >= c->total_agents) {
        set_i32(slots, -2);
        return NULL;
    }
    if (a->seq == UINT32_MAX || !arena_has_room(c, (uint32_t)n))
        return c->fallback_send(env, caller, slots, n_slots);
    a->sends += 1;
    arena_put(c, c->kind_msg, a->id, dst, a->seq, (const uint8_t *)(uintptr_t)a->base + ptr, (uint32_t)n);
    a->seq += 1;
    set_i32(slots, 0);
    return NULL;
}

/* infer(model, ptr, len) -> i64 */
void *we_host_infer(void *env, void *caller, void *slots, size_t n_slots) {
    we_host_ctx *c = (we_host_ctx *)env;
    we_agent_state *a = c->cur;
    if (a == NULL) return c->fallback_infer(env, caller, slots, n_slots);
    int32_t model = get_i32(slots, 0);
    uint64_t ptr = get_u32(slots, 1);
    int32_t n = get_i32(slots, 2);
    if (!in_known(a, ptr, n)) return c->fallback_infer(env, caller, slots, n_slots);
    int64_t r;
    if (a->infers >= a->infer_quota) {
        r = -1;
    } else if (model < 0 || (uint32_t)model >= c->n_models) {
        r = -2;
    } else if ((uint32_t)n > c->max_infer_bytes) {
        r = -3;
    } else {
        if (a->seq == UINT32_MAX || !arena_has_room(c, (uint32_t)n))
            return c->fallback_infer(env, caller, slots, n_slots);
        a->infers += 1;
        r = a->seq;
        arena_put(c, c->kind_infer, a->id, (uint32_t)model, a->seq, (const uint8_t *)(uintptr_t)a->base + ptr,
                  (uint32_t)n);
        a->seq += 1;
    }
    set_i64(slots, r);
    return NULL;
}

/* inbox_count() -> i32 */
void *we_host_inbox_count(void *env, void *caller, void *slots, size_t n_slots) {
    we_host_ctx *c = (we_host_ctx *)env;
    const we_agent_state *a = c->cur;
    if (a == NULL) return c->fallback_inbox_count(env, caller, slots, n_slots);
    set_i32(slots, (int32_t)(a->in_hi - a->in_lo));
    return NULL;
}

/* tick() -> i64 */
void *we_host_tick(void *env, void *caller, void *slots, size_t n_slots) {
    (void)caller;
    (void)n_slots;
    set_i64(slots, (int64_t)((we_host_ctx *)env)->tick);
    return NULL;
}

/* agent_count() -> i32 */
void *we_host_agent_count(void *env, void *caller, void *slots, size_t n_slots) {
    (void)caller;
    (void)n_slots;
    set_i32(slots, (int32_t)((we_host_ctx *)env)->total_agents);
    return NULL;
}

uint32_t we_host_step_agents(we_host_ctx *ctx, const we_wasmtime_fns *fns, const we_step_row *rows, uint32_t from,
                             uint32_t n, int64_t tick, uint64_t *fuel_used, we_step_stop *stop) {
    uint8_t slots[16]; /* we_step's one value slot: the tick in, the i32 result out */
    memset(stop, 0, sizeof *stop);
    for (uint32_t i = from; i < n; i++) {
        const we_step_row *r = &rows[i];
        ctx->cur = r->st;
        void *err = fns->set_fuel(r->wctx, r->fuel);
        if (err) {
            stop->why = WE_STEP_SET_FUEL_ERROR;
            stop->error = err;
            return i;
        }
        stop->mark = ctx->out_n;
        memset(slots, 0, sizeof slots);
        memcpy(slots, &tick, 8);
        void *trap = NULL;
        err = fns->call_unchecked(r->wctx, r->func, slots, 1, &trap);
        if (err || trap) {
            stop->why = WE_STEP_FAILED;
            stop->error = err;
            stop->trap = trap;
            return i;
        }
        int32_t rc = get_i32(slots, 0);
        uint64_t left = 0;
        err = fns->get_fuel(r->wctx, &left);
        if (err) {
            stop->why = WE_STEP_GET_FUEL_ERROR;
            stop->error = err;
            stop->rc = rc;
            return i;
        }
        uint64_t used = r->fuel - left;
        fuel_used[i] = used;
        r->st->fuel_total += used;
        if (rc != 0) {
            stop->why = WE_STEP_HALTED;
            stop->rc = rc;
            return i;
        }
    }
    return n;
}

/* out[0] version; out[1..12] sizeof(we_agent_state) then the offsets of
 * base, mem_lo, id, seq, in_lo, in_hi, sends, quota, infers, infer_quota,
 * fuel_total; out[13] sizeof(we_host_ctx); out[14..18] sizeof(we_step_row)
 * then the offsets of wctx, func, st, fuel; out[19] sizeof(we_step_stop). */
void we_host_layout(uint64_t out[32]) {
    memset(out, 0, 32 * sizeof out[0]);
    out[0] = WE_HOST_LAYOUT_VERSION;
    out[1] = sizeof(we_agent_state);
    out[2] = offsetof(we_agent_state, base);
    out[3] = offsetof(we_agent_state, mem_lo);
    out[4] = offsetof(we_agent_state, id);
    out[5] = offsetof(we_agent_state, seq);
    out[6] = offsetof(we_agent_state, in_lo);
    out[7] = offsetof(we_agent_state, in_hi);
    out[8] = offsetof(we_agent_state, sends);
    out[9] = offsetof(we_agent_state, quota);
    out[10] = offsetof(we_agent_state, infers);
    out[11] = offsetof(we_agent_state, infer_quota);
    out[12] = offsetof(we_agent_state, fuel_total);
    out[13] = sizeof(we_host_ctx);
    out[14] = sizeof(we_step_row);
    out[15] = offsetof(we_step_row, wctx);
    out[16] = offsetof(we_step_row, func);
    out[17] = offsetof(we_step_row, st);
    out[18] = offsetof(we_step_row, fuel);
    out[19] = sizeof(we_step_stop);
}
