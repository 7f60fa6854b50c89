/*
 * wasm-engine native layer: see we_native.h for the contract.
 *
 * Memory ordering: the producer publishes a record by storing the write
 * index with release semantics after the bytes are written; the consumer
 * loads it with acquire semantics before reading them (and symmetrically
 * for the read index and free space). The sleep/wake handshake uses
 * sequentially consistent store-then-load on both sides (Dekker), so that
 * either the waiter sees the new index or the publisher sees the waiter's
 * flag and wakes it: no lost wake-ups.
 */
#if !defined(__linux__)
#error "wasm-engine's native layer uses Linux futexes"
#endif

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "we_native.h"

_Static_assert(sizeof(we_record_header) == WE_RECORD_HEADER_BYTES, "record header size");
_Static_assert(offsetof(we_record_header, tick) == 16, "record header tick offset");
_Static_assert(offsetof(we_record_header, check) == 28, "record header check offset");

#define ACQ __ATOMIC_ACQUIRE
#define REL __ATOMIC_RELEASE
#define SEQ __ATOMIC_SEQ_CST
#define RLX __ATOMIC_RELAXED

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int in_bounds(uint64_t size, uint64_t off, uint64_t len) {
    return off <= size && len <= size - off;
}

static inline int check_word(const uint8_t *base, uint64_t size, uint64_t off, uint64_t width) {
    if (base == NULL || !in_bounds(size, off, width)) return WE_ERR_BOUNDS;
    if (((uintptr_t)(base + off)) % width != 0) return WE_ERR_ALIGN;
    return WE_OK;
}

uint64_t we_layout_value(int id) {
    switch (id) {
    case 0: return sizeof(we_record_header);
    case 1: return offsetof(we_record_header, kind);
    case 2: return offsetof(we_record_header, flags);
    case 3: return offsetof(we_record_header, payload_len);
    case 4: return offsetof(we_record_header, source);
    case 5: return offsetof(we_record_header, destination);
    case 6: return offsetof(we_record_header, tick);
    case 7: return offsetof(we_record_header, seq);
    case 8: return offsetof(we_record_header, check);
    case 9: return WE_RING_HEADER_BYTES;
    case 10: return WE_RH_WRITE_INDEX;
    case 11: return WE_RH_READ_INDEX;
    case 12: return WE_RING_VERSION;
    case 13: return WE_RING_MAGIC;
    default: return UINT64_MAX;
    }
}

/* ---- atomics ---------------------------------------------------------- */

int we_load_u32(const uint8_t *base, uint64_t size, uint64_t off, uint32_t *out) {
    int rc = check_word(base, size, off, 4);
    if (rc) return rc;
    *out = __atomic_load_n((const uint32_t *)(base + off), ACQ);
    return WE_OK;
}

int we_load_u64(const uint8_t *base, uint64_t size, uint64_t off, uint64_t *out) {
    int rc = check_word(base, size, off, 8);
    if (rc) return rc;
    *out = __atomic_load_n((const uint64_t *)(base + off), ACQ);
    return WE_OK;
}

int we_store_u32(uint8_t *base, uint64_t size, uint64_t off, uint32_t value) {
    int rc = check_word(base, size, off, 4);
    if (rc) return rc;
    __atomic_store_n((uint32_t *)(base + off), value, REL);
    return WE_OK;
}

int we_store_u64(uint8_t *base, uint64_t size, uint64_t off, uint64_t value) {
    int rc = check_word(base, size, off, 8);
    if (rc) return rc;
    __atomic_store_n((uint64_t *)(base + off), value, REL);
    return WE_OK;
}

int we_cas_u32(uint8_t *base, uint64_t size, uint64_t off, uint32_t expected,
               uint32_t desired, uint32_t *actual) {
    int rc = check_word(base, size, off, 4);
    if (rc) return rc;
    uint32_t e = expected;
    int ok = __atomic_compare_exchange_n((uint32_t *)(base + off), &e, desired, 0, SEQ, SEQ);
    *actual = e;
    return ok ? 1 : 0;
}

int we_cas_u64(uint8_t *base, uint64_t size, uint64_t off, uint64_t expected,
               uint64_t desired, uint64_t *actual) {
    int rc = check_word(base, size, off, 8);
    if (rc) return rc;
    uint64_t e = expected;
    int ok = __atomic_compare_exchange_n((uint64_t *)(base + off), &e, desired, 0, SEQ, SEQ);
    *actual = e;
    return ok ? 1 : 0;
}

