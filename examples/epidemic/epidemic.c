/*
 * SIR epidemic on a small-world contact graph, one agent per person.
 *
 * Each person's contacts are a ring lattice (the `ring` nearest ids on each
 * side) plus `long_links` long-range contacts derived from the seed and the
 * agent's own id, so every agent can build its list alone in we_init without
 * any exchange.  Links are directed: a long-range contact need not list you.
 *
 * Each tick an infected person meets `contacts_per_tick` contacts drawn at
 * random and sends each a one-byte exposure message.  A susceptible person
 * reads its exposures (delivered the next tick) and each one infects with
 * probability infect_permille / 1000.  After `infectious_ticks` ticks of
 * being infected a person recovers for good.
 *
 * Observable state: one byte, 0 = susceptible, 1 = infected, 2 = recovered.
 *
 * config_i32 = [ring, long_links, contacts_per_tick, infect_permille,
 *               infectious_ticks, initial_infected]
 *
 * Host calls per tick: susceptible 2 (+1 per exposure, +1 rand when
 * exposed); infected 2 + contacts_per_tick; recovered 1.
 */
#include "we_agent.h"

enum { SUSCEPTIBLE = 0, INFECTED = 1, RECOVERED = 2 };

#define MAX_CONTACTS 64
#define N_PARAMS 6

static uint32_t self_id;
static uint32_t n_agents;
static uint32_t contacts[MAX_CONTACTS];
static uint32_t n_contacts;

static uint32_t contacts_per_tick;
static uint32_t infect_permille;
static int64_t infectious_ticks;

static uint8_t state;
/* -1 = infected before tick 0 (initial cases); only meaningful when infected. */
static int64_t infected_at;

int32_t we_init(int32_t agent_id, int64_t seed, int32_t config_len) {
    int32_t cfg[N_PARAMS];
    (void)config_len;
    if (we_config_i32s(cfg, N_PARAMS) < N_PARAMS) return 1;

    int32_t ring = cfg[0], long_links = cfg[1];
    int32_t n = we_agent_count();
    if (ring < 0 || long_links < 0 || 2 * ring + long_links > MAX_CONTACTS) return 2;
    if (n < 2 || 2 * ring >= n) return 3;
    if (cfg[2] < 0 || cfg[3] < 0 || cfg[3] > 1000 || cfg[4] < 1 || cfg[5] < 0) return 4;

    self_id = (uint32_t)agent_id;
    n_agents = (uint32_t)n;
    contacts_per_tick = (uint32_t)cfg[2];
    infect_permille = (uint32_t)cfg[3];
    infectious_ticks = cfg[4];

    n_contacts = 0;
    for (int32_t d = 1; d <= ring; d++) {
        contacts[n_contacts++] = (self_id + (uint32_t)d) % n_agents;
        contacts[n_contacts++] = (self_id + n_agents - (uint32_t)d) % n_agents;
    }
    /* Derived from (seed, id) alone so the graph does not depend on the
     * order agents are initialised in; a link to oneself is skipped. */
    we_rng links = we_rng_seed(we_mix64((uint64_t)seed ^ ((uint64_t)self_id << 32)));
    for (int32_t j = 0; j < long_links; j++) {
        uint32_t other = we_rng_below(&links, n_agents);
        if (other != self_id) contacts[n_contacts++] = other;
    }

    /* Initial cases spread evenly over the id space (and so over the ring). */
    uint32_t initial = (uint32_t)cfg[5];
    state = SUSCEPTIBLE;
    if (initial > 0) {
        uint32_t stride = n_agents / initial;
        if (stride == 0) stride = 1;
        if (self_id % stride == 0 && self_id / stride < initial) {
            state = INFECTED;
            infected_at = -1;
        }
    }
    return WE_OK;
}

static void catch_exposures(int64_t tick) {
    uint32_t src;
    uint8_t payload[4];
    uint32_t exposures = 0;
    while (we_recv(&src, payload, sizeof payload) >= 0) {
        if (src != WE_INFERENCE_SENDER) exposures++;
    }
    if (exposures == 0) return;
    we_rng rng = we_rng_from_host();
    for (uint32_t i = 0; i < exposures; i++) {
        if (we_rng_chance(&rng, infect_permille)) {
            state = INFECTED;
            infected_at = tick;
            return;
        }
    }
}

static void spread(void) {
    static const uint8_t exposure = 1;
    if (n_contacts == 0) return;
    we_rng rng = we_rng_from_host();
    for (uint32_t i = 0; i < contacts_per_tick; i++) {
        uint32_t who = contacts[we_rng_below(&rng, n_contacts)];
        /* A full quota only means fewer contacts this tick. */
        if (we_send((int32_t)who, &exposure, 1) == WE_SEND_QUOTA) break;
    }
}

int32_t we_step(int64_t tick) {
    if (state == SUSCEPTIBLE) {
        catch_exposures(tick);
    } else if (state == INFECTED) {
        /* Counted from the tick of infection, so someone infected at tick t
         * spreads during ticks t+1 .. t+infectious_ticks. */
        if (tick - infected_at > infectious_ticks) {
            state = RECOVERED;
        } else {
            spread();
        }
    }
    /* Recovered people ignore their inbox: nothing can change them, and
     * unread messages cost nothing (the inbox is replaced every tick). */
    we_publish_u8(state);
    return WE_STEP_CONTINUE;
}
