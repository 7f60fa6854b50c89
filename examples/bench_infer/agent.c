/*
 * Inference benchmark agent (scripts/bench_inference.py).
 *
 * Every tick it sends ONE inference request to model 0 and drains its inbox.
 * The request bytes are the kind's whole config blob, sent unchanged, so the
 * same agent serves tensor models (config = a format-0x01 tensor payload)
 * and causal LMs (config = a format-0x02 generate request): the scenario's
 * `config_hex` is the exact request payload.
 *
 * Results arrive `inference_latency_ticks` later as inbox messages from
 * WE_INFERENCE_SENDER: u64 request id, u32 status, u32 0, result bytes.  A
 * result with a non-zero status, a message from anyone else, or an infer
 * call the host refuses traps the agent (it is quarantined), so the benchmark
 * sees a failure in the run summary instead of timing error replies.  The
 * result bytes themselves are not inspected: only the first 16 bytes are
 * copied out of the host.
 *
 * Nobody else sends to these agents and each sends one request per tick
 * with a fixed latency, so an inbox holds at most one message: one `recv`
 * drains it (an inbox lives for one tick, so nothing piles up even if it did
 * not).  Host calls per tick: one `recv` and one `infer`, the fewest that do
 * the job, so that the benchmark measures the runtime rather than the agent.
 *
 * Build: wasm-engine build agent.c -o agent.wasm
 * Capabilities: recv, infer.
 */
#include "we_agent.h"

#define REQ_CAP 65536 /* the largest config blob a scenario may hold */

static uint8_t req[REQ_CAP];
static int32_t req_len;
static uint8_t head[16];

WE_EXPORT(we_init) int32_t we_init(int32_t agent_id, int64_t seed, int32_t config_len) {
    (void)agent_id;
    (void)seed;
    if (config_len <= 0 || config_len > REQ_CAP) return 1; /* nothing (or too much) to send */
    req_len = we_config_read(req, REQ_CAP);
    return 0;
}

WE_EXPORT(we_step) int32_t we_step(int64_t tick) {
    (void)tick;
    uint32_t src;
    int32_t n;
    if ((n = we_recv(&src, head, sizeof head)) >= 0) {
        if (src != WE_INFERENCE_SENDER || n < 16 || we_load_u32(head + 8) != 0)
            __builtin_trap(); /* an error result, or a message we never asked for */
    }
    if (we_infer(0, req, req_len) < 0) __builtin_trap(); /* refused: budget, model, size */
    return 0;
}
