;; Max-gossip counter, hand-written against agent ABI v1.
;;
;; Every agent starts with a counter derived from the run seed and its id.
;; Whenever its counter changes (and once at tick 0) it sends the counter to
;; two agents, id + offset_a and id + offset_b (mod n); whenever it receives a
;; larger counter it adopts it.  Every agent ends up with the run-wide
;; maximum, which reaches agent x exactly dist(x) ticks after tick 0, where
;; dist is the distance in the directed graph of those two offsets.
;;
;; An agent whose counter has not changed for quiet_ticks ticks halts.  With
;; quiet_ticks >= the graph's diameter that is safe: no counter changes after
;; tick `diameter`, so a halting agent has already forwarded its final value.
;; (Offsets 1 and 37 over 1000 agents: diameter <= 36 + 26 = 62.)
;; quiet_ticks = 0 never halts.
;;
;; Message and published state: the counter as u64 little-endian (8 bytes).
;;
;; config_i32 = [offset_a, offset_b, quiet_ticks]
;;
;; Host calls per tick: recv (messages + 1), 2 sends when the counter changed,
;; publish: 2 once settled, about 6 while news is spreading.
(module
  (import "we" "recv" (func $recv (param i32 i32 i32) (result i32)))
  (import "we" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "we" "publish" (func $publish (param i32 i32) (result i32)))
  (import "we" "config_read" (func $config_read (param i32 i32) (result i32)))
  (import "we" "agent_count" (func $agent_count (result i32)))

  ;; Memory layout (byte offsets):
  ;;    0 ..  3  sender id written by recv (unused: every message is a counter)
  ;;    8 .. 15  incoming counter
  ;;   16 .. 23  outgoing counter, also the published state
  ;;   32 .. 43  config words
  (memory (export "memory") 1)

  (global $id (mut i32) (i32.const 0))
  (global $n (mut i32) (i32.const 0))
  (global $offset_a (mut i32) (i32.const 0))
  (global $offset_b (mut i32) (i32.const 0))
  (global $quiet (mut i64) (i64.const 0))
  (global $value (mut i64) (i64.const 0))
  (global $changed (mut i32) (i32.const 0))
  (global $last_change (mut i64) (i64.const 0))

  (func (export "we_abi_version") (result i32)
    (i32.const 1))

  ;; An offset must lead to another agent: 1 <= offset < n.
  (func $valid_offset (param $offset i32) (result i32)
    (i32.and
      (i32.gt_s (local.get $offset) (i32.const 0))
      (i32.lt_s (local.get $offset) (global.get $n))))

  (func (export "we_init") (param $id i32) (param $seed i64) (param $config_len i32) (result i32)
    (local $x i64)
    (if (i32.lt_s (call $config_read (i32.const 32) (i32.const 12)) (i32.const 12))
      (then (return (i32.const 1))))
    (global.set $id (local.get $id))
    (global.set $n (call $agent_count))
    (global.set $offset_a (i32.load (i32.const 32)))
    (global.set $offset_b (i32.load (i32.const 36)))
    (global.set $quiet (i64.extend_i32_s (i32.load (i32.const 40))))
    (if (i32.eqz (i32.and (call $valid_offset (global.get $offset_a))
                          (call $valid_offset (global.get $offset_b))))
      (then (return (i32.const 2))))
    (if (i64.lt_s (global.get $quiet) (i64.const 0))
      (then (return (i32.const 3))))

    ;; Starting counter: splitmix64 of (seed, id), kept under 10^9 so that it
    ;; reads as a counter in logs.  Ids are mixed in multiplied by the golden
    ;; ratio so neighbouring ids get unrelated counters.
    (local.set $x (i64.xor (local.get $seed)
                           (i64.mul (i64.extend_i32_u (local.get $id))
                                    (i64.const 0x9E3779B97F4A7C15))))
    (local.set $x (i64.mul (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 30)))
                           (i64.const 0xBF58476D1CE4E5B9)))
    (local.set $x (i64.mul (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 27)))
                           (i64.const 0x94D049BB133111EB)))
    (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 31))))
    (global.set $value (i64.rem_u (local.get $x) (i64.const 1000000000)))
    ;; Everyone announces its starting counter at tick 0.
    (global.set $changed (i32.const 1))
    (i32.const 0))

  (func $neighbour (param $offset i32) (result i32)
    ;; id + offset < 2n, so one remainder is enough.
    (i32.rem_u (i32.add (global.get $id) (local.get $offset)) (global.get $n)))

  (func (export "we_step") (param $tick i64) (result i32)
    (local $len i32)
    (local $v i64)

    ;; Take the largest counter in the inbox.
    (block $empty
      (loop $next
        (local.set $len (call $recv (i32.const 0) (i32.const 8) (i32.const 8)))
        (br_if $empty (i32.lt_s (local.get $len) (i32.const 0)))
        (if (i32.eq (local.get $len) (i32.const 8))
          (then
            (local.set $v (i64.load (i32.const 8)))
            (if (i64.gt_u (local.get $v) (global.get $value))
              (then
                (global.set $value (local.get $v))
                (global.set $changed (i32.const 1))))))
        (br $next)))

    (i64.store (i32.const 16) (global.get $value))

    ;; Forward only news: neighbours already hold every older value we sent.
    ;; A refused send (quota) just loses this copy; the result is ignored.
    (if (global.get $changed)
      (then
        (drop (call $send (call $neighbour (global.get $offset_a)) (i32.const 16) (i32.const 8)))
        (drop (call $send (call $neighbour (global.get $offset_b)) (i32.const 16) (i32.const 8)))
        (global.set $changed (i32.const 0))
        (global.set $last_change (local.get $tick))))

    (drop (call $publish (i32.const 16) (i32.const 8)))

    ;; Nonzero halts: settled for quiet_ticks ticks (never when quiet_ticks = 0).
    (if (result i32) (i64.eqz (global.get $quiet))
      (then (i32.const 0))
      (else
        (i64.ge_s (i64.sub (local.get $tick) (global.get $last_change))
                  (global.get $quiet))))))
