/* Contract test of the C API, compiled as C: every entry point, NULL / destroyed / wrong-type
 * handles and bad arguments return error codes with messages, and a scheduler loop with
 * preemption runs to completion without leaking a block. Run plain and under ASan + UBSan. */
#include <mmcore/c_api.h>
#include <stdio.h>
#include <string.h>

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    ++g_checks;                                                                \
    if (!(cond)) {                                                             \
      ++g_failures;                                                            \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

/* The call returns `status` and, for an error, a message containing `needle`. */
#define CHECK_STATUS(call, status, needle)                                                       \
  do {                                                                                           \
    mmcore_status got_ = (call);                                                                 \
    ++g_checks;                                                                                  \
    if (got_ != (status)) {                                                                      \
      ++g_failures;                                                                              \
      fprintf(stderr, "%s:%d: %s returned %s (%s), expected %s\n", __FILE__, __LINE__, #call,    \
              mmcore_status_name(got_), mmcore_last_error_message(), #status);                   \
    } else if ((status) != MMCORE_OK && strstr(mmcore_last_error_message(), (needle)) == NULL) { \
      ++g_failures;                                                                              \
      fprintf(stderr, "%s:%d: message '%s' lacks '%s'\n", __FILE__, __LINE__,                    \
              mmcore_last_error_message(), (needle));                                            \
    }                                                                                            \
  } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, MMCORE_OK, "")

enum { kImageToken = 900 };

static void test_version_and_status_names(void) {
  CHECK(strcmp(mmcore_version_string(), MMCORE_VERSION_STRING) == 0);
  CHECK(mmcore_version_number() == MMCORE_VERSION);
  CHECK(strcmp(mmcore_status_name(MMCORE_OK), "MMCORE_OK") == 0);
  CHECK(strcmp(mmcore_status_name(MMCORE_ERROR_INVALID_ARGUMENT),
               "MMCORE_ERROR_INVALID_ARGUMENT") == 0);
  CHECK(strcmp(mmcore_status_name(MMCORE_ERROR_INVALID_HANDLE), "MMCORE_ERROR_INVALID_HANDLE") ==
        0);
  CHECK(strcmp(mmcore_status_name(MMCORE_ERROR_NOT_FOUND), "MMCORE_ERROR_NOT_FOUND") == 0);
  CHECK(strcmp(mmcore_status_name(MMCORE_ERROR_BAD_STATE), "MMCORE_ERROR_BAD_STATE") == 0);
  CHECK(strcmp(mmcore_status_name(MMCORE_ERROR_OUT_OF_MEMORY), "MMCORE_ERROR_OUT_OF_MEMORY") == 0);
  CHECK(strcmp(mmcore_status_name(MMCORE_ERROR_INTERNAL), "MMCORE_ERROR_INTERNAL") == 0);
  CHECK(strcmp(mmcore_status_name((mmcore_status)99), "unknown status") == 0);
}

/* "USER <image> what ?" with one 4-embedding image. */
static mmcore_expanded_prompt* expand_one_image(const char* identifier) {
  const int32_t prompt[] = {1, 5, kImageToken, 6, 7};
  mmcore_placeholder_item item;
  memset(&item, 0, sizeof item);
  item.modality = MMCORE_MODALITY_IMAGE;
  item.identifier = identifier;
  item.placeholder_token_id = kImageToken;
  item.num_embeds = 4;
  const int32_t allowed[] = {MMCORE_MODALITY_IMAGE};
  const mmcore_placeholder_token known[] = {{kImageToken, MMCORE_MODALITY_IMAGE, "<image>"}};
  mmcore_expanded_prompt* out = NULL;
  CHECK_OK(mmcore_expand_placeholders(prompt, 5, &item, 1, allowed, 1, 64, known, 1, &out));
  return out;
}

static void test_placeholders(void) {
  mmcore_expanded_prompt* p = expand_one_image("cat");
  const int32_t* tokens = NULL;
  int32_t num_tokens = 0;
  CHECK_OK(mmcore_expanded_prompt_tokens(p, &tokens, &num_tokens));
  CHECK(num_tokens == 8);
  CHECK(tokens[0] == 1 && tokens[2] == kImageToken && tokens[5] == kImageToken && tokens[6] == 6);
  const mmcore_mm_feature* features = NULL;
  int32_t num_features = 0;
  CHECK_OK(mmcore_expanded_prompt_features(p, &features, &num_features));
  CHECK(num_features == 1);
  CHECK(features[0].offset == 2 && features[0].length == 4 && features[0].num_embeds == 4);
  CHECK(strcmp(features[0].identifier, "cat") == 0 && features[0].embed_mask == NULL);
  CHECK_STATUS(mmcore_expanded_prompt_tokens(p, NULL, &num_tokens), MMCORE_ERROR_INVALID_ARGUMENT,
               "token_ids is NULL");
  CHECK_STATUS(mmcore_expanded_prompt_features(p, &features, NULL), MMCORE_ERROR_INVALID_ARGUMENT,
               "num_features is NULL");
  CHECK_OK(mmcore_expanded_prompt_destroy(p));
  CHECK_STATUS(mmcore_expanded_prompt_destroy(p), MMCORE_ERROR_INVALID_HANDLE, "not a live");
  CHECK_STATUS(mmcore_expanded_prompt_tokens(p, &tokens, &num_tokens), MMCORE_ERROR_INVALID_HANDLE,
               "mmcore_expanded_prompt");
  CHECK_OK(mmcore_expanded_prompt_destroy(NULL));

  /* Two placeholders, one item: the count mismatch is named. */
  const int32_t two[] = {1, kImageToken, kImageToken};
  mmcore_placeholder_item item;
  memset(&item, 0, sizeof item);
  item.identifier = "a";
  item.placeholder_token_id = kImageToken;
  item.num_embeds = 3; /* (2 embeddings would read the prompt as already expanded) */
  const int32_t allowed[] = {MMCORE_MODALITY_IMAGE};
  const mmcore_placeholder_token known[] = {{kImageToken, MMCORE_MODALITY_IMAGE, "<image>"}};
  mmcore_expanded_prompt* bad = (mmcore_expanded_prompt*)1;
  CHECK_STATUS(mmcore_expand_placeholders(two, 3, &item, 1, allowed, 1, 64, known, 1, &bad),
               MMCORE_ERROR_INVALID_ARGUMENT, "<image>");
  CHECK(bad == NULL);
  item.num_embeds = 2;
  /* Audio is not allowed for this model. */
  item.modality = MMCORE_MODALITY_AUDIO;
  CHECK_STATUS(mmcore_expand_placeholders(two, 2, &item, 1, allowed, 1, 64, NULL, 0, &bad),
               MMCORE_ERROR_INVALID_ARGUMENT, "audio");
  item.modality = 7;
  CHECK_STATUS(mmcore_expand_placeholders(two, 2, &item, 1, allowed, 1, 64, NULL, 0, &bad),
               MMCORE_ERROR_INVALID_ARGUMENT, "not a modality");
  item.modality = MMCORE_MODALITY_IMAGE;
  item.identifier = NULL;
  CHECK_STATUS(mmcore_expand_placeholders(two, 2, &item, 1, allowed, 1, 64, NULL, 0, &bad),
               MMCORE_ERROR_INVALID_ARGUMENT, "identifier is NULL");
  item.identifier = "a";
  const uint8_t mask[] = {1, 1};
  item.embed_mask = mask;
  CHECK_STATUS(mmcore_expand_placeholders(two, 2, &item, 1, allowed, 1, 64, NULL, 0, &bad),
               MMCORE_ERROR_INVALID_ARGUMENT, "no replacement");
  item.embed_mask = NULL;
  CHECK_STATUS(mmcore_expand_placeholders(NULL, 2, &item, 1, allowed, 1, 64, NULL, 0, &bad),
               MMCORE_ERROR_INVALID_ARGUMENT, "prompt is NULL");
  CHECK_STATUS(mmcore_expand_placeholders(two, -1, &item, 1, allowed, 1, 64, NULL, 0, &bad),
               MMCORE_ERROR_INVALID_ARGUMENT, "negative count");
  CHECK_STATUS(mmcore_expand_placeholders(two, 2, &item, 1, allowed, 1, 64, NULL, 0, NULL),
               MMCORE_ERROR_INVALID_ARGUMENT, "out is NULL");
  /* Longer than max_len after expansion. */
  CHECK_STATUS(mmcore_expand_placeholders(two, 2, &item, 1, allowed, 1, 2, NULL, 0, &bad),
               MMCORE_ERROR_INVALID_ARGUMENT, "longer than the maximum");
}

static mmcore_scheduler* make_scheduler(int32_t num_blocks, int32_t block_size) {
  mmcore_scheduler_config config;
  mmcore_scheduler_config_init(&config);
  CHECK(config.max_num_seqs == 256 && config.enable_prefix_caching == 1);
  config.num_blocks = num_blocks;
  config.block_size = block_size;
  config.max_model_len = 256;
  mmcore_scheduler* s = NULL;
  CHECK_OK(mmcore_scheduler_create(&config, &s));
  return s;
}

static void test_scheduler_step_with_image(void) {
  mmcore_scheduler* s = make_scheduler(64, 4);
  mmcore_expanded_prompt* p = expand_one_image("dog");
  mmcore_request r;
  mmcore_request_init(&r);
  CHECK(r.max_tokens == 16 && r.token_ids == NULL && r.cache_salt == NULL);
  r.id = 7;
  CHECK_OK(mmcore_expanded_prompt_tokens(p, &r.token_ids, &r.num_tokens));
  CHECK_OK(mmcore_expanded_prompt_features(p, &r.features, &r.num_features));
  r.max_tokens = 3;
  const int32_t eos[] = {2};
  r.eos_token_ids = eos;
  r.num_eos_token_ids = 1;
  CHECK_OK(mmcore_scheduler_add_request(s, &r));
  CHECK_STATUS(mmcore_scheduler_add_request(s, &r), MMCORE_ERROR_INVALID_ARGUMENT,
               "already exists");
  CHECK_OK(mmcore_expanded_prompt_destroy(p)); /* the scheduler copied everything */

  int32_t unfinished = 0;
  CHECK_OK(mmcore_scheduler_has_unfinished(s, &unfinished));
  CHECK(unfinished == 1);
  mmcore_scheduler_output out;
  CHECK_OK(mmcore_scheduler_schedule(s, &out));
  CHECK(out.num_reqs == 1 && out.num_tokens == 8 && out.req_ids[0] == 7);
  CHECK(out.query_start_loc[0] == 0 && out.query_start_loc[1] == 8);
  CHECK(out.num_scheduled_tokens[0] == 8 && out.num_computed_tokens[0] == 0);
  CHECK(out.seq_lens[0] == 8 && out.position_dims == 1 && out.positions[7] == 7);
  CHECK(out.max_blocks_per_req == 2 && out.block_tables[0] >= 0 && out.block_tables[1] >= 0);
  CHECK(out.slot_mapping[4] == (int64_t)out.block_tables[1] * 4);
  CHECK(out.input_ids[2] == kImageToken && out.input_ids[7] == 7);
  CHECK(out.num_samples == 1 && out.logits_indices[0] == 7 && out.sampling_req_ids[0] == 7);
  CHECK(out.prev_sample_index[0] == -1);
  CHECK(out.num_encoder_items == 1 && out.encoder_req_ids[0] == 7);
  CHECK(out.encoder_item_indices[0] == 0);
  CHECK(out.num_scatter == 1 && out.scatter_handles[0] == out.encoder_handles[0]);
  CHECK(out.scatter_src_offsets[0] == 0 && out.scatter_dst_rows[0] == 2 &&
        out.scatter_lens[0] == 4);
  CHECK(out.num_freed_encoder_handles == 0 && out.num_finished == 0 && out.num_preempted == 0);

  /* Wrong token count, wrong step: refused, nothing changes. */
  const int32_t two_tokens[] = {11, 12};
  CHECK_STATUS(mmcore_scheduler_update(s, out.step_id, two_tokens, 2, NULL),
               MMCORE_ERROR_INVALID_ARGUMENT, "tokens were given");
  CHECK_STATUS(mmcore_scheduler_update(s, out.step_id + 5, two_tokens, 1, NULL),
               MMCORE_ERROR_BAD_STATE, "not the oldest step");
  CHECK_STATUS(mmcore_scheduler_update(s, out.step_id, NULL, 1, NULL),
               MMCORE_ERROR_INVALID_ARGUMENT, "sampled is NULL");
  mmcore_update_result res;
  CHECK_OK(mmcore_scheduler_update(s, out.step_id, two_tokens, 1, &res));
  CHECK(res.num_tokens == 1 && res.req_ids[0] == 7 && res.token_ids[0] == 11);
  CHECK(res.num_finished == 0);

  mmcore_request_info info;
  CHECK_OK(mmcore_scheduler_get_request(s, 7, &info));
  CHECK(info.status == MMCORE_REQUEST_RUNNING && info.num_prompt_tokens == 8);
  CHECK(info.num_tokens == 9 && info.num_output_tokens == 1 && info.num_computed_tokens == 8);
  CHECK(info.token_ids[8] == 11);
  CHECK_STATUS(mmcore_scheduler_get_request(s, 8, &info), MMCORE_ERROR_NOT_FOUND, "request 8");
  CHECK_STATUS(mmcore_scheduler_get_request(s, 7, NULL), MMCORE_ERROR_INVALID_ARGUMENT,
               "out is NULL");

  /* Overlapped scheduling: two steps in flight at most. */
  mmcore_scheduler_output a, b, c;
  CHECK_OK(mmcore_scheduler_schedule(s, &a));
  CHECK_OK(mmcore_scheduler_schedule(s, &b));
  CHECK(b.num_tokens == 1 && b.input_ids[0] == -1 && b.prev_sample_index[0] == 0);
  CHECK_STATUS(mmcore_scheduler_schedule(s, &c), MMCORE_ERROR_BAD_STATE, "two steps");
  const int32_t eos_token[] = {2};
  CHECK_OK(mmcore_scheduler_update(s, a.step_id, eos_token, 1, &res));
  CHECK(res.num_finished == 1 && res.finished_req_ids[0] == 7);
  CHECK(res.finish_statuses[0] == MMCORE_REQUEST_FINISHED_STOPPED);
  CHECK_OK(mmcore_scheduler_update(s, b.step_id, two_tokens, 1, &res));
  CHECK(res.num_tokens == 0); /* the request finished meanwhile: its token is dropped */
  CHECK_OK(mmcore_scheduler_has_unfinished(s, &unfinished));
  CHECK(unfinished == 0);
  CHECK_OK(mmcore_scheduler_schedule(s, &c));
  CHECK(c.num_reqs == 0 && c.num_finished == 1 && c.finished_req_ids[0] == 7);

  mmcore_scheduler_stats st;
  CHECK_OK(mmcore_scheduler_get_stats(s, &st));
  CHECK(st.num_running == 0 && st.num_waiting == 0 && st.num_steps == 4);
  CHECK(st.kv_num_blocks == 64 && st.kv_num_used_blocks == 0 && st.kv_num_free_blocks == 64);
  CHECK(st.encoder_num_entries == 1 && st.encoder_num_referenced_entries == 0);
  CHECK(st.encoder_capacity_embeds == 8192 && st.encoder_used_embeds == 4);
  CHECK_OK(mmcore_scheduler_check_invariants(s));
  CHECK_OK(mmcore_scheduler_destroy(s));
}

static void test_scheduler_bad_arguments(void) {
  mmcore_scheduler_config config;
  mmcore_scheduler_config_init(&config);
  mmcore_scheduler* s = (mmcore_scheduler*)1;
  CHECK_STATUS(mmcore_scheduler_create(&config, &s), MMCORE_ERROR_INVALID_ARGUMENT, "num_blocks");
  CHECK(s == NULL);
  CHECK_STATUS(mmcore_scheduler_create(NULL, &s), MMCORE_ERROR_INVALID_ARGUMENT, "config is NULL");
  config.num_blocks = 16;
  CHECK_STATUS(mmcore_scheduler_create(&config, NULL), MMCORE_ERROR_INVALID_ARGUMENT,
               "out is NULL");
  s = make_scheduler(16, 4);
  mmcore_request r;
  mmcore_request_init(&r);
  const int32_t tokens[] = {1, 2, 3, 4};
  r.id = 1;
  CHECK_STATUS(mmcore_scheduler_add_request(s, &r), MMCORE_ERROR_INVALID_ARGUMENT, "empty");
  r.num_tokens = 4;
  CHECK_STATUS(mmcore_scheduler_add_request(s, &r), MMCORE_ERROR_INVALID_ARGUMENT,
               "token_ids is NULL");
  r.token_ids = tokens;
  r.num_tokens = -3;
  CHECK_STATUS(mmcore_scheduler_add_request(s, &r), MMCORE_ERROR_INVALID_ARGUMENT,
               "negative count");
  r.num_tokens = 4;
  r.max_tokens = 0;
  CHECK_STATUS(mmcore_scheduler_add_request(s, &r), MMCORE_ERROR_INVALID_ARGUMENT, "max_tokens");
  r.max_tokens = 1000; /* 1004 tokens > max_model_len 256: capped; fits 16 blocks of 4? no */
  CHECK_STATUS(mmcore_scheduler_add_request(s, &r), MMCORE_ERROR_INVALID_ARGUMENT, "KV blocks");
  r.max_tokens = 4;
  mmcore_mm_feature f = {MMCORE_MODALITY_IMAGE, "x", 3, 4, 4, NULL};
  r.features = &f;
  r.num_features = 1;
  CHECK_STATUS(mmcore_scheduler_add_request(s, &r), MMCORE_ERROR_INVALID_ARGUMENT,
               "past the prompt");
  f.modality = -1;
  CHECK_STATUS(mmcore_scheduler_add_request(s, &r), MMCORE_ERROR_INVALID_ARGUMENT,
               "not a modality");
  r.num_features = 0;
  const int64_t mrope[3 * 4] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
  r.mrope_positions = mrope;
  CHECK_OK(mmcore_scheduler_add_request(s, &r));
  CHECK_STATUS(mmcore_scheduler_add_request(s, NULL), MMCORE_ERROR_INVALID_ARGUMENT,
               "request is NULL");
  CHECK_STATUS(mmcore_scheduler_finish_request(s, 1, MMCORE_REQUEST_RUNNING),
               MMCORE_ERROR_INVALID_ARGUMENT, "not a finished status");
  CHECK_OK(mmcore_scheduler_finish_request(s, 1, MMCORE_REQUEST_FINISHED_ABORTED));
  CHECK_OK(mmcore_scheduler_finish_request(s, 12345, MMCORE_REQUEST_FINISHED_ABORTED));
  mmcore_scheduler_output out;
  CHECK_OK(mmcore_scheduler_schedule(s, &out));
  CHECK(out.num_reqs == 0 && out.num_finished == 1 && out.finished_req_ids[0] == 1);
  CHECK_STATUS(mmcore_scheduler_schedule(s, NULL), MMCORE_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_STATUS(mmcore_scheduler_has_unfinished(s, NULL), MMCORE_ERROR_INVALID_ARGUMENT, "NULL");
  CHECK_STATUS(mmcore_scheduler_get_stats(s, NULL), MMCORE_ERROR_INVALID_ARGUMENT, "NULL");
  CHECK_OK(mmcore_scheduler_destroy(s));
}

static void test_bad_handles(void) {
  mmcore_scheduler_output out;
  int32_t flag = 0;
  CHECK_STATUS(mmcore_scheduler_schedule(NULL, &out), MMCORE_ERROR_INVALID_HANDLE,
               "mmcore_scheduler handle is NULL");
  CHECK_OK(mmcore_scheduler_destroy(NULL));
  mmcore_scheduler* s = make_scheduler(8, 4);
  CHECK_OK(mmcore_scheduler_destroy(s));
  CHECK_STATUS(mmcore_scheduler_has_unfinished(s, &flag), MMCORE_ERROR_INVALID_HANDLE,
               "not a live");
  CHECK_STATUS(mmcore_scheduler_destroy(s), MMCORE_ERROR_INVALID_HANDLE, "not a live");
  CHECK_STATUS(mmcore_scheduler_check_invariants(s), MMCORE_ERROR_INVALID_HANDLE, "not a live");
  /* A handle of another type is refused, not reinterpreted. */
  mmcore_encoder_cache* cache = NULL;
  CHECK_OK(mmcore_encoder_cache_create(16, &cache));
  CHECK_STATUS(mmcore_scheduler_schedule((mmcore_scheduler*)cache, &out),
               MMCORE_ERROR_INVALID_HANDLE, "of another type");
  CHECK_STATUS(mmcore_block_manager_free((mmcore_block_manager*)cache, 1),
               MMCORE_ERROR_INVALID_HANDLE, "mmcore_block_manager");
  CHECK_STATUS(mmcore_expanded_prompt_destroy((mmcore_expanded_prompt*)cache),
               MMCORE_ERROR_INVALID_HANDLE, "mmcore_expanded_prompt");
  CHECK_OK(mmcore_encoder_cache_destroy(cache));
  CHECK_STATUS(mmcore_encoder_cache_lookup(cache, "x", &flag), MMCORE_ERROR_INVALID_HANDLE,
               "mmcore_encoder_cache");
  CHECK_STATUS(mmcore_encoder_cache_destroy(cache), MMCORE_ERROR_INVALID_HANDLE, "not a live");
  CHECK_OK(mmcore_encoder_cache_destroy(NULL));
  CHECK_OK(mmcore_block_manager_destroy(NULL));
  CHECK_STATUS(mmcore_block_manager_check_invariants(NULL), MMCORE_ERROR_INVALID_HANDLE, "NULL");
  CHECK_STATUS(mmcore_encoder_cache_check_invariants(NULL), MMCORE_ERROR_INVALID_HANDLE, "NULL");
}

/* Two requests that outgrow the cache together: the newest is preempted, recomputed later, and
 * both finish with all their tokens; no block is leaked. */
static void test_scheduler_loop_with_preemption(void) {
  mmcore_scheduler* s = make_scheduler(8, 4);
  const int32_t prompt[] = {3, 4, 5, 6, 7, 8, 9, 10};
  for (int64_t id = 0; id < 2; ++id) {
    mmcore_request r;
    mmcore_request_init(&r);
    r.id = id;
    r.token_ids = prompt;
    r.num_tokens = 8;
    r.max_tokens = 14;
    r.ignore_eos = 1;
    CHECK_OK(mmcore_scheduler_add_request(s, &r));
  }
  int32_t generated[2] = {0, 0};
  int32_t finished = 0, preempted = 0, steps = 0, unfinished = 1;
  while (unfinished && steps < 200) {
    mmcore_scheduler_output out;
    CHECK_OK(mmcore_scheduler_schedule(s, &out));
    preempted += out.num_preempted;
    int32_t sampled[2] = {50, 50};
    mmcore_update_result res;
    CHECK_OK(mmcore_scheduler_update(s, out.step_id, sampled, out.num_samples, &res));
    for (int32_t i = 0; i < res.num_tokens; ++i) ++generated[res.req_ids[i]];
    for (int32_t i = 0; i < res.num_finished; ++i) {
      CHECK(res.finish_statuses[i] == MMCORE_REQUEST_FINISHED_LENGTH);
      ++finished;
    }
    CHECK_OK(mmcore_scheduler_check_invariants(s));
    CHECK_OK(mmcore_scheduler_has_unfinished(s, &unfinished));
    ++steps;
  }
  CHECK(finished == 2 && generated[0] == 14 && generated[1] == 14);
  CHECK(preempted >= 1);
  mmcore_scheduler_stats st;
  CHECK_OK(mmcore_scheduler_get_stats(s, &st));
  CHECK(st.num_preemptions == preempted && st.kv_num_used_blocks == 0);
  CHECK_OK(mmcore_scheduler_destroy(s));
}

static void test_block_manager(void) {
  mmcore_block_manager* m = (mmcore_block_manager*)1;
  CHECK_STATUS(mmcore_block_manager_create(8, 0, 1, &m), MMCORE_ERROR_INVALID_ARGUMENT,
               "block_size");
  CHECK(m == NULL);
  CHECK_STATUS(mmcore_block_manager_create(8, 4, 1, NULL), MMCORE_ERROR_INVALID_ARGUMENT, "out");
  CHECK_OK(mmcore_block_manager_create(6, 4, 1, &m));
  const int32_t tokens[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  mmcore_mm_feature f = {MMCORE_MODALITY_IMAGE, "img", 1, 2, 2, NULL};
  CHECK_OK(mmcore_block_manager_add_request(m, 1, tokens, 9, &f, 1, NULL));
  CHECK_STATUS(mmcore_block_manager_add_request(m, 1, tokens, 9, NULL, 0, NULL),
               MMCORE_ERROR_INVALID_ARGUMENT, "already exists");
  CHECK_STATUS(mmcore_block_manager_add_request(m, 2, tokens, 0, NULL, 0, NULL),
               MMCORE_ERROR_INVALID_ARGUMENT, "empty");
  f.offset = 8;
  CHECK_STATUS(mmcore_block_manager_add_request(m, 2, tokens, 9, &f, 1, NULL),
               MMCORE_ERROR_INVALID_ARGUMENT, "inside the tokens");
  f.offset = 1;
  int32_t allocated = 0, hit = 0, can = 0, n = 0;
  CHECK_OK(mmcore_block_manager_can_allocate(m, 1, 9, 1, &can));
  CHECK(can == 1);
  CHECK_OK(mmcore_block_manager_allocate(m, 1, 9, 1, &allocated, &hit));
  CHECK(allocated == 1 && hit == 0);
  const int32_t* blocks = NULL;
  CHECK_OK(mmcore_block_manager_block_table(m, 1, &blocks, &n));
  CHECK(n == 3);
  const int32_t first_block = blocks[0];
  CHECK_OK(mmcore_block_manager_num_computed_tokens(m, 1, &n));
  CHECK(n == 9);
  CHECK_STATUS(mmcore_block_manager_allocate(m, 1, 1, 1, &allocated, &hit),
               MMCORE_ERROR_INVALID_ARGUMENT, "pass its tokens");
  const int32_t more[] = {10};
  CHECK_OK(mmcore_block_manager_append_tokens(m, 1, more, 1));
  CHECK_STATUS(mmcore_block_manager_append_tokens(m, 1, NULL, 1), MMCORE_ERROR_INVALID_ARGUMENT,
               "token_ids is NULL");
  const int32_t negative[] = {-4};
  CHECK_STATUS(mmcore_block_manager_append_tokens(m, 1, negative, 1), MMCORE_ERROR_INVALID_ARGUMENT,
               "negative");
  CHECK_OK(mmcore_block_manager_allocate(m, 1, 1, 1, &allocated, &hit));
  CHECK(allocated == 1);

  /* Same tokens and item: the two full blocks come from the prefix cache. */
  CHECK_OK(mmcore_block_manager_add_request(m, 2, tokens, 9, &f, 1, NULL));
  CHECK_OK(mmcore_block_manager_get_computed_blocks(m, 2, &blocks, &n));
  CHECK(n == 2 && blocks[0] == first_block);
  /* A different image identifier at the same place shares nothing. */
  mmcore_mm_feature other = f;
  other.identifier = "other-img";
  CHECK_OK(mmcore_block_manager_add_request(m, 3, tokens, 9, &other, 1, NULL));
  CHECK_OK(mmcore_block_manager_get_computed_blocks(m, 3, &blocks, &n));
  CHECK(n == 0);
  CHECK_OK(mmcore_block_manager_allocate(m, 2, 1, 1, &allocated, &hit));
  CHECK(allocated == 1 && hit == 8);
  /* 6 blocks: request 1 holds 3, request 2 holds 3 (2 shared): 2 free; 9 slots need 3. */
  CHECK_OK(mmcore_block_manager_can_allocate(m, 3, 9, 1, &can));
  CHECK(can == 0);
  CHECK_OK(mmcore_block_manager_allocate(m, 3, 9, 1, &allocated, &hit));
  CHECK(allocated == 0 && hit == 0);
  mmcore_block_manager_stats st;
  CHECK_OK(mmcore_block_manager_get_stats(m, &st));
  CHECK(st.num_blocks == 6 && st.num_used_blocks == 4 && st.num_free_blocks == 2);
  CHECK(st.prefix_hits == 8 && st.num_cached_blocks == 2);
  CHECK_OK(mmcore_block_manager_free(m, 2));
  CHECK_OK(mmcore_block_manager_remove_request(m, 1));
  CHECK_OK(mmcore_block_manager_allocate(m, 3, 9, 1, &allocated, &hit));
  CHECK(allocated == 1);
  CHECK_OK(mmcore_block_manager_check_invariants(m));
  CHECK_STATUS(mmcore_block_manager_free(m, 1), MMCORE_ERROR_NOT_FOUND, "unknown request 1");
  CHECK_STATUS(mmcore_block_manager_block_table(m, 99, &blocks, &n), MMCORE_ERROR_NOT_FOUND, "99");
  CHECK_STATUS(mmcore_block_manager_num_computed_tokens(m, 99, &n), MMCORE_ERROR_NOT_FOUND, "99");
  CHECK_STATUS(mmcore_block_manager_get_computed_blocks(m, 99, &blocks, &n), MMCORE_ERROR_NOT_FOUND,
               "99");
  CHECK_STATUS(mmcore_block_manager_can_allocate(m, 3, -1, 1, &can), MMCORE_ERROR_INVALID_ARGUMENT,
               "num_new_tokens");
  CHECK_STATUS(mmcore_block_manager_allocate(m, 3, 1, 1, NULL, &hit), MMCORE_ERROR_INVALID_ARGUMENT,
               "allocated is NULL");
  CHECK_STATUS(mmcore_block_manager_get_stats(m, NULL), MMCORE_ERROR_INVALID_ARGUMENT, "NULL");
  CHECK_STATUS(mmcore_block_manager_remove_request(m, 42), MMCORE_ERROR_NOT_FOUND, "42");
  CHECK_OK(mmcore_block_manager_destroy(m));
}

static void test_encoder_cache(void) {
  mmcore_encoder_cache* c = (mmcore_encoder_cache*)1;
  CHECK_STATUS(mmcore_encoder_cache_create(-1, &c), MMCORE_ERROR_INVALID_ARGUMENT, "capacity");
  CHECK(c == NULL);
  CHECK_OK(mmcore_encoder_cache_create(10, &c));
  int32_t flag = -1;
  int64_t handle = -1, other = -1;
  CHECK_OK(mmcore_encoder_cache_lookup(c, "a", &flag));
  CHECK(flag == 0);
  CHECK_OK(mmcore_encoder_cache_can_allocate(c, 6, &flag));
  CHECK(flag == 1);
  CHECK_OK(mmcore_encoder_cache_allocate(c, "a", 6, 1, &handle));
  CHECK_STATUS(mmcore_encoder_cache_allocate(c, "a", 6, 2, &other), MMCORE_ERROR_INVALID_ARGUMENT,
               "a");
  CHECK_OK(mmcore_encoder_cache_get_handle(c, "a", &other));
  CHECK(other == handle);
  CHECK_OK(mmcore_encoder_cache_acquire(c, "a", 2, &other));
  CHECK(other == handle);
  CHECK_OK(mmcore_encoder_cache_num_refs(c, "a", &flag));
  CHECK(flag == 2);
  CHECK_OK(mmcore_encoder_cache_can_allocate(c, 6, &flag));
  CHECK(flag == 0); /* "a" is pinned */
  CHECK_OK(mmcore_encoder_cache_release(c, "a", 1));
  CHECK_OK(mmcore_encoder_cache_release_all(c, 2));
  CHECK_OK(mmcore_encoder_cache_num_refs(c, "a", &flag));
  CHECK(flag == 0);
  CHECK_OK(mmcore_encoder_cache_lookup(c, "a", &flag));
  CHECK(flag == 1); /* unreferenced entries stay cached */
  CHECK_OK(mmcore_encoder_cache_allocate(c, "b", 6, 3, &other)); /* evicts "a" */
  const int64_t* freed = NULL;
  int32_t num_freed = 0;
  CHECK_OK(mmcore_encoder_cache_take_freed(c, &freed, &num_freed));
  CHECK(num_freed == 1 && freed[0] == handle);
  CHECK_OK(mmcore_encoder_cache_take_freed(c, &freed, &num_freed));
  CHECK(num_freed == 0);
  CHECK_STATUS(mmcore_encoder_cache_get_handle(c, "a", &handle), MMCORE_ERROR_NOT_FOUND, "'a'");
  CHECK_STATUS(mmcore_encoder_cache_acquire(c, "a", 4, &handle), MMCORE_ERROR_NOT_FOUND, "'a'");
  CHECK_STATUS(mmcore_encoder_cache_allocate(c, "c", 0, 4, &handle), MMCORE_ERROR_INVALID_ARGUMENT,
               "");
  CHECK_STATUS(mmcore_encoder_cache_lookup(c, NULL, &flag), MMCORE_ERROR_INVALID_ARGUMENT,
               "identifier is NULL");
  CHECK_STATUS(mmcore_encoder_cache_release(c, NULL, 1), MMCORE_ERROR_INVALID_ARGUMENT,
               "identifier is NULL");
  CHECK_STATUS(mmcore_encoder_cache_num_refs(c, "b", NULL), MMCORE_ERROR_INVALID_ARGUMENT,
               "out is NULL");
  CHECK_STATUS(mmcore_encoder_cache_take_freed(c, NULL, &num_freed), MMCORE_ERROR_INVALID_ARGUMENT,
               "handles is NULL");
  mmcore_encoder_cache_stats st;
  CHECK_OK(mmcore_encoder_cache_get_stats(c, &st));
  CHECK(st.num_queries == 2 && st.num_hits == 1 && st.used_embeds == 6);
  CHECK(st.capacity_embeds == 10 && st.num_entries == 1 && st.num_referenced_entries == 1);
  CHECK_STATUS(mmcore_encoder_cache_get_stats(c, NULL), MMCORE_ERROR_INVALID_ARGUMENT, "NULL");
  CHECK_OK(mmcore_encoder_cache_check_invariants(c));
  CHECK_OK(mmcore_encoder_cache_destroy(c));
}

/* A hybrid model's KV cache groups: a sliding group's blocks before its window come back to the
 * pool while the request runs (-1 in its block table), and bad group lists are refused. */
static void test_scheduler_kv_groups(void) {
  mmcore_scheduler_config config;
  mmcore_scheduler_config_init(&config);
  CHECK(config.kv_group_windows == NULL && config.num_kv_groups == 0);
  config.num_blocks = 64;
  config.block_size = 4;
  config.max_model_len = 256;
  config.max_num_batched_tokens = 8;
  mmcore_scheduler* s = NULL;
  const int32_t bad_order[] = {8, -1};
  config.kv_group_windows = bad_order;
  config.num_kv_groups = 2;
  CHECK_STATUS(mmcore_scheduler_create(&config, &s), MMCORE_ERROR_INVALID_ARGUMENT,
               "full-attention groups come before");
  const int32_t bad_window[] = {-1, 0};
  config.kv_group_windows = bad_window;
  CHECK_STATUS(mmcore_scheduler_create(&config, &s), MMCORE_ERROR_INVALID_ARGUMENT,
               "positive window");
  config.kv_group_windows = NULL;
  CHECK_STATUS(mmcore_scheduler_create(&config, &s), MMCORE_ERROR_INVALID_ARGUMENT,
               "kv_group_windows is NULL");
  const int32_t windows[] = {-1, 8};
  config.kv_group_windows = windows;
  CHECK_OK(mmcore_scheduler_create(&config, &s));

  int32_t prompt[40];
  for (int i = 0; i < 40; ++i) prompt[i] = 10 + i;
  mmcore_request r;
  mmcore_request_init(&r);
  r.id = 3;
  r.token_ids = prompt;
  r.num_tokens = 40;
  r.max_tokens = 12;
  r.ignore_eos = 1;
  CHECK_OK(mmcore_scheduler_add_request(s, &r));
  int32_t flag = 1, saw_released = 0, steps = 0;
  mmcore_scheduler_output out;
  while (flag && steps < 100) {
    CHECK_OK(mmcore_scheduler_schedule(s, &out));
    ++steps;
    CHECK(out.num_kv_groups == 2);
    if (out.num_reqs == 1) {
      /* Group 1's row: released entries only at the front, live blocks after them. */
      const int32_t* row = out.group_block_tables;
      int32_t live = 0;
      for (int32_t b = 0; b < out.max_blocks_per_req; ++b) {
        if (row[b] >= 0) live = 1;
        if (row[b] < 0 && !live) saw_released = saw_released || b < out.max_blocks_per_req - 1;
      }
      /* Its slots point into its own live blocks. */
      for (int32_t t = 0; t < out.num_tokens; ++t) CHECK(out.group_slot_mapping[t] >= 0);
      CHECK(out.block_tables[0] >= 0); /* the full group keeps every block */
    }
    const int32_t token = 5;
    CHECK_OK(mmcore_scheduler_update(s, out.step_id, &token, out.num_samples, NULL));
    CHECK_OK(mmcore_scheduler_check_invariants(s));
    CHECK_OK(mmcore_scheduler_has_unfinished(s, &flag));
  }
  CHECK(saw_released);
  mmcore_scheduler_stats st;
  CHECK_OK(mmcore_scheduler_get_stats(s, &st));
  CHECK(st.kv_num_sliding_blocks_freed > 0);
  CHECK_OK(mmcore_scheduler_schedule(s, &out)); /* reports the finished request */
  CHECK_OK(mmcore_scheduler_get_stats(s, &st));
  CHECK(st.kv_num_used_blocks == 0);
  CHECK_OK(mmcore_scheduler_destroy(s));
}

int main(void) {
  test_version_and_status_names();
  test_placeholders();
  test_scheduler_step_with_image();
  test_scheduler_bad_arguments();
  test_bad_handles();
  test_scheduler_loop_with_preemption();
  test_scheduler_kv_groups();
  test_block_manager();
  test_encoder_cache();
  printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
