/*
 * Predator-prey (rabbits and foxes) on a toroidal grid, one agent per cell.
 *
 * A cell holds whole numbers of prey and predators and runs an individual-
 * based step each tick:
 *   1. migrants sent by neighbouring cells last tick arrive (inbox);
 *   2. every predator hunts once, catching with probability
 *      hunt_permille * prey / capacity (so hunting is easier in crowded cells);
 *      each catch may produce a new predator (predator_birth_permille);
 *   3. every predator dies with probability predator_death_permille;
 *   4. every prey breeds with probability prey_birth_permille scaled by the
 *      room left under the cell's carrying capacity;
 *   5. each animal leaves with probability migrate_permille, all emigrants of
 *      the tick heading the same random way (N, E, S or W) in one message.
 * Sending one message in one direction instead of four keeps a cell at about
 * one send and one receive per tick; over a few ticks emigrants still spread
 * in every direction.
 *
 * Agent id = y * width + x; the scenario's count must be width * height.
 *
 * Message (8 bytes): u32 prey, u32 predators arriving.
 * Observable state (8 bytes): u32 prey, u32 predators.
 *
 * config_i32 = [width, height, capacity, prey_birth_permille, hunt_permille,
 *               predator_birth_permille, predator_death_permille,
 *               migrate_permille, predator_cells_permille]
 *
 * Host calls per tick: recv (messages + 1, about 2), rand, send (at most 1),
 * publish: about 5.
 */
#include "we_agent.h"

#define N_PARAMS 9
/* Bounds the per-tick loops (and so the fuel) however many animals arrive. */
#define MAX_ANIMALS 1000

static uint32_t width, height, self_x, self_y;
static uint32_t capacity, prey_birth, hunt, predator_birth, predator_death, migrate;

static uint32_t prey, predators;

static uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

int32_t we_init(int32_t agent_id, int64_t seed, int32_t config_len) {
    int32_t cfg[N_PARAMS];
    (void)config_len;
    if (we_config_i32s(cfg, N_PARAMS) < N_PARAMS) return 1;
    for (int i = 0; i < N_PARAMS; i++)
        if (cfg[i] < 0) return 2;
    for (int i = 3; i < N_PARAMS; i++)
        if (cfg[i] > 1000) return 2;
    width = (uint32_t)cfg[0];
    height = (uint32_t)cfg[1];
    if (width < 3 || height < 3 || (int64_t)width * height != we_agent_count()) return 3;
    capacity = (uint32_t)cfg[2];
    if (capacity < 1 || capacity > MAX_ANIMALS) return 4;
    prey_birth = (uint32_t)cfg[3];
    hunt = (uint32_t)cfg[4];
    predator_birth = (uint32_t)cfg[5];
    predator_death = (uint32_t)cfg[6];
    migrate = (uint32_t)cfg[7];

    self_x = (uint32_t)agent_id % width;
    self_y = (uint32_t)agent_id / width;

    /* Initial populations from (seed, id): prey everywhere, predators in a
     * scattering of cells. */
    we_rng rng = we_rng_seed(we_mix64((uint64_t)seed ^ ((uint64_t)(uint32_t)agent_id << 32)));
    prey = capacity / 4 + we_rng_below(&rng, capacity / 2 + 1);
    predators = we_rng_chance(&rng, (uint32_t)cfg[8]) ? 1 + we_rng_below(&rng, 4) : 0;
    return WE_OK;
}

static void receive_migrants(void) {
    uint32_t src;
    uint8_t buf[8];
    int32_t len;
    while ((len = we_recv(&src, buf, sizeof buf)) >= 0) {
        if (len != (int32_t)sizeof buf || src == WE_INFERENCE_SENDER) continue;
        prey = min_u32(prey + min_u32(we_load_u32(buf), MAX_ANIMALS), MAX_ANIMALS);
        predators = min_u32(predators + min_u32(we_load_u32(buf + 4), MAX_ANIMALS), MAX_ANIMALS);
    }
}

static uint32_t neighbour(uint32_t direction) {
    uint32_t x = self_x, y = self_y;
    switch (direction) {
        case 0: y = (y + height - 1) % height; break;
        case 1: x = (x + 1) % width; break;
        case 2: y = (y + 1) % height; break;
        default: x = (x + width - 1) % width; break;
    }
    return y * width + x;
}

int32_t we_step(int64_t tick) {
    (void)tick;
    receive_migrants();

    we_rng rng = we_rng_from_host();

    uint32_t caught = 0, hunters = predators;
    for (uint32_t i = 0; i < hunters && prey > 0; i++) {
        uint32_t chance = (uint32_t)((uint64_t)hunt * prey / capacity);
        if (we_rng_chance(&rng, chance)) {
            prey--;
            caught++;
        }
    }
    uint32_t born = 0;
    for (uint32_t i = 0; i < caught; i++) born += we_rng_chance(&rng, predator_birth);
    uint32_t survivors = 0;
    for (uint32_t i = 0; i < predators; i++) survivors += !we_rng_chance(&rng, predator_death);
    predators = min_u32(survivors + born, MAX_ANIMALS);

    if (prey < capacity) {
        uint32_t room_permille = (capacity - prey) * 1000 / capacity;
        uint32_t p = (uint32_t)((uint64_t)prey_birth * room_permille / 1000);
        uint32_t kits = 0;
        for (uint32_t i = 0; i < prey; i++) kits += we_rng_chance(&rng, p);
        prey = min_u32(prey + kits, MAX_ANIMALS);
    }

    uint32_t out[2] = {0, 0};
    for (uint32_t i = 0; i < prey; i++) out[0] += we_rng_chance(&rng, migrate);
    for (uint32_t i = 0; i < predators; i++) out[1] += we_rng_chance(&rng, migrate);
    if (out[0] + out[1] > 0) {
        uint32_t dst = neighbour(we_rng_below(&rng, 4));
        if (we_send_u32s((int32_t)dst, out, 2) == WE_OK) {
            prey -= out[0];
            predators -= out[1];
        }
    }

    uint32_t state[2] = {prey, predators};
    we_publish(state, sizeof state);
    return WE_STEP_CONTINUE;
}