int we_fetch_add_u32(uint8_t *base, uint64_t size, uint64_t off, uint32_t delta, uint32_t *old) {
    int rc = check_word(base, size, off, 4);
    if (rc) return rc;
    *old = __atomic_fetch_add((uint32_t *)(base + off), delta, SEQ);
    return WE_OK;
}

int we_fetch_add_u64(uint8_t *base, uint64_t size, uint64_t off, uint64_t delta, uint64_t *old) {
    int rc = check_word(base, size, off, 8);
    if (rc) return rc;
    *old = __atomic_fetch_add((uint64_t *)(base + off), delta, SEQ);
    return WE_OK;
}

/* ---- futex ------------------------------------------------------------ */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Shared (not FUTEX_PRIVATE) because the word lives in a mapping that other
 * processes share. Returns WE_OK when woken or the value differs, WE_TIMEOUT
 * when the relative timeout expired. */
static int futex_wait_once(uint32_t *addr, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    long r = syscall(SYS_futex, addr, FUTEX_WAIT, expected, tsp, NULL, 0);
    if (r == 0) return WE_OK;
    if (errno == EAGAIN || errno == EINTR) return WE_OK;
    if (errno == ETIMEDOUT) return WE_TIMEOUT;
    return WE_ERR_SYS;
}

static void futex_wake(uint32_t *addr, int32_t count) {
    syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
}

/* timeout_ns < 0 waits forever. Spins briefly first so a quick partner
 * costs no syscall, then blocks so waiting processes do not burn cores. */
int we_wait_u32(uint8_t *base, uint64_t size, uint64_t off, uint32_t expected,
                int64_t timeout_ns, uint32_t spin_iters) {
    int rc = check_word(base, size, off, 4);
    if (rc) return rc;
    uint32_t *addr = (uint32_t *)(base + off);
    for (uint32_t i = 0; i < spin_iters; i++) {
        if (__atomic_load_n(addr, ACQ) != expected) return WE_OK;
        cpu_relax();
    }
    if (timeout_ns == 0) return __atomic_load_n(addr, ACQ) != expected ? WE_OK : WE_TIMEOUT;
    int64_t deadline = timeout_ns > 0 ? now_ns() + timeout_ns : -1;
    for (;;) {
        if (__atomic_load_n(addr, ACQ) != expected) return WE_OK;
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - now_ns();
            if (left <= 0) return WE_TIMEOUT;
        }
        rc = futex_wait_once(addr, expected, left);
        if (rc == WE_ERR_SYS) return rc;
        /* EINTR/spurious wake: loop re-checks the value and the deadline. */
    }
}

int we_wake_u32(uint8_t *base, uint64_t size, uint64_t off, int32_t count) {
    int rc = check_word(base, size, off, 4);
    if (rc) return rc;
    long r = syscall(SYS_futex, (uint32_t *)(base + off), FUTEX_WAKE, count, NULL, NULL, 0);
    return r < 0 ? WE_ERR_SYS : (int)r;
}

/* ---- record check ----------------------------------------------------- */

/* A fast non-cryptographic 32-bit check over 8-byte words (payload tail
 * zero-padded, exactly as it lies in the ring). It catches torn, stale and
 * corrupted records; it is no defence against a deliberate forger, which a
 * process sharing the mapping could be anyway. Mirrored in Python by
 * shm_protocol's reference implementation. */
static inline uint64_t mix64(uint64_t h, uint64_t w) {
    h ^= w;
    h *= 0x9E3779B97F4A7C15ULL;
    h ^= h >> 29;
    return h;
}

