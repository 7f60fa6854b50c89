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

#endif
