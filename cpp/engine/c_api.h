#ifndef MMCORE_C_API_H_
#define MMCORE_C_API_H_
/* The C API of the mmcore core, for servers in C, Rust, Go, Zig, ...: the scheduler, the
 * standalone KV block manager, placeholder expansion and the encoder cache.
 *
 * Conventions (docs/cpp_embedding.md has the whole contract):
 * - Objects are opaque handles made by *_create and released by *_destroy (NULL is accepted by
 *   destroy). A NULL, destroyed or wrong-type handle returns MMCORE_ERROR_INVALID_HANDLE.
 * - Every call returns an mmcore_status; results come back through out-pointers. On an error
 *   nothing changed and mmcore_last_error_message() says why (per thread). No C++ exception
 *   crosses this boundary.
 * - Arrays are (pointer, count) pairs. Arrays handed out are owned by the handle and stay valid
 *   for the time each function documents; callers copy what they keep.
 * - One handle is used by one thread at a time; different handles may be used concurrently.
 */
#include <stddef.h>
#include <stdint.h>

#include "version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors and version ------------------------------------------------------------------ */

typedef enum mmcore_status {
  MMCORE_OK = 0,
  MMCORE_ERROR_INVALID_ARGUMENT = 1, /* bad argument or request; nothing changed */
  MMCORE_ERROR_INVALID_HANDLE = 2,   /* NULL, destroyed or wrong-type handle */
  MMCORE_ERROR_NOT_FOUND = 3,        /* unknown request id or identifier */
  MMCORE_ERROR_BAD_STATE = 4,        /* call out of order (e.g. update of a step not in flight) */
  MMCORE_ERROR_OUT_OF_MEMORY = 5,
  MMCORE_ERROR_INTERNAL = 6 /* a broken invariant: a bug in mmcore; the message names it */
} mmcore_status;

/* Message of the last call on this thread that did not return MMCORE_OK ("" if none). Valid until
 * the next failing call on the same thread. */
const char* mmcore_last_error_message(void);
/* Name of a status ("MMCORE_ERROR_NOT_FOUND"); "unknown status" for other values. */
const char* mmcore_status_name(mmcore_status status);
/* The library's version (compare with MMCORE_VERSION_STRING of the headers used). */
const char* mmcore_version_string(void);
int32_t mmcore_version_number(void);

/* ---- vocabulary ---------------------------------------------------------------------------- */

typedef enum mmcore_modality {
  MMCORE_MODALITY_IMAGE = 0,
  MMCORE_MODALITY_VIDEO = 1,
  MMCORE_MODALITY_AUDIO = 2
} mmcore_modality;

typedef enum mmcore_request_status {
  MMCORE_REQUEST_WAITING = 0,
  MMCORE_REQUEST_RUNNING = 1,
  MMCORE_REQUEST_PREEMPTED = 2,
  MMCORE_REQUEST_FINISHED_STOPPED = 3,
  MMCORE_REQUEST_FINISHED_LENGTH = 4,
  MMCORE_REQUEST_FINISHED_ABORTED = 5
} mmcore_request_status;

/* One multimodal item inside an expanded prompt: tokens [offset, offset + length). embed_mask is
 * NULL (every position takes an embedding) or `length` bytes (non-zero: takes one); num_embeds
 * counts the positions that take one (the encoder output rows). */
typedef struct mmcore_mm_feature {
  int32_t modality;       /* mmcore_modality */
  const char* identifier; /* content hash or user uuid: the encoder- and prefix-cache key */
  int32_t offset;
  int32_t length;
  int32_t num_embeds;
  const uint8_t* embed_mask;
} mmcore_mm_feature;

/* ---- scheduler ----------------------------------------------------------------------------- */

typedef struct mmcore_scheduler mmcore_scheduler;