uint32_t we_record_check(const we_record_header *hdr, const uint8_t *payload) {
    /* Four independent lanes (word i goes to lane i % 4) so the multiplies
     * pipeline instead of forming one long dependency chain. */
    we_record_header tmp = *hdr;
    tmp.check = 0;
    uint64_t words[4];
    memcpy(words, &tmp, sizeof tmp);
    uint64_t l0 = 0x243F6A8885A308D3ULL, l1 = 0x13198A2E03707344ULL;
    uint64_t l2 = 0xA4093822299F31D0ULL, l3 = 0x082EFA98EC4E6C89ULL;
    l0 = mix64(l0, words[0]);
    l1 = mix64(l1, words[1]);
    l2 = mix64(l2, words[2]);
    l3 = mix64(l3, words[3]);
    uint32_t len = hdr->payload_len;
    uint32_t nwords = (len + 7u) / 8u;
    uint32_t full = len / 8u;
    uint32_t i = 0;
    for (; i + 4 <= full; i += 4) {
        uint64_t w[4];
        memcpy(w, payload + 8 * i, 32);
        l0 = mix64(l0, w[0]);
        l1 = mix64(l1, w[1]);
        l2 = mix64(l2, w[2]);
        l3 = mix64(l3, w[3]);
    }
    for (; i < nwords; i++) {
        uint64_t w = 0;
        uint32_t n = (i < full) ? 8u : (len - 8u * full);
        memcpy(&w, payload + 8 * i, n);
        switch (i & 3u) {
        case 0: l0 = mix64(l0, w); break;
        case 1: l1 = mix64(l1, w); break;
        case 2: l2 = mix64(l2, w); break;
        default: l3 = mix64(l3, w); break;
        }
    }
    uint64_t h = mix64(mix64(mix64(mix64(l0, l1), l2), l3), (uint64_t)len);
    return (uint32_t)(h ^ (h >> 32));
}

/* ---- rings ------------------------------------------------------------ */

typedef struct {
    uint8_t *hdr;      /* ring header */
    uint8_t *data;     /* data area */
    uint64_t cap;      /* power of two */
    uint64_t mask;
    uint32_t max_record;
    uint64_t data_off; /* absolute offset of data area in the mapping */
} ring_t;

#define RH64(r, off) ((uint64_t *)((r)->hdr + (off)))
#define RH32(r, off) ((uint32_t *)((r)->hdr + (off)))

static inline uint64_t align8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

static int ring_open(const uint8_t *base, uint64_t size, uint64_t ring_off, ring_t *r,
                     uint64_t *err_off) {
    *err_off = ring_off;
    if (base == NULL || ring_off % 64 != 0 || !in_bounds(size, ring_off, WE_RING_HEADER_BYTES))
        return WE_ERR_BOUNDS;
    const uint8_t *h = base + ring_off;
    uint32_t magic;
    uint16_t version, header_bytes;
    uint64_t cap;
    uint32_t max_record, align, rec_hdr;
    memcpy(&magic, h + WE_RH_MAGIC, 4);
    memcpy(&version, h + WE_RH_VERSION, 2);
    memcpy(&header_bytes, h + WE_RH_HEADER_BYTES, 2);
    memcpy(&cap, h + WE_RH_CAPACITY, 8);
    memcpy(&max_record, h + WE_RH_MAX_RECORD, 4);
    memcpy(&align, h + WE_RH_RECORD_ALIGN, 4);
    memcpy(&rec_hdr, h + WE_RH_RECORD_HEADER, 4);
    if (magic != WE_RING_MAGIC) { *err_off = ring_off + WE_RH_MAGIC; return WE_ERR_MAGIC; }
    if (version != WE_RING_VERSION) { *err_off = ring_off + WE_RH_VERSION; return WE_ERR_VERSION; }
    if (header_bytes != WE_RING_HEADER_BYTES || align != WE_RECORD_ALIGN ||
        rec_hdr != WE_RECORD_HEADER_BYTES) {
        *err_off = ring_off + WE_RH_HEADER_BYTES;
        return WE_ERR_LAYOUT;
    }
    if (cap < WE_RING_MIN_CAPACITY || cap > WE_RING_MAX_CAPACITY || (cap & (cap - 1)) != 0 ||
        !in_bounds(size, ring_off + WE_RING_HEADER_BYTES, cap)) {
        *err_off = ring_off + WE_RH_CAPACITY;
        return WE_ERR_LAYOUT;
    }
    if (max_record < WE_RECORD_HEADER_BYTES + 8 || max_record > cap / 2 || max_record % 8 != 0) {
        *err_off = ring_off + WE_RH_MAX_RECORD;
        return WE_ERR_LAYOUT;
    }
    r->hdr = (uint8_t *)h;
    r->data = (uint8_t *)h + WE_RING_HEADER_BYTES;
    r->cap = cap;
    r->mask = cap - 1;
    r->max_record = max_record;
    r->data_off = ring_off + WE_RING_HEADER_BYTES;
    return WE_OK;
}

