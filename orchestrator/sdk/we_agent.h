/*
 * we_agent.h -- single-header C SDK for wasm-engine agents, agent ABI v1.
 *
 * An agent is a freestanding wasm32 module (no WASI, no libc).  Include this
 * header, define the two entry points and build:
 *
 *     #include "we_agent.h"
 *
 *     int32_t we_init(int32_t agent_id, int64_t seed, int32_t config_len) {
 *         return WE_OK;
 *     }
 *     int32_t we_step(int64_t tick) {
 *         return WE_STEP_CONTINUE;
 *     }
 *
 *     wasm-engine build agent.c -o agent.wasm
 *
 * The header already exports `we_abi_version` and marks `we_init` /
 * `we_step` for export, so a definition with the wrong signature is a compile
 * error rather than a load error.  See docs/ABI.md for the full contract.
 *
 * Capabilities: the linker only imports host functions the agent actually
 * calls, and each import is a capability the scenario must grant to the
 * agent's kind.  Declaring them all here costs nothing; calling `we_send`
 * is what requires the "send" capability.
 *
 * Only freestanding headers (<stdint.h>, <stddef.h>, <stdbool.h>) are used:
 * they come from the compiler, not from a C library.
 */
#ifndef WE_AGENT_H
#define WE_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if !defined(__wasm32__)
#error "we_agent.h targets wasm32: build with `wasm-engine build` (zig cc --target=wasm32-freestanding)"
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define WE_ABI_VERSION 1

/* ------------------------------------------------------------------------ */
/* Return codes and constants                                               */
/* ------------------------------------------------------------------------ */

#define WE_OK 0

/* we_step: anything nonzero halts the agent for good. */
#define WE_STEP_CONTINUE 0
#define WE_STEP_HALT 1

/* we_recv */
#define WE_RECV_EMPTY (-1)

/* we_send */
#define WE_SEND_QUOTA (-1)       /* this agent's per-tick send quota is used up */
#define WE_SEND_NO_AGENT (-2)    /* dst is not an agent of this run */
#define WE_SEND_TOO_LONG (-3)    /* len > the scenario's max_message_bytes */

/* we_log */
#define WE_LOG_LIMIT (-1)        /* over the per-tick log limit */

/* we_publish */
#define WE_PUBLISH_TOO_LONG (-3)

/* we_infer (negative results; a request id is >= 0) */
#define WE_INFER_BUDGET (-1)
#define WE_INFER_NO_MODEL (-2)
#define WE_INFER_TOO_LONG (-3)

/* Sender id of messages that carry inference results (see we_infer). */
#define WE_INFERENCE_SENDER 0xFFFFFFFFu

/* Default scenario max_message_bytes; a scenario may set another value. */
#define WE_DEFAULT_MAX_MESSAGE_BYTES 256

/* ------------------------------------------------------------------------ */
/* Attributes                                                               */
/* ------------------------------------------------------------------------ */

/* Export a function under its own name: WE_EXPORT(my_fn) int32_t my_fn(...). */
#define WE_EXPORT(name) __attribute__((export_name(#name)))

/* Bind a C declaration to host function `name` of import module "we". */
#define WE_IMPORT(name) __attribute__((import_module("we"), import_name(#name)))

/* ------------------------------------------------------------------------ */
/* Host imports (module "we")                                               */
/* ------------------------------------------------------------------------ */

/* [cap "recv"] Pop the next inbox message.  Writes the sender id (u32 LE) to
 * *src_out, copies min(len, buf_cap) payload bytes to buf and returns the full
 * payload length (so a result > buf_cap means the message was truncated), or
 * WE_RECV_EMPTY.  Inbox order: sender id, then the sender's send order. */
WE_IMPORT(recv) int32_t we_recv(uint32_t *src_out, void *buf, int32_t buf_cap);

/* [cap "recv"] Number of messages left in the inbox. */
WE_IMPORT(inbox_count) int32_t we_inbox_count(void);

/* [cap "send"] Queue a message to agent dst, delivered next tick.
 * WE_OK, WE_SEND_QUOTA, WE_SEND_NO_AGENT or WE_SEND_TOO_LONG. */
WE_IMPORT(send) int32_t we_send(int32_t dst, const void *buf, int32_t len);

/* [cap "rand"] Next number of this agent's deterministic generator for this
 * tick.  The only source of randomness an agent has. */
WE_IMPORT(rand_u64) int64_t we_rand_u64(void);

/* [cap "tick"] Current tick (the same value we_step receives). */
WE_IMPORT(tick) int64_t we_tick(void);

/* [cap "log"] Log one line.  WE_OK or WE_LOG_LIMIT. */
WE_IMPORT(log) int32_t we_log(const void *text, int32_t len);

/* [cap "publish"] Set this agent's observable state for this tick; the last
 * call in a tick wins.  WE_OK or WE_PUBLISH_TOO_LONG. */
WE_IMPORT(publish) int32_t we_publish(const void *data, int32_t len);

/* [cap "infer"] Ask model `model` for an inference.  Returns a request id
 * (>= 0) or WE_INFER_BUDGET / WE_INFER_NO_MODEL / WE_INFER_TOO_LONG.  The
 * result arrives in a later tick as a message from WE_INFERENCE_SENDER. */
WE_IMPORT(infer) int64_t we_infer(int32_t model, const void *data, int32_t len);

/* [always granted] Copy min(config_len, cap) config bytes into buf; returns
 * config_len. */
WE_IMPORT(config_read) int32_t we_config_read(void *buf, int32_t cap);

/* [always granted] Number of agents in the run (ids are 0..count-1). */
WE_IMPORT(agent_count) int32_t we_agent_count(void);

