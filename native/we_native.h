/*
 * wasm-engine native layer: atomics, futex wait/wake and SPSC ring batches
 * over a shared-memory mapping.
 *
 * Layer: native. Knows nothing of Python objects or of agents. Every entry
 * point takes the mapping's base address and size and checks every offset
 * against them before touching memory: a bad offset returns an error code,
 * never a crash. The layouts below are documented in docs/PROTOCOL.md and
 * checked against shm_protocol's Python declarations at import.
 */
#ifndef WE_NATIVE_H
#define WE_NATIVE_H

#include <stdint.h>

/* Status codes. 0 and positive values are normal outcomes; negative values
 * are errors that shm_protocol maps to exceptions. */
#define WE_OK 0
#define WE_TIMEOUT 1
#define WE_ERR_BOUNDS -1     /* offset/length outside the mapping */
#define WE_ERR_ALIGN -2      /* misaligned atomic access */
#define WE_ERR_MAGIC -3      /* ring header magic wrong */
#define WE_ERR_VERSION -4    /* ring layout version not supported */
#define WE_ERR_INDEX -5      /* producer/consumer indices inconsistent */
#define WE_ERR_RECORD -6     /* record header invalid (kind, length, runs past ring) */
#define WE_ERR_CHECKSUM -7   /* record check field does not match its bytes */
#define WE_ERR_TOO_LARGE -8  /* record larger than the ring's max_record_bytes */
#define WE_ERR_ARG -9        /* argument inconsistent (buffer too small, ...) */
#define WE_ERR_LAYOUT -10    /* ring geometry invalid (capacity, header fields) */
#define WE_ERR_SYS -11       /* futex syscall failed unexpectedly */
#define WE_ERR_FULL_TIMEOUT -12 /* exchange: the push half timed out (ring full) */
#define WE_ERR_EMPTY_TIMEOUT -13 /* exchange: no reply arrived before the timeout */

#define WE_RING_MAGIC 0x47524557u /* "WERG" little-endian */
#define WE_RING_VERSION 2
#define WE_RING_HEADER_BYTES 256
#define WE_RECORD_HEADER_BYTES 32
#define WE_RECORD_ALIGN 8
#define WE_KIND_INVALID 0
#define WE_KIND_WRAP 0xFFFF
#define WE_RING_MIN_CAPACITY 1024
#define WE_RING_MAX_CAPACITY (1ULL << 34)

/* Record header, 32 bytes, little-endian, 8-byte aligned in the ring. */
typedef struct {
    uint16_t kind;        /* 0 invalid, 0xFFFF wrap padding, else caller's */
    uint16_t flags;
    uint32_t payload_len; /* bytes of payload that follow the header */
    uint32_t source;
    uint32_t destination;
    uint64_t tick;
    uint32_t seq;
    uint32_t check;       /* we_record_check() of header (check=0) + payload */
} we_record_header;

/* Field offsets inside the ring header (see docs/PROTOCOL.md). Producer-
 * and consumer-owned words sit on separate cache lines. */
#define WE_RH_MAGIC 0
#define WE_RH_VERSION 4
#define WE_RH_HEADER_BYTES 6
#define WE_RH_CAPACITY 8
#define WE_RH_MAX_RECORD 16
#define WE_RH_RECORD_ALIGN 20
#define WE_RH_RECORD_HEADER 24
#define WE_RH_RING_ID 28
#define WE_RH_WRITE_INDEX 64
#define WE_RH_DATA_SEQ 72
#define WE_RH_PRODUCER_SLEEPING 192
#define WE_RH_RECORDS_PUSHED 80
#define WE_RH_READ_INDEX 128
#define WE_RH_SPACE_SEQ 136
#define WE_RH_CONSUMER_SLEEPING 196
#define WE_RH_RECORDS_POPPED 144

/* Layout introspection so Python can check its declarations at import. */
uint64_t we_layout_value(int id);

int we_load_u32(const uint8_t *base, uint64_t size, uint64_t off, uint32_t *out);
int we_load_u64(const uint8_t *base, uint64_t size, uint64_t off, uint64_t *out);
int we_store_u32(uint8_t *base, uint64_t size, uint64_t off, uint32_t value);
int we_store_u64(uint8_t *base, uint64_t size, uint64_t off, uint64_t value);
int we_cas_u32(uint8_t *base, uint64_t size, uint64_t off, uint32_t expected,
               uint32_t desired, uint32_t *actual);
int we_cas_u64(uint8_t *base, uint64_t size, uint64_t off, uint64_t expected,
               uint64_t desired, uint64_t *actual);
int we_fetch_add_u32(uint8_t *base, uint64_t size, uint64_t off, uint32_t delta,
                     uint32_t *old);
int we_fetch_add_u64(uint8_t *base, uint64_t size, uint64_t off, uint64_t delta,
                     uint64_t *old);
int we_wait_u32(uint8_t *base, uint64_t size, uint64_t off, uint32_t expected,
                int64_t timeout_ns, uint32_t spin_iters);