int we_ring_init(uint8_t *base, uint64_t size, uint64_t ring_off, uint64_t capacity_bytes,
                 uint32_t max_record_bytes, uint32_t ring_id) {
    if (base == NULL || ring_off % 64 != 0 || !in_bounds(size, ring_off, WE_RING_HEADER_BYTES))
        return WE_ERR_BOUNDS;
    if (capacity_bytes < WE_RING_MIN_CAPACITY || capacity_bytes > WE_RING_MAX_CAPACITY ||
        (capacity_bytes & (capacity_bytes - 1)) != 0)
        return WE_ERR_LAYOUT;
    if (!in_bounds(size, ring_off + WE_RING_HEADER_BYTES, capacity_bytes)) return WE_ERR_BOUNDS;
    if (max_record_bytes < WE_RECORD_HEADER_BYTES + 8 || max_record_bytes > capacity_bytes / 2 ||
        max_record_bytes % 8 != 0)
        return WE_ERR_LAYOUT;
    uint8_t *h = base + ring_off;
    /* Zero everything (header padding and data) so equal states hash equal. */
    memset(h, 0, WE_RING_HEADER_BYTES + capacity_bytes);
    uint32_t magic = WE_RING_MAGIC, align = WE_RECORD_ALIGN, rec_hdr = WE_RECORD_HEADER_BYTES;
    uint16_t version = WE_RING_VERSION, header_bytes = WE_RING_HEADER_BYTES;
    memcpy(h + WE_RH_VERSION, &version, 2);
    memcpy(h + WE_RH_HEADER_BYTES, &header_bytes, 2);
    memcpy(h + WE_RH_CAPACITY, &capacity_bytes, 8);
    memcpy(h + WE_RH_MAX_RECORD, &max_record_bytes, 4);
    memcpy(h + WE_RH_RECORD_ALIGN, &align, 4);
    memcpy(h + WE_RH_RECORD_HEADER, &rec_hdr, 4);
    memcpy(h + WE_RH_RING_ID, &ring_id, 4);
    /* Magic last, with release: a peer that sees the magic sees the rest. */
    __atomic_store_n((uint32_t *)(h + WE_RH_MAGIC), magic, REL);
    return WE_OK;
}

/* Loads both indices and checks they describe a possible ring state. */
static int ring_indices(ring_t *r, uint64_t *w, uint64_t *rd, uint64_t *err_off) {
    *w = __atomic_load_n(RH64(r, WE_RH_WRITE_INDEX), ACQ);
    *rd = __atomic_load_n(RH64(r, WE_RH_READ_INDEX), ACQ);
    if (*w < *rd || *w - *rd > r->cap || (*w % 8) != 0 || (*rd % 8) != 0) {
        *err_off = r->data_off - WE_RING_HEADER_BYTES + WE_RH_WRITE_INDEX;
        return WE_ERR_INDEX;
    }
    return WE_OK;
}

int we_ring_validate(const uint8_t *base, uint64_t size, uint64_t ring_off, uint64_t *err_off) {
    ring_t r;
    int rc = ring_open(base, size, ring_off, &r, err_off);
    if (rc) return rc;
    uint64_t w, rd;
    return ring_indices(&r, &w, &rd, err_off);
}

int we_ring_stats(const uint8_t *base, uint64_t size, uint64_t ring_off, uint64_t *used_bytes,
                  uint64_t *pushed, uint64_t *popped) {
    ring_t r;
    uint64_t err_off, w, rd;
    int rc = ring_open(base, size, ring_off, &r, &err_off);
    if (rc) return rc;
    rc = ring_indices(&r, &w, &rd, &err_off);
    if (rc) return rc;
    *used_bytes = w - rd;
    *pushed = __atomic_load_n(RH64(&r, WE_RH_RECORDS_PUSHED), RLX);
    *popped = __atomic_load_n(RH64(&r, WE_RH_RECORDS_POPPED), RLX);
    return WE_OK;
}

/* Wait until `word` (a sequence counter) moves past `seen` or the deadline,
 * announcing ourselves through `sleeping` so the peer knows to wake us. The
 * caller re-checks the ring condition after this returns. */
static int ring_block(uint32_t *seq_word, uint32_t *sleeping, uint32_t seen,
                      int (*ready)(ring_t *, uint64_t), ring_t *r, uint64_t arg,
                      int64_t deadline) {
    __atomic_store_n(sleeping, 1u, SEQ);
    if (ready(r, arg)) {
        __atomic_store_n(sleeping, 0u, RLX);
        return WE_OK;
    }
    int64_t left = -1;
    if (deadline >= 0) {
        left = deadline - now_ns();
        if (left <= 0) {
            __atomic_store_n(sleeping, 0u, RLX);
            return WE_TIMEOUT;
        }
    }
    int rc = futex_wait_once(seq_word, seen, left);
    __atomic_store_n(sleeping, 0u, RLX);
    return rc;
}