typedef struct mmcore_scheduler_config {
  int32_t num_blocks; /* KV cache blocks (required, > 0) */
  int32_t block_size;
  int32_t max_num_batched_tokens; /* tokens per step */
  int32_t max_num_seqs;           /* running requests at most */
  int32_t max_model_len;          /* prompt + generated tokens */
  int32_t enable_prefix_caching;  /* 0 or 1 */
  int32_t enable_chunked_prefill; /* 0 or 1 */
  int32_t encoder_budget;         /* encoder embeddings computed per step at most */
  int64_t encoder_cache_size;     /* embeddings held in the encoder cache at most */
  /* KV cache groups of a hybrid model (docs/kv_cache.md): NULL / 0 for one full-attention group;
   * else per group -1 (full attention) or its sliding window in tokens, full groups first.
   * Copied by mmcore_scheduler_create. */
  const int32_t* kv_group_windows;
  int32_t num_kv_groups;
} mmcore_scheduler_config;

/* A request to admit. Everything is copied by mmcore_scheduler_add_request. */
typedef struct mmcore_request {
  int64_t id;               /* unique among live requests */
  const int32_t* token_ids; /* the expanded prompt (see mmcore_expand_placeholders) */
  int32_t num_tokens;
  const mmcore_mm_feature* features; /* sorted by offset, non-overlapping, inside the prompt */
  int32_t num_features;
  int32_t max_tokens; /* generated tokens at most (>= 1) */
  int32_t min_tokens; /* eos / stop tokens are ignored before this many generated tokens */
  int32_t ignore_eos; /* 0 or 1 */
  const int32_t* eos_token_ids;
  int32_t num_eos_token_ids;
  const int32_t* stop_token_ids;
  int32_t num_stop_token_ids;
  int32_t priority;               /* lower runs first among waiting requests */
  const char* cache_salt;         /* NULL or "": no salt; otherwise a separate prefix-cache space */
  const int64_t* mrope_positions; /* NULL, or 3 x num_tokens positions (row-major) for M-RoPE */
  int64_t mrope_delta;            /* M-RoPE: generated token i sits at i + mrope_delta */
} mmcore_request;

/* One step of work as flat arrays (see scheduler_output.h for each array's meaning). Owned by the
 * scheduler; valid until the second next mmcore_scheduler_schedule and while its step awaits
 * mmcore_scheduler_update. Per request: num_reqs rows; per token: num_tokens rows. */
typedef struct mmcore_scheduler_output {
  int64_t step_id;
  int32_t num_reqs;
  int32_t num_tokens;
  int32_t max_blocks_per_req;
  int32_t position_dims; /* 1, or 3 for M-RoPE */
  const int64_t* req_ids;
  const int32_t* num_scheduled_tokens;
  const int32_t* num_computed_tokens;
  const int32_t* seq_lens;
  const int32_t* query_start_loc; /* num_reqs + 1 */
  const int32_t* block_tables;    /* num_reqs x max_blocks_per_req, padded with -1 */
  const int32_t* prev_sample_index;
  const int32_t* input_ids;    /* -1: the previous step's sample, not yet known */
  const int64_t* positions;    /* position_dims x num_tokens (row-major) */
  const int64_t* slot_mapping; /* block_id * block_size + offset in block */
  int32_t num_samples;
  const int32_t* logits_indices;
  const int64_t* sampling_req_ids;
  int32_t num_encoder_items;
  const int64_t* encoder_req_ids;
  const int32_t* encoder_item_indices;
  const int64_t* encoder_handles;
  int32_t num_scatter;
  const int64_t* scatter_handles;
  const int32_t* scatter_src_offsets;
  const int32_t* scatter_dst_rows;
  const int32_t* scatter_lens;
  int32_t num_freed_encoder_handles;
  const int64_t* freed_encoder_handles;
  int32_t num_finished;
  const int64_t* finished_req_ids;
  int32_t num_preempted;
  const int64_t* preempted_req_ids;
  /* KV cache groups (1 unless the config listed several). Group g >= 1 of request i: block table
   * row i * (num_kv_groups - 1) + g - 1 of group_block_tables (max_blocks_per_req wide; -1 before
   * a sliding window: released blocks no query of the step reads), slots row g - 1 of
   * group_slot_mapping (num_tokens wide). Group 0 is block_tables / slot_mapping. */
  int32_t num_kv_groups;
  const int32_t* group_block_tables;
  const int64_t* group_slot_mapping;
} mmcore_scheduler_output;