/* ------------------------------------------------------------------------ */
/* Exports                                                                  */
/* ------------------------------------------------------------------------ */

/* Declared here (with their export names) so the agent's definitions are
 * checked against the ABI signatures by the compiler. */
WE_EXPORT(we_abi_version) int32_t we_abi_version(void);
WE_EXPORT(we_init) int32_t we_init(int32_t agent_id, int64_t seed, int32_t config_len);
WE_EXPORT(we_step) int32_t we_step(int64_t tick);

/* Weak so that an agent split over several translation units, each including
 * this header, still links to exactly one definition. */
__attribute__((weak)) int32_t we_abi_version(void) { return WE_ABI_VERSION; }

/* ------------------------------------------------------------------------ */
/* Freestanding helpers                                                     */
/* ------------------------------------------------------------------------ */

/* There is no libc: these stand in for memcpy/memset/strlen.  The build pins
 * the bulk-memory feature, so the optimiser turns the loops into
 * memory.copy / memory.fill rather than calls to a libc that is not there. */
static inline void *we_memcpy(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    while (n--) *d++ = *s++;
    return dst;
}

static inline void *we_memset(void *dst, int value, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    while (n--) *d++ = (unsigned char)value;
    return dst;
}

static inline size_t we_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Little-endian loads/stores at any alignment.  Message and config payloads
 * are plain byte strings, so go through these rather than casting a byte
 * pointer to a wider type (which would be an unaligned, aliasing access). */
static inline uint32_t we_load_u32(const void *p) {
    const unsigned char *b = (const unsigned char *)p;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static inline void we_store_u32(void *p, uint32_t v) {
    unsigned char *b = (unsigned char *)p;
    b[0] = (unsigned char)v;
    b[1] = (unsigned char)(v >> 8);
    b[2] = (unsigned char)(v >> 16);
    b[3] = (unsigned char)(v >> 24);
}

static inline uint64_t we_load_u64(const void *p) {
    const unsigned char *b = (const unsigned char *)p;
    return (uint64_t)we_load_u32(b) | (uint64_t)we_load_u32(b + 4) << 32;
}

static inline void we_store_u64(void *p, uint64_t v) {
    unsigned char *b = (unsigned char *)p;
    we_store_u32(b, (uint32_t)v);
    we_store_u32(b + 4, (uint32_t)(v >> 32));
}

static inline int32_t we_load_i32(const void *p) { return (int32_t)we_load_u32(p); }
static inline void we_store_i32(void *p, int32_t v) { we_store_u32(p, (uint32_t)v); }
static inline int64_t we_load_i64(const void *p) { return (int64_t)we_load_u64(p); }
static inline void we_store_i64(void *p, int64_t v) { we_store_u64(p, (uint64_t)v); }

static inline double we_load_f64(const void *p) {
    uint64_t bits = we_load_u64(p);
    double d;
    we_memcpy(&d, &bits, sizeof d);
    return d;
}

static inline void we_store_f64(void *p, double v) {
    uint64_t bits;
    we_memcpy(&bits, &v, sizeof bits);
    we_store_u64(p, bits);
}

/* ------------------------------------------------------------------------ */
/* Convenience wrappers                                                     */
/* ------------------------------------------------------------------------ */

/* wasm32 memory is little-endian, so an array of u32 already is its wire
 * encoding: no packing needed. */
static inline int32_t we_send_u32s(int32_t dst, const uint32_t *values, int32_t n) {
    return we_send(dst, values, n * (int32_t)sizeof(uint32_t));
}

static inline int32_t we_log_str(const char *text) {
    return we_log(text, (int32_t)we_strlen(text));
}

static inline int32_t we_publish_u8(uint8_t value) {
    return we_publish(&value, 1);
}

/* Read the config as little-endian i32 words (the scenario's `config_i32`).
 * Fills at most `max` words, zeroing those the config does not provide, and
 * returns how many words the config holds. */
static inline int32_t we_config_i32s(int32_t *out, int32_t max) {
    we_memset(out, 0, (size_t)max * sizeof(int32_t));
    int32_t len = we_config_read(out, max * (int32_t)sizeof(int32_t));
    return len < 0 ? len : len / (int32_t)sizeof(int32_t);
}

/* ------------------------------------------------------------------------ */
/* Local generator                                                          */
/* ------------------------------------------------------------------------ */

/* Every host call costs far more than a few wasm instructions, so an agent
 * that needs many random draws per tick should call we_rand_u64 once and
 * expand it locally.  Seeding from the host keeps the run deterministic and
 * reproducible: the stream still depends only on (run seed, agent id, tick).
 * splitmix64: tiny state, good statistical quality for simulation draws. */
typedef struct {
    uint64_t state;
} we_rng;

static inline we_rng we_rng_seed(uint64_t seed) {
    we_rng r;
    r.state = seed;
    return r;
}

static inline we_rng we_rng_from_host(void) {
    return we_rng_seed((uint64_t)we_rand_u64());
}

static inline uint64_t we_rng_next(we_rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) for n > 0.  Multiply-shift rather than modulo: no bias
 * worth caring about for n << 2^32 and no division. */
static inline uint32_t we_rng_below(we_rng *r, uint32_t n) {
    return (uint32_t)(((we_rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* True with probability permille/1000. */
static inline bool we_rng_chance(we_rng *r, uint32_t permille) {
    return we_rng_below(r, 1000) < permille;
}

/* Stateless 64-bit mixer, for deriving fixed per-agent values (graph links,
 * initial conditions) from the seed and agent id in we_init. */
static inline uint64_t we_mix64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

#ifdef __cplusplus
}
#endif

#endif /* WE_AGENT_H */
