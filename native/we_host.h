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

#define WE_HOST_LAYOUT_VERSION 1

/* One agent's bookkeeping, 48 bytes. */
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

/* sizeof and field offsets of both structs, for the import-time check:
 * out[0] = WE_HOST_LAYOUT_VERSION, then as documented at we_host_layout(). */
void we_host_layout(uint64_t out[32]);

#endif