static int has_data(ring_t *r, uint64_t unused) {
    (void)unused;
    return __atomic_load_n(RH64(r, WE_RH_WRITE_INDEX), SEQ) !=
           __atomic_load_n(RH64(r, WE_RH_READ_INDEX), RLX);
}

static int has_space(ring_t *r, uint64_t need) {
    uint64_t w = __atomic_load_n(RH64(r, WE_RH_WRITE_INDEX), RLX);
    uint64_t rd = __atomic_load_n(RH64(r, WE_RH_READ_INDEX), SEQ);
    return w - rd <= r->cap && r->cap - (w - rd) >= need;
}

/* Generic wait: spin, then block, until cond(r, arg) or deadline. */
static int ring_wait(ring_t *r, int (*cond)(ring_t *, uint64_t), uint64_t arg,
                     uint32_t *seq_word, uint32_t *sleeping, int64_t timeout_ns,
                     uint32_t spin_iters) {
    if (cond(r, arg)) return WE_OK;
    for (uint32_t i = 0; i < spin_iters; i++) {
        cpu_relax();
        if (cond(r, arg)) return WE_OK;
    }
    if (timeout_ns == 0) return WE_TIMEOUT;
    int64_t deadline = timeout_ns > 0 ? now_ns() + timeout_ns : -1;
    for (;;) {
        uint32_t seen = __atomic_load_n(seq_word, ACQ);
        if (cond(r, arg)) return WE_OK;
        int rc = ring_block(seq_word, sleeping, seen, cond, r, arg, deadline);
        if (rc == WE_ERR_SYS || rc == WE_TIMEOUT) return cond(r, arg) ? WE_OK : rc;
    }
}

static void ring_publish(ring_t *r, uint64_t w, uint64_t n) {
    __atomic_store_n(RH64(r, WE_RH_WRITE_INDEX), w, SEQ);
    __atomic_fetch_add(RH64(r, WE_RH_RECORDS_PUSHED), n, RLX);
    __atomic_fetch_add(RH32(r, WE_RH_DATA_SEQ), 1u, SEQ);
    if (__atomic_load_n(RH32(r, WE_RH_CONSUMER_SLEEPING), SEQ))
        futex_wake(RH32(r, WE_RH_DATA_SEQ), 1);
}

static void ring_release(ring_t *r, uint64_t rd, uint64_t n) {
    __atomic_store_n(RH64(r, WE_RH_READ_INDEX), rd, SEQ);
    __atomic_fetch_add(RH64(r, WE_RH_RECORDS_POPPED), n, RLX);
    __atomic_fetch_add(RH32(r, WE_RH_SPACE_SEQ), 1u, SEQ);
    if (__atomic_load_n(RH32(r, WE_RH_PRODUCER_SLEEPING), SEQ))
        futex_wake(RH32(r, WE_RH_SPACE_SEQ), 1);
}

/* Bytes a record of `total` bytes consumes at write index w, wrap padding
 * included: a record is never split across the end of the data area. */
static inline uint64_t need_at(const ring_t *r, uint64_t w, uint64_t total) {
    uint64_t tail = r->cap - (w & r->mask);
    return tail < total ? tail + total : total;
}

/* Writes one record at w (space already checked); returns the new index. */
static uint64_t put_record(ring_t *r, uint64_t w, const we_record_header *src,
                           const uint8_t *payload) {
    uint64_t len = src->payload_len;
    uint64_t total = WE_RECORD_HEADER_BYTES + align8(len);
    uint64_t pos = w & r->mask;
    uint64_t tail = r->cap - pos;
    if (tail < total) {
        /* Wrap rule: fill the tail; if a header fits, mark it as padding. */
        memset(r->data + pos, 0, tail);
        if (tail >= WE_RECORD_HEADER_BYTES) {
            uint16_t k = WE_KIND_WRAP;
            memcpy(r->data + pos, &k, 2);
        }
        w += tail;
        pos = 0;
    }
    we_record_header h = *src;
    h.check = 0;
    h.check = we_record_check(&h, payload);
    memcpy(r->data + pos, &h, WE_RECORD_HEADER_BYTES);
    if (len) memcpy(r->data + pos + WE_RECORD_HEADER_BYTES, payload, len);
    uint64_t pad = align8(len) - len;
    if (pad) memset(r->data + pos + WE_RECORD_HEADER_BYTES + len, 0, pad);
    return w + total;
}

