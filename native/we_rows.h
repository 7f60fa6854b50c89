/*
 * wasm-engine row programs: the byte moves of a uniform batch — n records
 * that share one payload layout — as one C call instead of a numpy call per
 * tensor and per header range.
 *
 * Layer: native. Knows rows, strides and bytes only; what the rows mean
 * (tensor payloads, model inputs and outputs) is the caller's: inference/
 * builds a program once per batch layout and runs it every tick
 * (docs/INFERENCE.md "The uniform tick"). The caller guarantees that every
 * address an op reaches, for rows [0, n), lies inside live buffers; nothing
 * here can check that.
 */
#ifndef WE_ROWS_H
#define WE_ROWS_H

#include <stdint.h>

#include "we_native.h"

#define WE_ROWS_LAYOUT_VERSION 1

/* Op kinds. */
#define WE_ROW_COPY 1   /* row j of dst <- row j of src */
#define WE_ROW_FILL 2   /* row j of dst <- src (the same bytes for every row) */
#define WE_ROW_EQUAL 3  /* row j of src must equal dst (the same bytes for every row) */

/* Op flags: an address is an offset from the call's base pointer. */
#define WE_ROW_SRC_BASE 1
#define WE_ROW_DST_BASE 2

/* One op, 48 bytes: for each row j, `bytes` bytes at src + j*src_stride
 * and dst + j*dst_stride. */
typedef struct {
    uint32_t op;
    uint32_t flags;
    uint64_t src;
    uint64_t src_stride;
    uint64_t dst;
    uint64_t dst_stride;
    uint64_t bytes;
} we_row_op;

/* Run ops[0..n_ops) in order, each over rows [0, n). Returns n when every
 * EQUAL op holds; else the first row (< n) where an EQUAL op fails, at once
 * (ops before it have run: put EQUAL ops first to change nothing). */
int64_t we_rows_run(const we_row_op *ops, uint32_t n_ops, const uint8_t *src_base, uint8_t *dst_base,
                    uint64_t n);

/* sizeof(we_row_op) and its field offsets, for the import-time check:
 * out[0] = WE_ROWS_LAYOUT_VERSION, out[1] = sizeof, out[2..8] = offsets of
 * op, flags, src, src_stride, dst, dst_stride, bytes. */
void we_rows_layout(uint64_t out[16]);

/* A row program bound to its two base buffers (either may be NULL when no
 * op is base-relative on that side), for we_serve_step. */
typedef struct {
    const we_row_op *ops;
    uint32_t n_ops;
    uint32_t reserved;
    const uint8_t *src_base;
    uint8_t *dst_base;
    uint64_t rows;
} we_rows_call;

#define WE_SERVE_MAX_CALLS 4
#define WE_SERVE_OTHER 2 /* we_serve_step: a batch was popped, but not the steady one */

/* A serving loop's steady tick (docs/PROTOCOL.md "Steady step"): everything
 * between two model runs of the inference process in one call.
 *   1. calls[0 .. n_before): e.g. write the results into the reply;
 *   2. push the reply (reply_count headers, their payloads back to back) to `out`;
 *   3. pop a batch from `in` into hdr_out / pay_out (waiting up to timeout_ns);
 *   4. if it has expect_count records and expect_payload_bytes of payload,
 *      calls[n_before .. n_before + n_after), each of which must pass on all
 *      its rows: e.g. check the requests and gather them into the inputs.
 * Returns WE_OK (all four done: the steady batch is ready), WE_SERVE_OTHER (a
 * batch was popped -- popped, used -- but is not the steady one or failed a
 * check: the caller serves it), WE_TIMEOUT (reply pushed, nothing arrived),
 * WE_ERR_FULL_TIMEOUT (only `pushed` records of the reply got room; nothing
 * popped), or a pop error (err_off as for we_ring_pop). The caller keeps
 * every buffer alive and large enough for its calls (nothing here checks). */
typedef struct {
    we_ring_ref out;
    we_ring_ref in;
    const we_record_header *reply;
    const uint8_t *reply_payload;
    uint64_t reply_payload_bytes;
    uint32_t reply_count;
    uint32_t max_count;            /* hdr_out's capacity, in records */
    we_record_header *hdr_out;
    uint8_t *pay_out;
    uint64_t pay_cap;
    uint64_t expect_payload_bytes;
    uint32_t expect_count;
    uint32_t n_before;
    uint32_t n_after;
    uint32_t reserved;
    we_rows_call calls[4];         /* WE_SERVE_MAX_CALLS */
    int64_t timeout_ns;
    uint32_t pushed;
    uint32_t popped;
    uint64_t used;
    uint64_t err_off;
} we_serve_ctx;

int we_serve_step(we_serve_ctx *c);

#endif