/* What mmcore_scheduler_update did. Owned by the scheduler; valid until its next update. */
typedef struct mmcore_update_result {
  int32_t num_tokens; /* requests that received a token */
  const int64_t* req_ids;
  const int32_t* token_ids;
  int32_t num_finished;
  const int64_t* finished_req_ids;
  const int32_t* finish_statuses; /* mmcore_request_status */
} mmcore_update_result;

typedef struct mmcore_request_info {
  int32_t status; /* mmcore_request_status */
  int32_t num_prompt_tokens;
  int32_t num_tokens; /* prompt + generated so far */
  int32_t num_computed_tokens;
  int32_t num_output_tokens;
  const int32_t* token_ids; /* num_tokens; valid until the next call that changes the scheduler */
} mmcore_request_info;

typedef struct mmcore_scheduler_stats {
  int32_t num_running;
  int32_t num_waiting;
  int64_t num_steps;
  int64_t num_preemptions;
  int32_t kv_num_blocks;
  int32_t kv_num_used_blocks;
  int32_t kv_num_free_blocks;
  int32_t kv_num_cached_blocks;
  int64_t kv_prefix_queries; /* tokens looked up */
  int64_t kv_prefix_hits;    /* of those, tokens found in the prefix cache */
  int64_t encoder_num_queries;
  int64_t encoder_num_hits;
  int64_t encoder_used_embeds;
  int64_t encoder_capacity_embeds;
  int32_t encoder_num_entries;
  int32_t encoder_num_referenced_entries;
  int64_t kv_num_sliding_blocks_freed; /* sliding-group blocks released out of their window */
} mmcore_scheduler_stats;

/* Fills the defaults of the C++ SchedulerConfig (num_blocks 0: the caller must set it). */
void mmcore_scheduler_config_init(mmcore_scheduler_config* config);
/* Zeroes a request and sets max_tokens 16 (the defaults of the C++ Request). */
void mmcore_request_init(mmcore_request* request);

mmcore_status mmcore_scheduler_create(const mmcore_scheduler_config* config,
                                      mmcore_scheduler** out);
mmcore_status mmcore_scheduler_destroy(mmcore_scheduler* scheduler);
/* INVALID_ARGUMENT when the request could never run (too long, bad items, ...) or its id is
 * live. */
mmcore_status mmcore_scheduler_add_request(mmcore_scheduler* scheduler,
                                           const mmcore_request* request);
/* Plans the next step. BAD_STATE if two steps already await mmcore_scheduler_update. */
mmcore_status mmcore_scheduler_schedule(mmcore_scheduler* scheduler, mmcore_scheduler_output* out);
/* Applies the tokens sampled by step `step_id`: one per its sampling_req_ids, in order. Steps are
 * updated in the order they were scheduled. `result` may be NULL. */
mmcore_status mmcore_scheduler_update(mmcore_scheduler* scheduler, int64_t step_id,
                                      const int32_t* sampled, int32_t num_sampled,
                                      mmcore_update_result* result);
/* Finishes a live request now with a finished status (aborted, stopped, length), freeing its
 * blocks; its id is reported in the next step's finished_req_ids. Unknown ids are ignored (a
 * request may finish while its abort is on the way). */
mmcore_status mmcore_scheduler_finish_request(mmcore_scheduler* scheduler, int64_t request_id,
                                              int32_t status);
/* NOT_FOUND if the request is not live (never added, finished or aborted). */
mmcore_status mmcore_scheduler_get_request(const mmcore_scheduler* scheduler, int64_t request_id,
                                           mmcore_request_info* out);
mmcore_status mmcore_scheduler_has_unfinished(const mmcore_scheduler* scheduler, int32_t* out);
mmcore_status mmcore_scheduler_get_stats(const mmcore_scheduler* scheduler,
                                         mmcore_scheduler_stats* out);
/* INTERNAL, naming the first broken invariant of scheduler, block manager or encoder cache. */
mmcore_status mmcore_scheduler_check_invariants(const mmcore_scheduler* scheduler);

/* ---- standalone KV block manager ---------------------------------------------------------- */
/* The scheduler owns its own block manager; this one serves servers with their own scheduler.
 * It keeps the requests it serves (tokens, items, computed tokens), keyed by id. */