int we_wake_u32(uint8_t *base, uint64_t size, uint64_t off, int32_t count);

uint32_t we_record_check(const we_record_header *hdr, const uint8_t *payload);

/* Canonical orders of record headers (the supervisor's sort keys). */
#define WE_ORDER_SOURCE_SEQ 1        /* (source, seq) */
#define WE_ORDER_DEST_SOURCE_SEQ 2   /* (destination, source, seq) */
#define WE_ORDER_SOURCE_SEQ_FLAGS 3  /* (source, seq, flags) */
/* 0: hdrs[0..n) are already in that order (order untouched); 1: order[0..n)
 * holds the stable sorting permutation (what numpy's lexsort gives);
 * WE_ERR_ARG: unknown key set. scratch: n entries of workspace. With order
 * or scratch NULL it only checks: 0 in order, 1 not. */
int we_records_order(const we_record_header *hdrs, uint32_t n, uint32_t keys,
                     uint32_t *order, uint32_t *scratch);

int we_ring_init(uint8_t *base, uint64_t size, uint64_t ring_off,
                 uint64_t capacity_bytes, uint32_t max_record_bytes, uint32_t ring_id);
int we_ring_validate(const uint8_t *base, uint64_t size, uint64_t ring_off,
                     uint64_t *err_off);
int we_ring_stats(const uint8_t *base, uint64_t size, uint64_t ring_off,
                  uint64_t *used_bytes, uint64_t *pushed, uint64_t *popped);
int we_ring_push(uint8_t *base, uint64_t size, uint64_t ring_off,
                 const we_record_header *hdrs, uint32_t count,
                 const uint8_t *payload, uint64_t payload_bytes,
                 int64_t timeout_ns, uint32_t spin_iters,
                 uint32_t *pushed, uint64_t *err_off);
int we_ring_push_one(uint8_t *base, uint64_t size, uint64_t ring_off,
                     uint16_t kind, uint16_t flags, uint32_t source,
                     uint32_t destination, uint64_t tick, uint32_t seq,
                     const char *payload, uint32_t payload_len,
                     int64_t timeout_ns, uint32_t spin_iters, uint64_t *err_off);
int we_ring_pop(uint8_t *base, uint64_t size, uint64_t ring_off,
                we_record_header *hdrs_out, uint32_t max_count,
                uint8_t *payload_out, uint64_t payload_cap,
                int64_t timeout_ns, uint32_t spin_iters,
                uint32_t *popped, uint64_t *payload_used, uint64_t *err_off);

/* A ring's coordinates, so latency-path calls pass one pointer instead of
 * four scalars (argument conversion dominates a cffi call). */
typedef struct {
    uint8_t *base;
    uint64_t size;
    uint64_t ring_off;
    uint32_t spin_iters;
    uint32_t reserved;
    /* Producer side only: the read index last seen (private, never shared).
     * The real one only grows, so free space computed from this is never
     * more than there is; a push reloads the real one only when it looks
     * short of room. 0 = not seen yet. */
    uint64_t read_cache;
} we_ring_ref;

/* Push one record to `out` (skipped when out is NULL), then pop one from
 * `in`: a request/response (or reply-then-receive) in a single call. */
int we_ring_exchange(we_ring_ref *out, const we_ring_ref *in, uint16_t kind,
                     uint32_t source, uint32_t destination, uint64_t tick, uint32_t seq,
                     const char *payload, uint32_t payload_len, we_record_header *reply,
                     uint8_t *reply_payload, uint32_t reply_cap, int64_t timeout_ns,
                     uint64_t *err_off);

/* Gather the payloads of selected records, back to back into dst: record
 * index[i] (negative counts from the end, as in numpy) of a batch whose n_src
 * payloads lie at src[offsets[j] .. offsets[j+1]] (offsets has n_src + 1
 * entries). Every index and range is checked against src_len, and the total
 * against dst_len, first; on a bad one nothing is copied and WE_ERR_BOUNDS is
 * returned with *err_index set (n: dst too small). */
int we_gather_records(const uint8_t *src, uint64_t src_len, const int64_t *offsets, uint64_t n_src,
                      const int64_t *index, uint64_t n, uint8_t *dst, uint64_t dst_len, uint64_t *err_index);

/* Request/response context: everything a latency-path exchange needs, set
 * up once, so each call passes three arguments. `req` carries the header of
 * the record to send (payload_len is filled in); `rep` receives the reply. */
typedef struct {
    we_ring_ref out;
    we_ring_ref in;
    we_record_header req;
    we_record_header rep;
    uint8_t *rep_payload;
    uint32_t rep_cap;
    uint32_t send_first;   /* 0: only receive (first call of a serving loop) */
    int64_t timeout_ns;
    uint64_t err_off;
} we_exchange_ctx;

/* Returns the reply's payload length (>= 0), or a negative status
 * (WE_ERR_EMPTY_TIMEOUT when no reply came in time). */
int64_t we_exchange(we_exchange_ctx *c, const char *payload, uint32_t payload_len);

#endif