/* The write index, and a read index no later than the real one: the
 * caller's cached copy when that leaves room for `need` bytes (no load of
 * the consumer's cache line, which it writes on every pop), else the real
 * one, validated and cached. */
static int push_indices(ring_t *r, uint64_t *rd_cache, uint64_t need, uint64_t *w, uint64_t *rd,
                        uint64_t *err_off) {
    if (rd_cache != NULL) {
        uint64_t cw = __atomic_load_n(RH64(r, WE_RH_WRITE_INDEX), RLX); /* our own store */
        uint64_t c = *rd_cache;
        if (cw >= c && cw - c <= r->cap && (cw % 8) == 0 && r->cap - (cw - c) >= need) {
            *w = cw;
            *rd = c;
            return WE_OK;
        }
    }
    int rc = ring_indices(r, w, rd, err_off);
    if (rc == WE_OK && rd_cache != NULL) *rd_cache = *rd;
    return rc;
}

static int ring_push(uint8_t *base, uint64_t size, uint64_t ring_off, const we_record_header *hdrs,
                     uint32_t count, const uint8_t *payload, uint64_t payload_bytes,
                     int64_t timeout_ns, uint32_t spin_iters, uint32_t *pushed, uint64_t *err_off,
                     uint64_t *rd_cache) {
    ring_t r;
    *pushed = 0;
    int rc = ring_open(base, size, ring_off, &r, err_off);
    if (rc) return rc;
    /* Validate the whole batch first: all or nothing on bad input. */
    uint64_t total_payload = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint16_t k = hdrs[i].kind;
        if (k == WE_KIND_INVALID || k == WE_KIND_WRAP) { *err_off = i; return WE_ERR_RECORD; }
        if (WE_RECORD_HEADER_BYTES + align8(hdrs[i].payload_len) > r.max_record) {
            *err_off = i;
            return WE_ERR_TOO_LARGE;
        }
        total_payload += hdrs[i].payload_len;
    }
    if (total_payload > payload_bytes) { *err_off = total_payload; return WE_ERR_ARG; }

    int64_t deadline = timeout_ns > 0 ? now_ns() + timeout_ns : timeout_ns;
    uint64_t poff = 0;
    uint32_t i = 0;
    while (i < count) {
        uint64_t w, rd;
        /* Room for the next record wherever it lands (wrap padding included). */
        uint64_t first = 2 * (WE_RECORD_HEADER_BYTES + align8(hdrs[i].payload_len));
        rc = push_indices(&r, rd_cache, first, &w, &rd, err_off);
        if (rc) return rc;
        uint64_t free_bytes = r.cap - (w - rd);
        uint32_t start = i;
        while (i < count) {
            uint64_t total = WE_RECORD_HEADER_BYTES + align8(hdrs[i].payload_len);
            uint64_t need = need_at(&r, w, total);
            if (need > free_bytes) break;
            w = put_record(&r, w, &hdrs[i], payload + poff);
            free_bytes -= need;
            poff += hdrs[i].payload_len;
            i++;
        }
        if (i > start) {
            ring_publish(&r, w, i - start);
            *pushed = i;
            continue;
        }
        /* Full: wait for the consumer to free what the next record needs. */
        uint64_t total = WE_RECORD_HEADER_BYTES + align8(hdrs[i].payload_len);
        int64_t left = deadline;
        if (deadline > 0) {
            left = deadline - now_ns();
            if (left <= 0) return WE_TIMEOUT;
        }
        rc = ring_wait(&r, has_space, need_at(&r, w, total), RH32(&r, WE_RH_SPACE_SEQ),
                       RH32(&r, WE_RH_PRODUCER_SLEEPING), left, spin_iters);
        if (rc != WE_OK) return rc;
    }
    return WE_OK;
}

int we_ring_push(uint8_t *base, uint64_t size, uint64_t ring_off, const we_record_header *hdrs,
                 uint32_t count, const uint8_t *payload, uint64_t payload_bytes,
                 int64_t timeout_ns, uint32_t spin_iters, uint32_t *pushed, uint64_t *err_off) {
    return ring_push(base, size, ring_off, hdrs, count, payload, payload_bytes, timeout_ns,
                     spin_iters, pushed, err_off, NULL);
}

int we_ring_push_one(uint8_t *base, uint64_t size, uint64_t ring_off, uint16_t kind,
                     uint16_t flags, uint32_t source, uint32_t destination, uint64_t tick,
                     uint32_t seq, const char *payload, uint32_t payload_len,
                     int64_t timeout_ns, uint32_t spin_iters, uint64_t *err_off) {
    we_record_header h = {kind, flags, payload_len, source, destination, tick, seq, 0};
    uint32_t pushed;
    return we_ring_push(base, size, ring_off, &h, 1, (const uint8_t *)payload, payload_len, timeout_ns,
                        spin_iters, &pushed, err_off);
}

