/* Row programs (we_rows.h). */
#include "we_rows.h"

#include <stddef.h>
#include <string.h>

static inline const uint8_t *src_of(const we_row_op *o, const uint8_t *base) {
    return (o->flags & WE_ROW_SRC_BASE) ? base + o->src : (const uint8_t *)(uintptr_t)o->src;
}

static inline uint8_t *dst_of(const we_row_op *o, uint8_t *base) {
    return (o->flags & WE_ROW_DST_BASE) ? base + o->dst : (uint8_t *)(uintptr_t)o->dst;
}

int64_t we_rows_run(const we_row_op *ops, uint32_t n_ops, const uint8_t *src_base, uint8_t *dst_base,
                    uint64_t n) {
    for (uint32_t k = 0; k < n_ops; k++) {
        const we_row_op *o = &ops[k];
        const uint8_t *s = src_of(o, src_base);
        uint8_t *d = dst_of(o, dst_base);
        size_t len = (size_t)o->bytes;
        switch (o->op) {
        case WE_ROW_COPY:
            if (o->src_stride == len && o->dst_stride == len) {  /* both dense: one copy */
                memcpy(d, s, len * n);
                break;
            }
            for (uint64_t j = 0; j < n; j++, s += o->src_stride, d += o->dst_stride)
                memcpy(d, s, len);
            break;
        case WE_ROW_FILL:
            for (uint64_t j = 0; j < n; j++, d += o->dst_stride)
                memcpy(d, s, len);
            break;
        case WE_ROW_EQUAL:
            for (uint64_t j = 0; j < n; j++, s += o->src_stride)
                if (memcmp(s, d, len) != 0)
                    return (int64_t)j;
            break;
        default:
            return 0;  /* unknown op: the caller's bug; report row 0 as failing */
        }
    }
    return (int64_t)n;
}

void we_rows_layout(uint64_t out[16]) {
    memset(out, 0, 16 * sizeof out[0]);
    out[0] = WE_ROWS_LAYOUT_VERSION;
    out[1] = sizeof(we_row_op);
    out[2] = offsetof(we_row_op, op);
    out[3] = offsetof(we_row_op, flags);
    out[4] = offsetof(we_row_op, src);
    out[5] = offsetof(we_row_op, src_stride);
    out[6] = offsetof(we_row_op, dst);
    out[7] = offsetof(we_row_op, dst_stride);
    out[8] = offsetof(we_row_op, bytes);
}

int we_serve_step(we_serve_ctx *c) {
    uint32_t n_calls = c->n_before + c->n_after;
    c->pushed = c->popped = 0;
    c->used = 0;
    if (n_calls > WE_SERVE_MAX_CALLS) return WE_ERR_ARG;
    for (uint32_t k = 0; k < c->n_before; k++) {
        const we_rows_call *f = &c->calls[k];
        we_rows_run(f->ops, f->n_ops, f->src_base, f->dst_base, f->rows);
    }
    if (c->reply_count) {
        int rc = we_ring_push(c->out.base, c->out.size, c->out.ring_off, c->reply, c->reply_count,
                              c->reply_payload, c->reply_payload_bytes, c->timeout_ns, c->out.spin_iters,
                              &c->pushed, &c->err_off);
        if (rc == WE_TIMEOUT) return WE_ERR_FULL_TIMEOUT;
        if (rc) return rc;
    }
    int rc = we_ring_pop(c->in.base, c->in.size, c->in.ring_off, c->hdr_out, c->max_count, c->pay_out,
                         c->pay_cap, c->timeout_ns, c->in.spin_iters, &c->popped, &c->used, &c->err_off);
    if (rc) return rc;
    if (c->popped != c->expect_count || c->used != c->expect_payload_bytes) return WE_SERVE_OTHER;
    for (uint32_t k = c->n_before; k < n_calls; k++) {
        const we_rows_call *f = &c->calls[k];
        if (we_rows_run(f->ops, f->n_ops, f->src_base, f->dst_base, f->rows) != (int64_t)f->rows)
            return WE_SERVE_OTHER;
    }
    return WE_OK;
}