typedef struct mmcore_block_manager mmcore_block_manager;

typedef struct mmcore_block_manager_stats {
  int32_t num_blocks;
  int32_t num_used_blocks;
  int32_t num_free_blocks;
  int32_t num_cached_blocks;
  int64_t prefix_queries;
  int64_t prefix_hits;
} mmcore_block_manager_stats;

mmcore_status mmcore_block_manager_create(int32_t num_blocks, int32_t block_size,
                                          int32_t enable_prefix_caching,
                                          mmcore_block_manager** out);
mmcore_status mmcore_block_manager_destroy(mmcore_block_manager* manager);
/* Registers a request's known tokens and its items (num_embeds is ignored here). */
mmcore_status mmcore_block_manager_add_request(mmcore_block_manager* manager, int64_t request_id,
                                               const int32_t* token_ids, int32_t num_tokens,
                                               const mmcore_mm_feature* features,
                                               int32_t num_features, const char* cache_salt);
mmcore_status mmcore_block_manager_append_tokens(mmcore_block_manager* manager, int64_t request_id,
                                                 const int32_t* token_ids, int32_t num_tokens);
/* Blocks of the longest cached prefix (never the last token); none when the request holds
 * blocks. The array is valid until the next call on this manager. */
mmcore_status mmcore_block_manager_get_computed_blocks(mmcore_block_manager* manager,
                                                       int64_t request_id,
                                                       const int32_t** block_ids,
                                                       int32_t* num_blocks);
mmcore_status mmcore_block_manager_can_allocate(mmcore_block_manager* manager, int64_t request_id,
                                                int32_t num_new_tokens, int32_t use_prefix_cache,
                                                int32_t* out);
/* Takes the prefix hit (first allocation only) plus num_new_tokens slots, marks them computed
 * and caches full blocks. *allocated = 0 (and nothing changes) when the blocks do not fit;
 * *num_hit_tokens = tokens taken from the prefix cache. */
mmcore_status mmcore_block_manager_allocate(mmcore_block_manager* manager, int64_t request_id,
                                            int32_t num_new_tokens, int32_t use_prefix_cache,
                                            int32_t* allocated, int32_t* num_hit_tokens);
/* Releases the request's blocks; it keeps its tokens and may allocate again. */
mmcore_status mmcore_block_manager_free(mmcore_block_manager* manager, int64_t request_id);
mmcore_status mmcore_block_manager_remove_request(mmcore_block_manager* manager,
                                                  int64_t request_id);
/* The request's block ids in order; valid until the next call on this manager. */
mmcore_status mmcore_block_manager_block_table(mmcore_block_manager* manager, int64_t request_id,
                                               const int32_t** block_ids, int32_t* num_blocks);
mmcore_status mmcore_block_manager_num_computed_tokens(const mmcore_block_manager* manager,
                                                       int64_t request_id, int32_t* out);
mmcore_status mmcore_block_manager_get_stats(const mmcore_block_manager* manager,
                                             mmcore_block_manager_stats* out);
mmcore_status mmcore_block_manager_check_invariants(const mmcore_block_manager* manager);

/* ---- placeholder expansion ------------------------------------------------------------------ */

/* One item of a prompt with ONE placeholder token per item. Without a replacement the item
 * expands to num_embeds x placeholder_token_id; with one, to the replacement (embed_mask: NULL
 * = every position takes an embedding, or replacement_len bytes). */
typedef struct mmcore_placeholder_item {
  int32_t modality; /* mmcore_modality */
  const char* identifier;
  int32_t placeholder_token_id;
  int32_t num_embeds;
  const int32_t* replacement;
  int32_t replacement_len;
  const uint8_t* embed_mask;
} mmcore_placeholder_item;

/* A placeholder token the model knows (names it in messages; catches placeholders without an
 * item). */
typedef struct mmcore_placeholder_token {
  int32_t token_id;
  int32_t modality; /* mmcore_modality */
  const char* text; /* e.g. "<image>" */
} mmcore_placeholder_token;

/* The expanded prompt: its tokens and one feature per item (ready for mmcore_request). */
typedef struct mmcore_expanded_prompt mmcore_expanded_prompt;