int we_ring_pop(uint8_t *base, uint64_t size, uint64_t ring_off, we_record_header *hdrs_out,
                uint32_t max_count, uint8_t *payload_out, uint64_t payload_cap,
                int64_t timeout_ns, uint32_t spin_iters, uint32_t *popped,
                uint64_t *payload_used, uint64_t *err_off) {
    ring_t r;
    *popped = 0;
    *payload_used = 0;
    int rc = ring_open(base, size, ring_off, &r, err_off);
    if (rc) return rc;
    if (max_count == 0) return WE_ERR_ARG;
    rc = ring_wait(&r, has_data, 0, RH32(&r, WE_RH_DATA_SEQ), RH32(&r, WE_RH_CONSUMER_SLEEPING),
                   timeout_ns, spin_iters);
    if (rc != WE_OK) return rc;

    uint64_t w, rd;
    rc = ring_indices(&r, &w, &rd, err_off);
    if (rc) return rc;
    uint64_t start_rd = rd;
    uint32_t n = 0;
    uint64_t used = 0;
    while (rd < w && n < max_count) {
        uint64_t pos = rd & r.mask;
        uint64_t tail = r.cap - pos;
        *err_off = r.data_off + pos;
        if (tail < WE_RECORD_HEADER_BYTES) {
            /* Implicit wrap: no header fits in the tail. */
            if (tail > w - rd) { rc = WE_ERR_RECORD; break; }
            rd += tail;
            continue;
        }
        /* Copy the header out before validating it: the peer could change
         * the shared bytes under us; we only trust our private copy. */
        we_record_header h;
        memcpy(&h, r.data + pos, WE_RECORD_HEADER_BYTES);
        if (h.kind == WE_KIND_WRAP) {
            if (tail > w - rd) { rc = WE_ERR_RECORD; break; }
            rd += tail;
            continue;
        }
        uint64_t total = WE_RECORD_HEADER_BYTES + align8((uint64_t)h.payload_len);
        if (h.kind == WE_KIND_INVALID || total > r.max_record || total > tail || total > w - rd) {
            rc = WE_ERR_RECORD;
            break;
        }
        if (used + h.payload_len > payload_cap) {
            if (n == 0) { rc = WE_ERR_ARG; *err_off = h.payload_len; }
            break; /* caller's payload buffer is full: rest stays for next pop */
        }
        uint8_t *dst = payload_out + used;
        if (h.payload_len) memcpy(dst, r.data + pos + WE_RECORD_HEADER_BYTES, h.payload_len);
        if (we_record_check(&h, dst) != h.check) { rc = WE_ERR_CHECKSUM; break; }
        hdrs_out[n++] = h;
        used += h.payload_len;
        rd += total;
    }
    if (rd != start_rd) ring_release(&r, rd, n);
    *popped = n;
    *payload_used = used;
    if (rc == WE_OK) *err_off = 0;
    return rc;
}

int we_ring_exchange(we_ring_ref *out, const we_ring_ref *in, uint16_t kind,
                     uint32_t source, uint32_t destination, uint64_t tick, uint32_t seq,
                     const char *payload, uint32_t payload_len, we_record_header *reply,
                     uint8_t *reply_payload, uint32_t reply_cap, int64_t timeout_ns,
                     uint64_t *err_off) {
    int rc;
    if (out != NULL) {
        we_record_header h = {kind, 0, payload_len, source, destination, tick, seq, 0};
        uint32_t pushed;
        rc = ring_push(out->base, out->size, out->ring_off, &h, 1, (const uint8_t *)payload,
                       payload_len, timeout_ns, out->spin_iters, &pushed, err_off, &out->read_cache);
        if (rc) return rc == WE_TIMEOUT ? WE_ERR_FULL_TIMEOUT : rc;
    }
    uint32_t popped;
    uint64_t used;
    return we_ring_pop(in->base, in->size, in->ring_off, reply, 1, reply_payload, reply_cap,
                       timeout_ns, in->spin_iters, &popped, &used, err_off);
}

