/*
 * wasm-engine native host functions: the common case of the agent ABI's
 * hottest imports (docs/ABI.md), as wasmtime "unchecked" callbacks.
 *
 * Layer: native. Knows agents' per-step bookkeeping as plain structs, not
 * Python objects and not wasmtime's types: a callback has the C signature of
 * wasmtime_func_unchecked_callback_t with every pointer as void*, and reads
 * and writes the raw value slots (16 bytes each; an i32 is the low 4 bytes,
 * an i64 the low 8, little-endian).
 *
 * Each callback serves only the plain case: ranges inside the agent's known
 * memory size, room in the output arena, no sequence overflow. Anything else
 * is handed, before anything has changed, to the `fallback` callback given
 * for that import (worker/_host.py's Python version, which knows memory
 * growth, faults and arena growth), so the two never disagree on state.
 * The layouts are mirrored by worker/_host.py and checked at its import
 * through we_host_layout(); docs/RUNTIME.md "Native host functions".
 */
#ifndef WE_HOST_H
#define WE_HOST_H

#include <stddef.h>
#include <stdint.h>

#define WE_HOST_LAYOUT_VERSION 2

/* One agent's bookkeeping, 64 bytes. */
typedef struct {
    uint64_t base;        /* address of linear memory byte 0 */
    uint64_t mem_lo;      /* a lower bound of the memory's size in bytes */
    uint32_t id;          /* the agent's id */
    uint32_t seq;         /* its next output sequence number */
    uint32_t in_lo;       /* this step's inbox: deliveries [in_lo, in_hi) */
    uint32_t in_hi;
    uint32_t sends;       /* sends this step, and their limit */
    uint32_t quota;
    uint32_t infers;      /* infer requests this step, and their limit */
    uint32_t infer_quota;
    uint64_t fuel_total;  /* fuel its steps (we_init included) used in all */
    uint64_t reserved;    /* zero */
} we_agent_state;

typedef void *(*we_host_cb)(void *env, void *caller, void *slots, size_t n_slots);

/* A group's host context: the `env` of every callback. */
typedef struct {
    we_agent_state *cur;        /* the agent being stepped */
    /* the stage's inbox, sorted by destination */
    const uint32_t *in_src;     /* source of delivery i */
    const int64_t *in_off;      /* payload of delivery i: [in_off[i], in_off[i+1]) */
    const uint8_t *in_pay;
    /* the stage's outputs (record headers as in the rings, tick and check 0) */
    void *out_hdr;              /* we_record_header[out_cap] */
    uint8_t *out_pay;           /* out_pay_cap bytes */
    uint64_t out_used;          /* payload bytes written */
    uint64_t out_pay_cap;
    uint32_t out_n;             /* records written */
    uint32_t out_cap;
    uint64_t tick;              /* tick() returns it as an i64 */
    uint32_t total_agents;
    uint32_t n_models;
    uint32_t max_message_bytes;
    uint32_t max_infer_bytes;
    uint16_t kind_msg;          /* record kinds of a send and an infer request */
    uint16_t kind_infer;
    uint32_t reserved;
    we_host_cb fallback_recv;
    we_host_cb fallback_send;
    we_host_cb fallback_infer;
    we_host_cb fallback_inbox_count;
} we_host_ctx;

void *we_host_recv(void *env, void *caller, void *slots, size_t n_slots);
void *we_host_send(void *env, void *caller, void *slots, size_t n_slots);
void *we_host_infer(void *env, void *caller, void *slots, size_t n_slots);
void *we_host_inbox_count(void *env, void *caller, void *slots, size_t n_slots);
void *we_host_tick(void *env, void *caller, void *slots, size_t n_slots);
void *we_host_agent_count(void *env, void *caller, void *slots, size_t n_slots);

/* Append one record to ctx's arena: WE_OK, or WE_ERR_FULL_TIMEOUT when it
 * lacks room (nothing written; the caller grows the arena and retries). */
int we_host_emit(we_host_ctx *ctx, uint16_t kind, uint32_t source, uint32_t destination, uint32_t seq,
                 const char *payload, uint32_t payload_len);

/* The per-agent loop: we_step for a run of agents, in order, in one call.
 *
 * One we_step_row per agent, 32 bytes. `wctx` and `func` are the
 * wasmtime_context_t * of the agent's store and the wasmtime_func_t * of its
 * we_step export; `st` its bookkeeping row (ctx->cur during its step);
 * `fuel` the fuel set before each step. */
typedef struct {
    void *wctx;
    const void *func;
    we_agent_state *st;
    uint64_t fuel;
} we_step_row;

/* The three wasmtime C entry points the loop calls, as addresses taken from
 * the libwasmtime that wasmtime-py loaded (its version is pinned and checked
 * at start): wasmtime_context_set_fuel, wasmtime_func_call_unchecked,
 * wasmtime_context_get_fuel. Each returns a wasmtime_error_t * or NULL. */
typedef struct {
    void *(*set_fuel)(void *wctx, uint64_t fuel);
    void *(*call_unchecked)(void *wctx, const void *func, void *slots, size_t n_slots, void **trap);
    void *(*get_fuel)(const void *wctx, uint64_t *fuel);
} we_wasmtime_fns;

/* Why we_host_step_agents returned before the last row (stop->why). */
#define WE_STEP_DONE 0
#define WE_STEP_SET_FUEL_ERROR 1
#define WE_STEP_FAILED 2
#define WE_STEP_HALTED 3
#define WE_STEP_GET_FUEL_ERROR 4

/* 32 bytes: the row the loop stopped at and why. */
typedef struct {
    uint32_t why;      /* WE_STEP_* */
    uint32_t mark;     /* ctx->out_n before that row's step: where its outputs begin */
    int32_t rc;        /* we_step's result, for WE_STEP_HALTED */
    uint32_t reserved;
    void *error;       /* the wasmtime_error_t * of a failed call, if one */
    void *trap;        /* the wasm_trap_t * of a trapped step, if one */
} we_step_stop;

/* Step rows[from..n) in order with tick `tick`: for each row set
 * ctx->cur = row.st, set its fuel, call we_step, read the fuel left. A row
 * whose step returned 0 gets fuel_used[i] (and st->fuel_total) and the loop
 * goes on. It returns the index of the first row that needs the caller, with
 * *stop saying why: its step failed (an error or a trap: nothing recorded,
 * ctx->cur still that row), returned non-zero (WE_STEP_HALTED: fuel recorded
 * as for 0), or a fuel call failed. It returns n (stop->why = WE_STEP_DONE)
 * when every row has stepped. Never takes the GIL itself; host callbacks
 * written in Python take it. */
uint32_t we_host_step_agents(we_host_ctx *ctx, const we_wasmtime_fns *fns, const we_step_row *rows, uint32_t from,
                             uint32_t n, int64_t tick, uint64_t *fuel_used, we_step_stop *stop);

/* sizeof and field offsets of both structs, for the import-time check:
 * out[0] = WE_HOST_LAYOUT_VERSION, then as documented at we_host_layout(). */
void we_host_layout(uint64_t out[32]);

#endif