/* INVALID_ARGUMENT with messages like "prompt has 2 <image> placeholders but 1 image was given".
 * placeholder_tokens may be NULL (num_placeholder_tokens 0). */
mmcore_status mmcore_expand_placeholders(const int32_t* prompt, int32_t prompt_len,
                                         const mmcore_placeholder_item* items, int32_t num_items,
                                         const int32_t* allowed_modalities, int32_t num_allowed,
                                         int32_t max_len,
                                         const mmcore_placeholder_token* placeholder_tokens,
                                         int32_t num_placeholder_tokens,
                                         mmcore_expanded_prompt** out);
/* Views owned by the expanded prompt, valid until it is destroyed. */
mmcore_status mmcore_expanded_prompt_tokens(const mmcore_expanded_prompt* prompt,
                                            const int32_t** token_ids, int32_t* num_tokens);
mmcore_status mmcore_expanded_prompt_features(const mmcore_expanded_prompt* prompt,
                                              const mmcore_mm_feature** features,
                                              int32_t* num_features);
mmcore_status mmcore_expanded_prompt_destroy(mmcore_expanded_prompt* prompt);

/* ---- encoder cache ----------------------------------------------------------------------- */
/* Which encoder outputs are cached, keyed by item identifier; space counted in embeddings. The
 * caller holds the tensors under the handles handed out here. */

typedef struct mmcore_encoder_cache mmcore_encoder_cache;

typedef struct mmcore_encoder_cache_stats {
  int64_t num_queries;
  int64_t num_hits;
  int64_t used_embeds;
  int64_t capacity_embeds;
  int32_t num_entries;
  int32_t num_referenced_entries;
} mmcore_encoder_cache_stats;

mmcore_status mmcore_encoder_cache_create(int64_t capacity_embeds, mmcore_encoder_cache** out);
mmcore_status mmcore_encoder_cache_destroy(mmcore_encoder_cache* cache);
/* *hit = 1 if cached (referenced or not); counts a query. */
mmcore_status mmcore_encoder_cache_lookup(mmcore_encoder_cache* cache, const char* identifier,
                                          int32_t* hit);
/* NOT_FOUND if the identifier is not cached. */
mmcore_status mmcore_encoder_cache_get_handle(const mmcore_encoder_cache* cache,
                                              const char* identifier, int64_t* handle);
mmcore_status mmcore_encoder_cache_num_refs(const mmcore_encoder_cache* cache,
                                            const char* identifier, int32_t* out);
mmcore_status mmcore_encoder_cache_can_allocate(const mmcore_encoder_cache* cache,
                                                int32_t num_embeds, int32_t* out);
/* Stores a new entry referenced by `request_id`, evicting least-recently released unreferenced
 * entries as needed (their handles come out of take_freed). INVALID_ARGUMENT if it exists or
 * does not fit. */
mmcore_status mmcore_encoder_cache_allocate(mmcore_encoder_cache* cache, const char* identifier,
                                            int32_t num_embeds, int64_t request_id,
                                            int64_t* handle);
/* Adds a reference from `request_id` to a cached entry (idempotent); NOT_FOUND if absent. */
mmcore_status mmcore_encoder_cache_acquire(mmcore_encoder_cache* cache, const char* identifier,
                                           int64_t request_id, int64_t* handle);
mmcore_status mmcore_encoder_cache_release(mmcore_encoder_cache* cache, const char* identifier,
                                           int64_t request_id);
mmcore_status mmcore_encoder_cache_release_all(mmcore_encoder_cache* cache, int64_t request_id);
/* Handles evicted since the last call (drop their tensors); valid until the next call. */
mmcore_status mmcore_encoder_cache_take_freed(mmcore_encoder_cache* cache, const int64_t** handles,
                                              int32_t* num_handles);
mmcore_status mmcore_encoder_cache_get_stats(const mmcore_encoder_cache* cache,
                                             mmcore_encoder_cache_stats* out);
mmcore_status mmcore_encoder_cache_check_invariants(const mmcore_encoder_cache* cache);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MMCORE_C_API_H_ */