int64_t we_exchange(we_exchange_ctx *c, const char *payload, uint32_t payload_len) {
    int rc = we_ring_exchange(c->send_first ? &c->out : NULL, &c->in, c->req.kind, c->req.source,
                              c->req.destination, c->req.tick, c->req.seq, payload, payload_len,
                              &c->rep, c->rep_payload, c->rep_cap, c->timeout_ns, &c->err_off);
    if (rc == WE_TIMEOUT) return WE_ERR_EMPTY_TIMEOUT;
    if (rc != WE_OK) return rc;
    return (int64_t)c->rep.payload_len;
}

/* Index j of n items, negative counting from the end as in numpy; -1 if out of range. */
static int64_t item_index(int64_t j, uint64_t n) {
    if (j < 0) j += (int64_t)n;
    return j >= 0 && (uint64_t)j < n ? j : -1;
}

int we_gather_records(const uint8_t *src, uint64_t src_len, const int64_t *offsets, uint64_t n_src,
                      const int64_t *index, uint64_t n, uint8_t *dst, uint64_t dst_len, uint64_t *err_index) {
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        int64_t j = item_index(index[i], n_src);
        if (j < 0) {
            *err_index = i;
            return WE_ERR_BOUNDS;
        }
        int64_t lo = offsets[j], hi = offsets[j + 1];
        if (lo < 0 || hi < lo || !in_bounds(src_len, (uint64_t)lo, (uint64_t)(hi - lo))) {
            *err_index = i;
            return WE_ERR_BOUNDS;
        }
        total += (uint64_t)(hi - lo);
    }
    if (total > dst_len) {
        *err_index = n;
        return WE_ERR_BOUNDS;
    }
    uint64_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        int64_t j = item_index(index[i], n_src);
        uint64_t len = (uint64_t)(offsets[j + 1] - offsets[j]);
        if (len) memcpy(dst + off, src + offsets[j], (size_t)len);
        off += len;
    }
    return WE_OK;
}

/* ---- canonical order of record headers ---------------------------------- */

/* A record's sort key as (major, minor): compared major first. */
static inline void order_key(const we_record_header *h, uint32_t keys, uint64_t *major, uint32_t *minor) {
    switch (keys) {
    case WE_ORDER_DEST_SOURCE_SEQ:
        *major = ((uint64_t)h->destination << 32) | h->source;
        *minor = h->seq;
        break;
    case WE_ORDER_SOURCE_SEQ_FLAGS:
        *major = ((uint64_t)h->source << 32) | h->seq;
        *minor = h->flags;
        break;
    default:
        *major = ((uint64_t)h->source << 32) | h->seq;
        *minor = 0;
        break;
    }
}

static inline int order_less(const we_record_header *hdrs, uint32_t keys, uint32_t a, uint32_t b) {
    uint64_t ma, mb;
    uint32_t na, nb;
    order_key(&hdrs[a], keys, &ma, &na);
    order_key(&hdrs[b], keys, &mb, &nb);
    return ma < mb || (ma == mb && na < nb);
}

int we_records_order(const we_record_header *hdrs, uint32_t n, uint32_t keys,
                     uint32_t *order, uint32_t *scratch) {
    if (keys != WE_ORDER_SOURCE_SEQ && keys != WE_ORDER_DEST_SOURCE_SEQ && keys != WE_ORDER_SOURCE_SEQ_FLAGS)
        return WE_ERR_ARG;
    uint32_t i = 1;
    while (i < n && !order_less(hdrs, keys, i, i - 1))
        i++;
    if (i >= n)
        return 0;  /* already in order: the usual case */
    if (order == NULL || scratch == NULL)
        return 1;  /* only asked whether */
    /* Bottom-up merge sort of indices: stable, so equal keys keep their order. */
    for (uint32_t k = 0; k < n; k++)
        order[k] = k;
    uint32_t *src = order, *dst = scratch;
    for (uint32_t width = 1; width < n; width *= 2) {
        for (uint32_t lo = 0; lo < n; lo += 2 * width) {
            uint32_t mid = lo + width < n ? lo + width : n;
            uint32_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            uint32_t a = lo, b = mid, o = lo;
            while (a < mid && b < hi)
                dst[o++] = order_less(hdrs, keys, src[b], src[a]) ? src[b++] : src[a++];
            while (a < mid)
                dst[o++] = src[a++];
            while (b < hi)
                dst[o++] = src[b++];
        }
        uint32_t *t = src; src = dst; dst = t;
        if (width > UINT32_MAX / 2)
            break;
    }
    if (src != order)
        memcpy(order, src, (size_t)n * sizeof(uint32_t));
    return 1;
}
