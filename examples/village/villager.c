/*
 * A village of LLM-driven agents that talk to each other.
 *
 * Every villager keeps the last line it heard. Every `period` ticks
 * (staggered by id so the model's load spreads over ticks) it asks the
 * language model to continue that line; when the model's answer arrives
 * (an inbox message from WE_INFERENCE_SENDER, `inference_latency_ticks`
 * later) it says the answer to its two neighbours on the village ring and
 * publishes it as its observable state. What a villager hears shapes what it
 * asks next, so conversations drift through the village.
 *
 * Request format: docs/INFERENCE.md "generate request" (format 0x02):
 *   u8 format=2, u8 flags, u16 n_stop, u32 max_new_tokens, u64 seed,
 *   f32 temperature, f32 top_p, u32 top_k, u32 prompt_len, [stop ids], prompt
 * Result message: u64 request id, u32 status, u32 0, then the generate
 * result (format 0x03): u8 format, u8 reason, u16 flags, u32 n_prompt,
 * u32 n_generated, u32 text_len, text.
 *
 * config_i32 = [model_index, period, max_new_tokens, temperature_permille, top_k]
 */
#include "we_agent.h"

#define LINE_CAP 160
#define MSG_CAP 512
#define PROMPT_CAP 200

static uint32_t self_id, n_agents;
static int32_t model_index, period, max_new_tokens, temperature_permille, top_k;
static char heard[LINE_CAP];
static int32_t heard_len;
static uint8_t msg[MSG_CAP];
static uint8_t req[32 + PROMPT_CAP];
static const char *openers[4] = {"The village", "Once the", "In the morning", "The old"};

static void set_heard(const uint8_t *text, int32_t len) {
    if (len > LINE_CAP) len = LINE_CAP;
    we_memcpy(heard, text, (size_t)len);
    heard_len = len;
}

WE_EXPORT(we_init) int32_t we_init(int32_t agent_id, int64_t seed, int32_t config_len) {
    (void)seed; (void)config_len;
    int32_t cfg[5] = {0, 4, 24, 800, 20};
    we_config_i32s(cfg, 5);
    self_id = (uint32_t)agent_id;
    n_agents = (uint32_t)we_agent_count();
    model_index = cfg[0];
    period = cfg[1] > 0 ? cfg[1] : 1;
    max_new_tokens = cfg[2];
    temperature_permille = cfg[3];
    top_k = cfg[4];
    const char *o = openers[self_id % 4];
    set_heard((const uint8_t *)o, (int32_t)we_strlen(o));
    return 0;
}

static void ask(int64_t tick) {
    int32_t plen = heard_len < PROMPT_CAP ? heard_len : PROMPT_CAP;
    float temperature = (float)temperature_permille / 1000.0f;
    float top_p = 0.95f;
    uint64_t seed = (uint64_t)we_rand_u64();
    req[0] = 2; req[1] = 0;
    req[2] = 0; req[3] = 0;                       /* no stop tokens */
    we_store_u32(req + 4, (uint32_t)max_new_tokens);
    we_store_u64(req + 8, seed);
    we_memcpy(req + 16, &temperature, 4);
    we_memcpy(req + 20, &top_p, 4);
    we_store_u32(req + 24, (uint32_t)top_k);
    we_store_u32(req + 28, (uint32_t)plen);
    we_memcpy(req + 32, heard, (size_t)plen);
    (void)tick;
    we_infer(model_index, req, 32 + plen);
}

WE_EXPORT(we_step) int32_t we_step(int64_t tick) {
    uint32_t src;
    int32_t n;
    while ((n = we_recv(&src, msg, MSG_CAP)) >= 0) {
        if (n > MSG_CAP) n = MSG_CAP;
        if (src == WE_INFERENCE_SENDER) {
            if (n < 32 || we_load_u32(msg + 8) != 0 || msg[16] != 3) continue; /* error result */
            int32_t text_len = (int32_t)we_load_u32(msg + 28);
            if (text_len > n - 32) text_len = n - 32;
            const uint8_t *text = msg + 32;
            /* Speak: tell both neighbours, and show it. */
            int32_t say = text_len < 200 ? text_len : 200;
            we_send((int32_t)((self_id + 1) % n_agents), text, say);
            we_send((int32_t)((self_id + n_agents - 1) % n_agents), text, say);
            we_publish(text, say);
        } else if (n > 0) {
            set_heard(msg, n);
        }
    }
    if ((tick + self_id) % period == 0) ask(tick);
    return WE_STEP_CONTINUE;
}
