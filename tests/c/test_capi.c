/* Error paths and contracts of the finllm C ABI. Usage: test_capi TINY_MODEL.gguf
 * Built and run (under AddressSanitizer) by `make -C examples/cpp check`. */
#define _DEFAULT_SOURCE
#include <sys/stat.h>
#include <finllm.h>

#include <pthread.h>
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0, checks = 0;

#define CHECK(cond)                                                   \
  do {                                                                \
    checks++;                                                         \
    if (!(cond)) {                                                    \
      failures++;                                                     \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                 \
  } while (0)

#define EXPECT_STATUS(call, want)                                                             \
  do {                                                                                        \
    finllm_status got_ = (call);                                                              \
    checks++;                                                                                 \
    if (got_ != (want)) {                                                                     \
      char msg_[512];                                                                         \
      finllm_last_error_message(msg_, sizeof msg_);                                           \
      failures++;                                                                             \
      fprintf(stderr, "%s:%d: %s returned %s, want %s (%s)\n", __FILE__, __LINE__, #call,     \
              finllm_status_name(got_), finllm_status_name(want), msg_);                      \
    }                                                                                         \
  } while (0)

static size_t last_error_len(void) { return finllm_last_error_message(NULL, 0); }

static void test_version(void) {
  char want[64];
  snprintf(want, sizeof want, "%d.%d.%d", FINLLM_VERSION_MAJOR, FINLLM_VERSION_MINOR, FINLLM_VERSION_PATCH);
  CHECK(strcmp(finllm_version(), want) == 0);
  CHECK(strcmp(finllm_status_name(FINLLM_ERROR_IO), "FINLLM_ERROR_IO") == 0);
  CHECK(strcmp(finllm_status_name(12345), "FINLLM_ERROR_UNKNOWN_STATUS") == 0);
}

static void test_load_errors(const char *tiny) {
  finllm_model *sentinel = (finllm_model *)0x1;
  finllm_model *out = sentinel;
  EXPECT_STATUS(finllm_model_load(NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  CHECK(out == sentinel); /* untouched on error */
  CHECK(last_error_len() > 1);
  EXPECT_STATUS(finllm_model_load(tiny, NULL, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_model_load("bad\xff\xfe.gguf", NULL, &out), FINLLM_ERROR_INVALID_UTF8);
  EXPECT_STATUS(finllm_model_load("/nonexistent/model.gguf", NULL, &out), FINLLM_ERROR_IO);
  CHECK(out == sentinel);

  /* A malformed file. */
  char path[] = "/tmp/finllm-capi-bad-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  CHECK(write(fd, "GGUF\x03\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff", 16) == 16);
  close(fd);
  EXPECT_STATUS(finllm_model_load(path, NULL, &out), FINLLM_ERROR_MODEL_FORMAT);
  unlink(path);

  /* Options from an older, smaller struct. */
  finllm_load_params p = finllm_load_default_params();
  p.struct_size = 4;
  EXPECT_STATUS(finllm_model_load(tiny, &p, &out), FINLLM_ERROR_STRUCT_SIZE);
  p = finllm_load_default_params();
  p.tokenizer_json = "/nonexistent/tokenizer.json";
  EXPECT_STATUS(finllm_model_load(tiny, &p, &out), FINLLM_ERROR_TOKENIZER);
  CHECK(out == sentinel);

  /* A struct compiled against the header before `device` was added still loads, on the CPU. */
  p = finllm_load_default_params();
  p.struct_size = (uint32_t)offsetof(finllm_load_params, device);
  p.device = "not read: past the caller's struct";
  finllm_model *old = NULL;
  EXPECT_STATUS(finllm_model_load(tiny, &p, &old), FINLLM_OK);
  finllm_model_free(old);

  /* Devices: a bad name is an argument error; CUDA is FINLLM_ERROR_DEVICE unless this library
     was built with it and the machine has a GPU. */
  p = finllm_load_default_params();
  p.device = "tpu:0";
  EXPECT_STATUS(finllm_model_load(tiny, &p, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  p.device = "cuda:0";
  finllm_model *gpu = NULL;
  finllm_status s = finllm_model_load(tiny, &p, &gpu);
  CHECK(s == FINLLM_OK || s == FINLLM_ERROR_DEVICE);
  if (s == FINLLM_ERROR_DEVICE) {
    CHECK(gpu == NULL);
    char msg[512];
    finllm_last_error_message(msg, sizeof msg);
    CHECK(strstr(msg, "cuda:0") != NULL);
  }
  finllm_model_free(gpu);
  CHECK(strcmp(finllm_status_name(FINLLM_ERROR_DEVICE), "FINLLM_ERROR_DEVICE") == 0);
  CHECK(out == sentinel);

  finllm_model_free(NULL);
  finllm_generation_free(NULL);
  finllm_cancel_free(NULL);
  finllm_cancel_trigger(NULL);
  CHECK(finllm_model_vocab_size(NULL) == 0);
  CHECK(finllm_model_architecture(NULL) == NULL);
  CHECK(finllm_generation_text(NULL, NULL) == NULL);
}

static void test_tokenize(const finllm_model *m) {
  size_t n = 0;
  uint32_t ids[4];
  EXPECT_STATUS(finllm_tokenize(m, "the rate of interest", ids, 2, &n), FINLLM_ERROR_BUFFER_TOO_SMALL);
  CHECK(n > 2);
  size_t need = n;
  uint32_t *buf = malloc(need * sizeof *buf);
  EXPECT_STATUS(finllm_tokenize(m, "the rate of interest", buf, need, &n), FINLLM_OK);
  CHECK(n == need);
  CHECK(last_error_len() == 1); /* success clears the message */
  EXPECT_STATUS(finllm_tokenize(NULL, "x", ids, 4, &n), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_tokenize(m, NULL, ids, 4, &n), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_tokenize(m, "x", ids, 4, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_tokenize(m, "\xc3\x28", ids, 4, &n), FINLLM_ERROR_INVALID_UTF8);

  char text[8];
  size_t needed = 0;
  EXPECT_STATUS(finllm_detokenize(m, buf, need, text, sizeof text, &needed), FINLLM_ERROR_BUFFER_TOO_SMALL);
  CHECK(needed == strlen("the rate of interest") + 1);
  char *full = malloc(needed);
  EXPECT_STATUS(finllm_detokenize(m, buf, need, full, needed, &needed), FINLLM_OK);
  CHECK(strcmp(full, "the rate of interest") == 0);
  uint32_t bad = 0xFFFFFFFFu;
  EXPECT_STATUS(finllm_detokenize(m, &bad, 1, full, needed, &needed), FINLLM_ERROR_INVALID_ARGUMENT);
  EXPECT_STATUS(finllm_detokenize(m, NULL, 3, full, needed, &needed), FINLLM_ERROR_NULL_POINTER);
  free(full);
  free(buf);
}

/* One request through finllm_generate: text, or a conversation when msgs is not NULL, under
 * guard g (NULL for none), with the request ids of `info` (NULL for defaults). */
static finllm_status gen(const finllm_model *m, const finllm_guard *g, const char *prompt,
                         const finllm_chat_message *msgs, size_t n_msgs, const finllm_generate_params *p,
                         const finllm_request_params *info, finllm_token_callback cb, void *ud,
                         const finllm_cancel *cancel, finllm_generation **out) {
  finllm_request_params r = info ? *info : finllm_request_default_params();
  r.prompt = prompt;
  r.messages = msgs;
  r.n_messages = n_msgs;
  r.generate = p;
  r.guard = g;
  return finllm_generate(m, &r, cb, ud, cancel, out);
}
#define generate_text(m, prompt, p, cb, ud, cancel, out) gen(m, NULL, prompt, NULL, 0, p, NULL, cb, ud, cancel, out)
#define chat(m, msgs, n, p, cb, ud, cancel, out) gen(m, NULL, NULL, msgs, n, p, NULL, cb, ud, cancel, out)
#define generate_guarded(g, m, prompt, p, rp, cb, ud, cancel, out) \
  gen(m, g, prompt, NULL, 0, p, rp, cb, ud, cancel, out)
#define chat_guarded(g, m, msgs, n, p, rp, cb, ud, cancel, out) gen(m, g, NULL, msgs, n, p, rp, cb, ud, cancel, out)

static int stop_after_three(const char *text, size_t len, uint32_t id, void *user_data) {
  (void)text;
  (void)len;
  (void)id;
  int *count = user_data;
  return ++*count >= 3;
}

struct cancel_job {
  finllm_cancel *cancel;
};

static void *trigger_later(void *arg) {
  struct cancel_job *job = arg;
  usleep(20 * 1000);
  finllm_cancel_trigger(job->cancel);
  return NULL;
}

static int slow_callback(const char *text, size_t len, uint32_t id, void *user_data) {
  (void)text;
  (void)len;
  (void)id;
  (void)user_data;
  usleep(2000);
  return 0;
}

static void test_generate(const finllm_model *m) {
  const finllm_request_params empty = finllm_request_default_params();
  finllm_generate_params p = finllm_generate_default_params();
  p.max_tokens = 8;
  finllm_generation *sentinel = (finllm_generation *)0x1, *out = sentinel;

  EXPECT_STATUS(finllm_generate(m, NULL, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_generate(NULL, &empty, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  /* Exactly one prompt: none, or text and a conversation at once, is refused. */
  EXPECT_STATUS(finllm_generate(m, &empty, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  finllm_chat_message one[1] = {{"user", "x"}};
  finllm_request_params both = finllm_request_default_params();
  both.prompt = "x";
  both.messages = one;
  both.n_messages = 1;
  EXPECT_STATUS(finllm_generate(m, &both, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  EXPECT_STATUS(generate_text(m, "x", &p, NULL, NULL, NULL, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(generate_text(m, "\xff", &p, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_UTF8);
  finllm_generate_params bad = p;
  bad.temperature = -1.0f;
  EXPECT_STATUS(generate_text(m, "x", &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  bad = p;
  bad.struct_size = 8;
  EXPECT_STATUS(generate_text(m, "x", &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_STRUCT_SIZE);
  bad = p;
  bad.max_tokens = 1000000;
  EXPECT_STATUS(generate_text(m, "x", &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_CONTEXT_OVERFLOW);
  bad = p;
  bad.n_stop = 2;
  bad.stop = NULL;
  EXPECT_STATUS(generate_text(m, "x", &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  const char *stops[2] = {"ok", NULL};
  bad.stop = stops;
  EXPECT_STATUS(generate_text(m, "x", &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(generate_text(m, "", &p, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  CHECK(out == sentinel);

  /* NULL params means defaults; a plain run. */
  EXPECT_STATUS(generate_text(m, "the rate", &p, NULL, NULL, NULL, &out), FINLLM_OK);
  size_t n = 0;
  finllm_generation_tokens(out, &n);
  CHECK(n == 8);
  CHECK(finllm_generation_finish_reason(out) == FINLLM_FINISH_LENGTH);
  CHECK(finllm_generation_prompt_tokens(out) > 0);
  finllm_generation_free(out);

  /* The callback stops generation. */
  int count = 0;
  EXPECT_STATUS(generate_text(m, "the rate", &p, stop_after_three, &count, NULL, &out), FINLLM_OK);
  finllm_generation_tokens(out, &n);
  CHECK(count == 3 && n == 3);
  CHECK(finllm_generation_finish_reason(out) == FINLLM_FINISH_CANCELLED);
  finllm_generation_free(out);

  /* Cancellation from another thread. */
  finllm_cancel *cancel = finllm_cancel_new();
  struct cancel_job job = {cancel};
  pthread_t t;
  p.max_tokens = 200;
  pthread_create(&t, NULL, trigger_later, &job);
  EXPECT_STATUS(generate_text(m, "the rate", &p, slow_callback, NULL, cancel, &out), FINLLM_OK);
  pthread_join(t, NULL);
  finllm_generation_tokens(out, &n);
  CHECK(finllm_generation_finish_reason(out) == FINLLM_FINISH_CANCELLED);
  CHECK(n < 200);
  finllm_generation_free(out);
  finllm_cancel_free(cancel);

  /* Chat. */
  finllm_chat_message msgs[2] = {{"system", "terse"}, {"user", "rate?"}};
  p.max_tokens = 4;
  EXPECT_STATUS(chat(m, msgs, 2, &p, NULL, NULL, NULL, &out), FINLLM_OK);
  finllm_generation_free(out);
  finllm_chat_message broken[1] = {{NULL, "x"}};
  EXPECT_STATUS(chat(m, broken, 1, &p, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(chat(m, NULL, 1, &p, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(chat(m, msgs, 0, &p, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
}

/* ---- compliance ------------------------------------------------------------------------------ */

static char tmpdir[64];

static const char *tmp_path(char *buf, size_t len, const char *name) {
  snprintf(buf, len, "%s/%s", tmpdir, name);
  return buf;
}

static int write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  size_t n = strlen(text);
  int ok = fwrite(text, 1, n, f) == n;
  return fclose(f) == 0 && ok;
}

static void test_status_names(void) {
  CHECK(strcmp(finllm_status_name(FINLLM_ERROR_POLICY), "FINLLM_ERROR_POLICY") == 0);
  CHECK(strcmp(finllm_status_name(FINLLM_ERROR_AUDIT), "FINLLM_ERROR_AUDIT") == 0);
  CHECK(strcmp(finllm_status_name(FINLLM_ERROR_AUDIT_POISONED), "FINLLM_ERROR_AUDIT_POISONED") == 0);
  /* Codes are stable: new ones were appended. */
  CHECK(FINLLM_ERROR_OTHER == 14 && FINLLM_ERROR_POLICY == 15 && FINLLM_ERROR_AUDIT == 16 &&
        FINLLM_ERROR_AUDIT_POISONED == 17);
}

static void test_pii_mask(void) {
  const char *text = "身份证号11010519491231002X";
  const char *want = "身份证号<ID_1>";
  char buf[64];
  size_t needed = 0;
  EXPECT_STATUS(finllm_pii_mask(text, false, buf, sizeof buf, &needed), FINLLM_OK);
  CHECK(strcmp(buf, want) == 0);
  CHECK(needed == strlen(want) + 1);
  EXPECT_STATUS(finllm_pii_mask(text, true, buf, sizeof buf, &needed), FINLLM_OK);
  CHECK(strcmp(buf, "身份证号[ID]") == 0);
  CHECK(needed == strlen("身份证号[ID]") + 1);
  /* No personal data: the text comes back as is. */
  EXPECT_STATUS(finllm_pii_mask("rates rose 25bp", false, buf, sizeof buf, &needed), FINLLM_OK);
  CHECK(strcmp(buf, "rates rose 25bp") == 0);

  /* Too small (or no buffer): the needed size is reported, the buffer untouched. */
  char small[8];
  memset(small, 'x', sizeof small);
  needed = 0;
  EXPECT_STATUS(finllm_pii_mask(text, false, small, sizeof small, &needed), FINLLM_ERROR_BUFFER_TOO_SMALL);
  CHECK(needed == strlen(want) + 1);
  CHECK(small[0] == 'x');
  needed = 0;
  EXPECT_STATUS(finllm_pii_mask(text, false, NULL, 0, &needed), FINLLM_ERROR_BUFFER_TOO_SMALL);
  CHECK(needed == strlen(want) + 1);

  needed = 12345;
  EXPECT_STATUS(finllm_pii_mask(NULL, false, buf, sizeof buf, &needed), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_pii_mask(text, false, buf, sizeof buf, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_pii_mask("\xe8\xba", false, buf, sizeof buf, &needed), FINLLM_ERROR_INVALID_UTF8);
  CHECK(needed == 12345);
}

static void test_policy(void) {
  finllm_policy *sentinel = (finllm_policy *)0x1, *out = sentinel;
  char path[128];
  EXPECT_STATUS(finllm_policy_load(NULL, &out), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_policy_load("default", NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_policy_load("bad\xff.toml", &out), FINLLM_ERROR_INVALID_UTF8);
  EXPECT_STATUS(finllm_policy_load("/nonexistent/policy.toml", &out), FINLLM_ERROR_IO);
  tmp_path(path, sizeof path, "broken.toml");
  CHECK(write_file(path, "name = \"broken\"\n[[rules]\nid = \n"));
  EXPECT_STATUS(finllm_policy_load(path, &out), FINLLM_ERROR_POLICY);
  CHECK(last_error_len() > 1);
  CHECK(write_file(path, "name = \"t\"\n[[rules]]\nid = \"t.x\"\ncategory = \"Not Snake\"\naction = \"block\"\n"
                         "keywords = [\"x\"]\n"));
  EXPECT_STATUS(finllm_policy_load(path, &out), FINLLM_ERROR_POLICY);
  CHECK(write_file(path, "name = \"t\"\n[[rules]]\nid = \"t.x\"\ncategory = \"insider_trading\"\n"
                         "action = \"block\"\nregex = \"(unclosed\"\nmax_len = 10\n"));
  EXPECT_STATUS(finllm_policy_load(path, &out), FINLLM_ERROR_POLICY);
  unlink(path);
  CHECK(out == sentinel);
  finllm_policy_free(NULL);

  finllm_policy *policy = NULL;
  EXPECT_STATUS(finllm_policy_load("default", &policy), FINLLM_OK);
  if (!policy) return;
  finllm_verdict v = FINLLM_VERDICT_ALLOW;
  char rule[128];
  size_t needed = 0;
  EXPECT_STATUS(finllm_policy_check(policy, "guaranteed returns", &v, rule, sizeof rule, &needed), FINLLM_OK);
  CHECK(v == FINLLM_VERDICT_BLOCK);
  CHECK(strcmp(rule, "en.guaranteed_return.keywords") == 0);
  CHECK(needed == strlen(rule) + 1);
  /* Only the verdict. */
  v = FINLLM_VERDICT_ALLOW;
  EXPECT_STATUS(finllm_policy_check(policy, "This fund offers guaranteed returns.", &v, NULL, 0, NULL), FINLLM_OK);
  CHECK(v == FINLLM_VERDICT_BLOCK);
  /* Compliant wording. */
  EXPECT_STATUS(finllm_policy_check(policy, "There are no guaranteed returns.", &v, rule, sizeof rule, &needed),
                FINLLM_OK);
  CHECK(v != FINLLM_VERDICT_BLOCK);
  EXPECT_STATUS(finllm_policy_check(policy, "The bond pays a coupon.", &v, rule, sizeof rule, &needed), FINLLM_OK);
  CHECK(v == FINLLM_VERDICT_ALLOW);
  CHECK(strcmp(rule, "") == 0 && needed == 1);

  /* The rule id does not fit: the size is reported, the verdict untouched. */
  char small[4];
  v = FINLLM_VERDICT_FLAG;
  needed = 0;
  EXPECT_STATUS(finllm_policy_check(policy, "guaranteed returns", &v, small, sizeof small, &needed),
                FINLLM_ERROR_BUFFER_TOO_SMALL);
  CHECK(needed == strlen("en.guaranteed_return.keywords") + 1);
  CHECK(v == FINLLM_VERDICT_FLAG);

  EXPECT_STATUS(finllm_policy_check(NULL, "x", &v, NULL, 0, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_policy_check(policy, NULL, &v, NULL, 0, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_policy_check(policy, "x", NULL, NULL, 0, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_policy_check(policy, "guaranteed \xff", &v, NULL, 0, NULL), FINLLM_ERROR_INVALID_UTF8);
  CHECK(v == FINLLM_VERDICT_FLAG);
  finllm_policy_free(policy);
}

static void test_guard_new_errors(void) {
  char path[128];
  finllm_guard *sentinel = (finllm_guard *)0x1, *out = sentinel;
  finllm_guard_params p = finllm_guard_default_params();
  CHECK(!p.mask_pii && !p.unmask_output && p.policy == NULL && p.audit_log_path == NULL);
  CHECK(p.audit_fsync == FINLLM_FSYNC_GROUP_COMMIT && p.audit_max_file_bytes >= 4096 && p.drift_vocab_size == 0);
  EXPECT_STATUS(finllm_guard_new(&p, NULL), FINLLM_ERROR_NULL_POINTER);
  finllm_guard_params bad = p;
  bad.struct_size = 8;
  EXPECT_STATUS(finllm_guard_new(&bad, &out), FINLLM_ERROR_STRUCT_SIZE);
  bad = p;
  bad.audit_fsync = 7;
  EXPECT_STATUS(finllm_guard_new(&bad, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  bad = p;
  bad.audit_log_path = "audit\xff.log";
  EXPECT_STATUS(finllm_guard_new(&bad, &out), FINLLM_ERROR_INVALID_UTF8);
  bad = p;
  bad.audit_log_path = "/nonexistent-finllm-dir/sub/audit.log";
  EXPECT_STATUS(finllm_guard_new(&bad, &out), FINLLM_ERROR_IO);
  bad = p;
  bad.audit_log_path = tmp_path(path, sizeof path, "never.log");
  bad.audit_hmac_key_len = 32;
  EXPECT_STATUS(finllm_guard_new(&bad, &out), FINLLM_ERROR_NULL_POINTER);
  bad.audit_hmac_key_len = 0;
  bad.audit_max_file_bytes = 100;
  EXPECT_STATUS(finllm_guard_new(&bad, &out), FINLLM_ERROR_AUDIT);
  CHECK(access(path, F_OK) != 0); /* nothing was created */
  bad = p;
  bad.drift_vocab_size = 100;
  bad.drift_window_tokens = 0;
  EXPECT_STATUS(finllm_guard_new(&bad, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  bad.drift_window_tokens = 64;
  bad.drift_smoothing = -1.0;
  EXPECT_STATUS(finllm_guard_new(&bad, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  CHECK(out == sentinel);
  finllm_guard_free(NULL);

  /* A log that is not an audit log does not open. */
  tmp_path(path, sizeof path, "not-a-log.log");
  CHECK(write_file(path, "this is not an audit log, it is a text file of some length\n"));
  bad = p;
  bad.audit_log_path = path;
  EXPECT_STATUS(finllm_guard_new(&bad, &out), FINLLM_ERROR_AUDIT);
  CHECK(out == sentinel);
  char back[128] = "";
  FILE *f = fopen(path, "rb");
  if (f) {
    CHECK(fgets(back, sizeof back, f) != NULL);
    fclose(f);
  }
  CHECK(strcmp(back, "this is not an audit log, it is a text file of some length\n") == 0); /* not "repaired" */
  unlink(path);
}

static void test_unguarded_accessors(const finllm_model *m) {
  finllm_generate_params p = finllm_generate_default_params();
  p.max_tokens = 2;
  finllm_generation *out = NULL;
  EXPECT_STATUS(generate_text(m, "the rate", &p, NULL, NULL, NULL, &out), FINLLM_OK);
  size_t len = 99;
  CHECK(strcmp(finllm_generation_request_id(out), "") == 0);
  CHECK(strcmp(finllm_generation_masked_prompt(out, &len), "") == 0 && len == 0);
  CHECK(finllm_generation_pii_entities(out) == 0);
  CHECK(finllm_generation_verdict(out) == FINLLM_VERDICT_ALLOW);
  CHECK(strcmp(finllm_generation_policy_rule(out), "") == 0);
  CHECK(finllm_generation_audit_seq(out) == 0);
  CHECK(strcmp(finllm_generation_audit_hash(out), "") == 0);
  double kl = 7.0;
  CHECK(!finllm_generation_drift(out, &kl, NULL) && kl == 7.0);
  finllm_generation_free(out);

  CHECK(finllm_generation_request_id(NULL) == NULL);
  CHECK(finllm_generation_masked_prompt(NULL, &len) == NULL);
  CHECK(finllm_generation_pii_entities(NULL) == 0);
  CHECK(finllm_generation_verdict(NULL) == FINLLM_VERDICT_ALLOW);
  CHECK(finllm_generation_policy_rule(NULL) == NULL);
  CHECK(finllm_generation_audit_seq(NULL) == 0);
  CHECK(finllm_generation_audit_hash(NULL) == NULL);
  CHECK(!finllm_generation_drift(NULL, NULL, NULL));
}

struct guarded_job {
  const finllm_guard *guard;
  const finllm_model *model;
  finllm_status status;
  uint64_t seq;
};

static void *guarded_thread(void *arg) {
  struct guarded_job *job = arg;
  finllm_generate_params p = finllm_generate_default_params();
  p.max_tokens = 3;
  finllm_generation *out = NULL;
  job->status = generate_guarded(job->guard, job->model, "the rate", &p, NULL, NULL, NULL, NULL, &out);
  job->seq = finllm_generation_audit_seq(out);
  finllm_generation_free(out);
  return NULL;
}

static void verify_log(const char *log, const finllm_audit_verify_params *vp, uint64_t want_records,
                       uint64_t want_issues) {
  uint64_t records = 999, issues = 999, first = 999;
  EXPECT_STATUS(finllm_audit_verify(log, vp, &records, &issues, &first), FINLLM_OK);
  CHECK(records == want_records);
  CHECK(issues == want_issues);
  CHECK((issues == 0) == (first == 0));
}

static void test_guarded(const finllm_model *m) {
  char log[128];
  tmp_path(log, sizeof log, "audit.log");
  finllm_guard_params gp = finllm_guard_default_params();
  gp.mask_pii = true;
  gp.audit_log_path = log;
  gp.audit_fsync = FINLLM_FSYNC_EVERY_RECORD;
  gp.drift_vocab_size = finllm_model_vocab_size(m);
  gp.drift_window_tokens = 16;
  finllm_policy *policy = NULL;
  EXPECT_STATUS(finllm_policy_load("default", &policy), FINLLM_OK);
  gp.policy = policy;
  finllm_guard *guard = NULL;
  EXPECT_STATUS(finllm_guard_new(&gp, &guard), FINLLM_OK);
  finllm_policy_free(policy); /* the guard keeps its own reference */
  if (!guard) return;

  finllm_generate_params p = finllm_generate_default_params();
  p.max_tokens = 6;
  const char *sources[2] = {"doc-1", "doc-2"};
  finllm_request_params rp = finllm_request_default_params();
  rp.request_id = "r-1";
  rp.caller_id = "desk-7";
  rp.source_ids = sources;
  rp.n_source_ids = 2;
  finllm_generation *sentinel = (finllm_generation *)0x1, *out = sentinel;

  /* Error paths leave *out alone and write no record. */
  EXPECT_STATUS(generate_guarded(guard, NULL, "x", &p, &rp, NULL, NULL, NULL, &out),
                FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(generate_guarded(guard, m, NULL, &p, &rp, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  EXPECT_STATUS(generate_guarded(guard, m, "x", &p, &rp, NULL, NULL, NULL, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(generate_guarded(guard, m, "\xc3\x28", &p, &rp, NULL, NULL, NULL, &out),
                FINLLM_ERROR_INVALID_UTF8);
  finllm_request_params bad = rp;
  bad.struct_size = 4;
  EXPECT_STATUS(generate_guarded(guard, m, "x", &p, &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_STRUCT_SIZE);
  bad = rp;
  bad.source_ids = NULL;
  EXPECT_STATUS(generate_guarded(guard, m, "x", &p, &bad, NULL, NULL, NULL, &out),
                FINLLM_ERROR_NULL_POINTER);
  const char *bad_sources[2] = {"doc-1", NULL};
  bad.source_ids = bad_sources;
  EXPECT_STATUS(generate_guarded(guard, m, "x", &p, &bad, NULL, NULL, NULL, &out),
                FINLLM_ERROR_NULL_POINTER);
  bad = rp;
  bad.caller_id = "desk\xff";
  EXPECT_STATUS(generate_guarded(guard, m, "x", &p, &bad, NULL, NULL, NULL, &out),
                FINLLM_ERROR_INVALID_UTF8);
  CHECK(out == sentinel);

  /* Two audited requests: records 1 and 2, the prompt masked before the model sees it. */
  EXPECT_STATUS(generate_guarded(guard, m, "客户身份证号11010519491231002X", &p, &rp, NULL, NULL, NULL, &out),
                FINLLM_OK);
  if (out == sentinel) return;
  size_t len = 0;
  CHECK(strcmp(finllm_generation_masked_prompt(out, &len), "客户身份证号<ID_1>") == 0);
  CHECK(len == strlen("客户身份证号<ID_1>"));
  CHECK(finllm_generation_pii_entities(out) == 1);
  CHECK(strcmp(finllm_generation_request_id(out), "r-1") == 0);
  CHECK(finllm_generation_audit_seq(out) == 1);
  CHECK(strlen(finllm_generation_audit_hash(out)) == 64);
  size_t n = 0;
  finllm_generation_tokens(out, &n);
  CHECK(n > 0);
  double kl = -1.0;
  bool drifting = true;
  CHECK(finllm_generation_drift(out, &kl, &drifting));
  CHECK(kl != kl || kl >= 0.0); /* NaN until both windows hold tokens */
  finllm_generation_free(out);

  int count = 0;
  EXPECT_STATUS(generate_guarded(guard, m, "the rate", &p, NULL, stop_after_three, &count, NULL, &out),
                FINLLM_OK);
  CHECK(count == 3);
  CHECK(finllm_generation_finish_reason(out) == FINLLM_FINISH_CANCELLED);
  /* Streamed (a callback): an opened record (2) before the first token, the closing one (3). */
  CHECK(finllm_generation_audit_seq(out) == 3);
  CHECK(strncmp(finllm_generation_request_id(out), "req-", 4) == 0); /* made up */
  CHECK(strcmp(finllm_generation_masked_prompt(out, NULL), "the rate") == 0);
  char head[65];
  snprintf(head, sizeof head, "%s", finllm_generation_audit_hash(out));
  finllm_generation_free(out);

  verify_log(log, NULL, 3, 0);
  finllm_audit_verify_params vp = finllm_audit_verify_default_params();
  vp.expected_head_seq = 3;
  vp.expected_head_hash = head;
  verify_log(log, &vp, 3, 0);
  vp.expected_head_seq = 4; /* a receipt the log does not reach: its end was cut off */
  uint64_t issues = 0;
  EXPECT_STATUS(finllm_audit_verify(log, &vp, NULL, &issues, NULL), FINLLM_OK);
  CHECK(issues > 0);

  /* A request the core refuses fails, and is audited as such. */
  finllm_generate_params badp = p;
  badp.temperature = -1.0f;
  out = sentinel;
  EXPECT_STATUS(generate_guarded(guard, m, "x", &badp, &rp, NULL, NULL, NULL, &out),
                FINLLM_ERROR_INVALID_ARGUMENT);
  CHECK(out == sentinel);
  verify_log(log, NULL, 4, 0);

  /* Chat through the guard: every message masked. */
  finllm_chat_message msgs[2] = {{"system", "terse"}, {"user", "my phone is 13800138000"}};
  EXPECT_STATUS(chat_guarded(guard, m, msgs, 2, &p, &rp, NULL, NULL, NULL, &out), FINLLM_OK);
  CHECK(strstr(finllm_generation_masked_prompt(out, NULL), "<PHONE_1>") != NULL);
  CHECK(strstr(finllm_generation_masked_prompt(out, NULL), "13800138000") == NULL);
  CHECK(finllm_generation_audit_seq(out) == 5);
  finllm_generation_free(out);
  out = sentinel;
  EXPECT_STATUS(chat_guarded(guard, m, NULL, 1, &p, &rp, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  /* Token ids cannot be screened for personal data: refused by a guard that masks it. */
  uint32_t ids[2] = {1, 2};
  finllm_request_params by_ids = rp;
  by_ids.ids = ids;
  by_ids.n_ids = 2;
  by_ids.generate = &p;
  by_ids.guard = guard;
  EXPECT_STATUS(finllm_generate(m, &by_ids, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  finllm_chat_message broken[1] = {{"user", "\xff"}};
  EXPECT_STATUS(chat_guarded(guard, m, broken, 1, &p, &rp, NULL, NULL, NULL, &out),
                FINLLM_ERROR_INVALID_UTF8);
  CHECK(out == sentinel);

  /* Cancellation from another thread works as in finllm_generate. */
  finllm_cancel *cancel = finllm_cancel_new();
  struct cancel_job cj = {cancel};
  pthread_t t;
  p.max_tokens = 200;
  pthread_create(&t, NULL, trigger_later, &cj);
  EXPECT_STATUS(generate_guarded(guard, m, "the rate", &p, NULL, slow_callback, NULL, cancel, &out), FINLLM_OK);
  pthread_join(t, NULL);
  finllm_generation_tokens(out, &n);
  CHECK(finllm_generation_finish_reason(out) == FINLLM_FINISH_CANCELLED && n < 200);
  CHECK(finllm_generation_audit_seq(out) == 7); /* streamed: opened 6, closed 7 */
  finllm_generation_free(out);
  finllm_cancel_free(cancel);

  /* One guard, four threads: every record lands in one intact chain. */
  struct guarded_job jobs[4];
  pthread_t threads[4];
  for (int i = 0; i < 4; i++) {
    jobs[i] = (struct guarded_job){guard, m, FINLLM_ERROR_OTHER, 0};
    pthread_create(&threads[i], NULL, guarded_thread, &jobs[i]);
  }
  uint64_t seen = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(threads[i], NULL);
    CHECK(jobs[i].status == FINLLM_OK);
    CHECK(jobs[i].seq >= 8 && jobs[i].seq <= 11);
    if (jobs[i].seq >= 8 && jobs[i].seq <= 11) seen |= 1u << (jobs[i].seq - 8);
  }
  CHECK(seen == 0xF);
  CHECK(finllm_guard_audit_truncated_bytes(guard) == 0);
  CHECK(finllm_guard_audit_truncated_bytes(NULL) == 0);
  finllm_guard_free(guard);
  verify_log(log, NULL, 11, 0);

  /* Reopening continues the chain. */
  gp.policy = NULL;
  EXPECT_STATUS(finllm_guard_new(&gp, &guard), FINLLM_OK);
  p.max_tokens = 2;
  EXPECT_STATUS(generate_guarded(guard, m, "the rate", &p, NULL, NULL, NULL, NULL, &out), FINLLM_OK);
  CHECK(finllm_generation_audit_seq(out) == 12);
  CHECK(finllm_generation_verdict(out) == FINLLM_VERDICT_ALLOW); /* no policy */
  finllm_generation_free(out);
  finllm_guard_free(guard);
  verify_log(log, NULL, 12, 0);

  /* A flipped byte in the last record is found, at that record. */
  FILE *f = fopen(log, "r+b");
  CHECK(f != NULL);
  if (f) {
    fseek(f, -50, SEEK_END);
    int c = fgetc(f);
    fseek(f, -50, SEEK_END);
    fputc(c ^ 0x20, f);
    fclose(f);
    uint64_t first = 0;
    EXPECT_STATUS(finllm_audit_verify(log, NULL, NULL, &issues, &first), FINLLM_OK);
    CHECK(issues > 0 && first == 12);
  }
  unlink(log);

  /* An HMAC-chained log verifies only with its key. */
  uint8_t key[32], wrong[32];
  for (size_t i = 0; i < sizeof key; i++) {
    key[i] = (uint8_t)(i * 7 + 1);
    wrong[i] = (uint8_t)(i * 7 + 2);
  }
  tmp_path(log, sizeof log, "hmac.log");
  gp = finllm_guard_default_params();
  gp.audit_log_path = log;
  gp.audit_hmac_key = key;
  gp.audit_hmac_key_len = sizeof key;
  EXPECT_STATUS(finllm_guard_new(&gp, &guard), FINLLM_OK);
  EXPECT_STATUS(generate_guarded(guard, m, "the rate", &p, NULL, NULL, NULL, NULL, &out), FINLLM_OK);
  CHECK(finllm_generation_audit_seq(out) == 1);
  finllm_generation_free(out);
  finllm_guard_free(guard);
  vp = finllm_audit_verify_default_params();
  vp.hmac_key = key;
  vp.hmac_key_len = sizeof key;
  verify_log(log, &vp, 1, 0);
  EXPECT_STATUS(finllm_audit_verify(log, NULL, NULL, &issues, NULL), FINLLM_OK);
  CHECK(issues > 0); /* key required */
  vp.hmac_key = wrong;
  EXPECT_STATUS(finllm_audit_verify(log, &vp, NULL, &issues, NULL), FINLLM_OK);
  CHECK(issues > 0);
  unlink(log);

  /* Checkpoints: none with audit_checkpoint_every = 0; with 2, cutting whole records off the end
     of the log is found by verify and refused by the next open. */
  tmp_path(log, sizeof log, "ckpt.log");
  char ckpt[160];
  snprintf(ckpt, sizeof ckpt, "%s.checkpoints", log);
  gp = finllm_guard_default_params();
  CHECK(gp.audit_checkpoint_every == 64);
  gp.audit_log_path = log;
  gp.audit_checkpoint_every = 0;
  EXPECT_STATUS(finllm_guard_new(&gp, &guard), FINLLM_OK);
  for (int i = 0; i < 2; i++) {
    EXPECT_STATUS(generate_guarded(guard, m, "the rate", &p, NULL, NULL, NULL, NULL, &out), FINLLM_OK);
    finllm_generation_free(out);
  }
  finllm_guard_free(guard);
  CHECK(access(ckpt, F_OK) != 0);
  FILE *lf = fopen(log, "rb");
  CHECK(lf != NULL);
  long two_records = 0;
  if (lf) {
    fseek(lf, 0, SEEK_END);
    two_records = ftell(lf);
    fclose(lf);
  }
  gp.audit_checkpoint_every = 2;
  EXPECT_STATUS(finllm_guard_new(&gp, &guard), FINLLM_OK);
  for (int i = 0; i < 2; i++) {
    EXPECT_STATUS(generate_guarded(guard, m, "the rate", &p, NULL, NULL, NULL, NULL, &out), FINLLM_OK);
    CHECK(finllm_generation_audit_seq(out) == (uint64_t)(3 + i));
    finllm_generation_free(out);
  }
  finllm_guard_free(guard);
  CHECK(access(ckpt, F_OK) == 0);
  verify_log(log, NULL, 4, 0);
  CHECK(two_records > 0 && truncate(log, two_records) == 0);
  uint64_t cut_first = 0;
  EXPECT_STATUS(finllm_audit_verify(log, NULL, NULL, &issues, &cut_first), FINLLM_OK);
  CHECK(issues > 0);
  guard = NULL;
  EXPECT_STATUS(finllm_guard_new(&gp, &guard), FINLLM_ERROR_AUDIT);
  CHECK(guard == NULL);
  unlink(log);
  unlink(ckpt);

  /* Verification's own error paths leave the out-values alone. */
  uint64_t records = 77;
  EXPECT_STATUS(finllm_audit_verify(NULL, NULL, &records, NULL, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_audit_verify("bad\xff.log", NULL, &records, NULL, NULL), FINLLM_ERROR_INVALID_UTF8);
  EXPECT_STATUS(finllm_audit_verify(log, NULL, &records, NULL, NULL), FINLLM_ERROR_AUDIT); /* no such log */
  vp = finllm_audit_verify_default_params();
  vp.struct_size = 4;
  EXPECT_STATUS(finllm_audit_verify(log, &vp, &records, NULL, NULL), FINLLM_ERROR_STRUCT_SIZE);
  vp = finllm_audit_verify_default_params();
  vp.hmac_key_len = 32;
  EXPECT_STATUS(finllm_audit_verify(log, &vp, &records, NULL, NULL), FINLLM_ERROR_NULL_POINTER);
  vp = finllm_audit_verify_default_params();
  vp.expected_head_hash = "\xff";
  EXPECT_STATUS(finllm_audit_verify(log, &vp, &records, NULL, NULL), FINLLM_ERROR_INVALID_UTF8);
  CHECK(records == 77);
}

static int collect_text(const char *text, size_t len, uint32_t id, void *user_data) {
  (void)id;
  char *buf = user_data;
  size_t have = strlen(buf);
  if (have + len < 4096) {
    memcpy(buf + have, text, len);
    buf[have + len] = 0;
  }
  return 0;
}

/* A phrase the model is about to emit is blocked before any of it reaches the caller. */
static void test_guarded_block(const finllm_model *m) {
  finllm_generate_params p = finllm_generate_default_params();
  p.max_tokens = 16;
  finllm_generation *out = NULL;
  EXPECT_STATUS(generate_text(m, "the rate", &p, NULL, NULL, NULL, &out), FINLLM_OK);
  if (!out) return;
  char plain[4096];
  snprintf(plain, sizeof plain, "%s", finllm_generation_text(out, NULL));
  finllm_generation_free(out);
  /* The first ASCII letter or digit the model says; what comes before it has none. */
  size_t cut = 0;
  while (plain[cut] && !((plain[cut] >= 'a' && plain[cut] <= 'z') || (plain[cut] >= 'A' && plain[cut] <= 'Z') ||
                         (plain[cut] >= '0' && plain[cut] <= '9')))
    cut++;
  checks++;
  if (!plain[cut]) {
    failures++;
    fprintf(stderr, "%s:%d: the tiny model said no ASCII letter to block\n", __FILE__, __LINE__);
    return;
  }
  char path[128], toml[256];
  tmp_path(path, sizeof path, "block.toml");
  snprintf(toml, sizeof toml,
           "name = \"capi\"\n[[rules]]\nid = \"t.block\"\ncategory = \"insider_trading\"\naction = \"block\"\n"
           "keywords = [\"%c\"]\n",
           plain[cut]);
  CHECK(write_file(path, toml));
  finllm_policy *policy = NULL;
  EXPECT_STATUS(finllm_policy_load(path, &policy), FINLLM_OK);
  unlink(path);
  finllm_guard_params gp = finllm_guard_default_params();
  gp.policy = policy;
  finllm_guard *guard = NULL;
  EXPECT_STATUS(finllm_guard_new(&gp, &guard), FINLLM_OK);
  finllm_policy_free(policy);
  if (!guard) return;
  char streamed[4096] = "";
  EXPECT_STATUS(generate_guarded(guard, m, "the rate", &p, NULL, collect_text, streamed, NULL, &out),
                FINLLM_OK);
  if (out) {
    size_t len = 0;
    const char *text = finllm_generation_text(out, &len);
    CHECK(finllm_generation_finish_reason(out) == FINLLM_FINISH_BLOCKED);
    CHECK(finllm_generation_verdict(out) == FINLLM_VERDICT_BLOCK);
    CHECK(strcmp(finllm_generation_policy_rule(out), "t.block") == 0);
    CHECK(len == cut && memcmp(text, plain, cut) == 0);
    CHECK(strcmp(streamed, text) == 0); /* the callback saw exactly the released text */
    CHECK(finllm_generation_audit_seq(out) == 0);
    finllm_generation_free(out);
  }
  finllm_guard_free(guard);
}

/* Fail-closed: a device as the audit log (/dev/full, whose every write fails; /dev/null, which
 * would swallow every record) is refused when the guard is made, so no answer can go out
 * unrecorded. (Writes that fail later poison the log: tested in Rust with injected faults.) */
static void test_guarded_fail_closed(void) {
  const char *devices[] = {"/dev/full", "/dev/null"};
  for (size_t i = 0; i < sizeof devices / sizeof *devices; i++) {
    finllm_guard_params gp = finllm_guard_default_params();
    gp.audit_log_path = devices[i];
    finllm_guard *guard = NULL;
    EXPECT_STATUS(finllm_guard_new(&gp, &guard), FINLLM_ERROR_AUDIT);
    CHECK(guard == NULL);
    char msg[512];
    finllm_last_error_message(msg, sizeof msg);
    CHECK(strstr(msg, "not a regular file") != NULL);
  }
}

/* ---- engine ------------------------------------------------------------------------------ */

static const char *ENGINE_PROMPTS[] = {"the rate", "the bond yield", "a rate of interest", "the credit", "rate"};
#define N_ENGINE_PROMPTS 5

struct engine_job {
  const finllm_engine *engine;
  const char *prompt;
  finllm_status status;
  char text[512];
};

static void *engine_thread(void *arg) {
  struct engine_job *job = arg;
  finllm_generate_params g = finllm_generate_default_params();
  g.max_tokens = 12;
  finllm_request_params sp = finllm_request_default_params();
  sp.prompt = job->prompt;
  sp.generate = &g;
  sp.wait_ms = 10000;
  finllm_generation *out = NULL;
  job->status = finllm_engine_generate(job->engine, &sp, NULL, NULL, NULL, &out);
  if (out) {
    snprintf(job->text, sizeof job->text, "%s", finllm_generation_text(out, NULL));
    finllm_generation_free(out);
  }
  return NULL;
}

/* Random submits, pulls, cancels, frees and deadlines from several threads: every call returns a
   status the contract allows, and ASan sees no leak or bad access. */
struct soak_job {
  const finllm_engine *engine;
  unsigned seed;
  int bad;
};

static void *soak_thread(void *arg) {
  struct soak_job *job = arg;
  for (int i = 0; i < 12; i++) {
    unsigned r = (job->seed = job->seed * 1103515245u + 12345u) >> 8;
    finllm_generate_params g = finllm_generate_default_params();
    g.max_tokens = 1 + r % 30;
    finllm_request_params sp = finllm_request_default_params();
    sp.prompt = ENGINE_PROMPTS[r % N_ENGINE_PROMPTS];
    sp.generate = &g;
    sp.deadline_ms = (r % 5 == 0) ? 1 + r % 10 : 0;
    sp.wait_ms = (r % 3 == 0) ? 0 : 50;
    finllm_request *req = NULL;
    finllm_status st = finllm_engine_submit(job->engine, &sp, &req);
    if (st == FINLLM_ERROR_BUSY) continue;
    if (st != FINLLM_OK) {
      job->bad++;
      continue;
    }
    finllm_token_event ev;
    int pulls = (int)(r % 4);
    for (int k = 0; k < pulls; k++) {
      st = finllm_request_next(req, 0, &ev);
      if (st != FINLLM_OK || ev.done) break;
    }
    if (st != FINLLM_OK && st != FINLLM_ERROR_DEADLINE_EXCEEDED) job->bad++;
    if (r % 7 == 0) finllm_request_cancel(req);
    if (r % 2 == 0) {
      finllm_generation *out = NULL;
      st = finllm_request_wait(req, &out);
      if (st != FINLLM_OK && st != FINLLM_ERROR_DEADLINE_EXCEEDED && st != FINLLM_ERROR_ENGINE) job->bad++;
      finllm_generation_free(out);
    }
    finllm_request_free(req); /* cancels an unfinished request */
  }
  return NULL;
}

static void test_engine(const finllm_model *m) {
  finllm_engine_params ep = finllm_engine_default_params();
  CHECK(ep.max_running == 16 && ep.step_tokens == 128 && ep.kv_budget_bytes == (1ull << 30));
  ep.max_running = 4;
  ep.step_tokens = 8; /* prompts are prefilled in chunks */
  finllm_engine *engine = NULL;
  EXPECT_STATUS(finllm_engine_new(m, &ep, &engine), FINLLM_OK);
  if (!engine) return;

  /* Threads through the engine get what finllm_generate gives each prompt alone. */
  struct engine_job jobs[N_ENGINE_PROMPTS];
  pthread_t threads[N_ENGINE_PROMPTS];
  for (int i = 0; i < N_ENGINE_PROMPTS; i++) {
    jobs[i] = (struct engine_job){engine, ENGINE_PROMPTS[i], FINLLM_ERROR_OTHER, {0}};
    pthread_create(&threads[i], NULL, engine_thread, &jobs[i]);
  }
  for (int i = 0; i < N_ENGINE_PROMPTS; i++) {
    pthread_join(threads[i], NULL);
    CHECK(jobs[i].status == FINLLM_OK);
    finllm_generate_params g = finllm_generate_default_params();
    g.max_tokens = 12;
    finllm_generation *alone = NULL;
    EXPECT_STATUS(generate_text(m, ENGINE_PROMPTS[i], &g, NULL, NULL, NULL, &alone), FINLLM_OK);
    if (alone) CHECK(strcmp(finllm_generation_text(alone, NULL), jobs[i].text) == 0);
    finllm_generation_free(alone);
  }

  /* Pull-based: the pieces add up to the result's text; ids of every step are kept. */
  finllm_generate_params g = finllm_generate_default_params();
  g.max_tokens = 10;
  finllm_request_params sp = finllm_request_default_params();
  sp.prompt = "the rate";
  sp.generate = &g;
  finllm_request *req = NULL;
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, &req), FINLLM_OK);
  char pieces[512] = {0};
  size_t used = 0;
  int steps = 0;
  finllm_token_event ev;
  for (;;) {
    finllm_status st = finllm_request_next(req, 0, &ev);
    CHECK(st == FINLLM_OK);
    if (st != FINLLM_OK || ev.done) break;
    CHECK(strlen(ev.text) == ev.text_len);
    if (used + ev.text_len < sizeof pieces) {
      memcpy(pieces + used, ev.text, ev.text_len);
      used += ev.text_len;
    }
    steps++;
  }
  finllm_generation *whole = NULL;
  EXPECT_STATUS(finllm_request_wait(req, &whole), FINLLM_OK);
  if (whole) {
    CHECK(strcmp(finllm_generation_text(whole, NULL), pieces) == 0);
    finllm_generation_free(whole);
  }
  EXPECT_STATUS(finllm_request_next(req, 0, &ev), FINLLM_OK); /* ended: stays ended */
  CHECK(ev.done == 1);
  finllm_request_free(req);
  CHECK(steps > 0);

  /* A guarded request on the engine: the same tokens as on the model alone, and on record
   * (streamed through finllm_engine_submit: opened and closing records). */
  {
    char log[128];
    tmp_path(log, sizeof log, "engine-audit.log");
    finllm_guard_params gp = finllm_guard_default_params();
    gp.audit_log_path = log;
    finllm_guard *guard = NULL;
    EXPECT_STATUS(finllm_guard_new(&gp, &guard), FINLLM_OK);
    finllm_request_params gr = finllm_request_default_params();
    gr.prompt = ENGINE_PROMPTS[0];
    gr.generate = &g;
    gr.guard = guard;
    gr.request_id = "engine-1";
    finllm_generation *alone = NULL, *batched = NULL;
    EXPECT_STATUS(finllm_generate(m, &gr, NULL, NULL, NULL, &alone), FINLLM_OK);
    finllm_request *greq = NULL;
    EXPECT_STATUS(finllm_engine_submit(engine, &gr, &greq), FINLLM_OK);
    EXPECT_STATUS(finllm_request_wait(greq, &batched), FINLLM_OK);
    if (alone && batched) {
      size_t na = 0, nb = 0;
      const uint32_t *ta = finllm_generation_tokens(alone, &na), *tb = finllm_generation_tokens(batched, &nb);
      CHECK(na == nb && na > 0 && memcmp(ta, tb, na * sizeof *ta) == 0);
      CHECK(strcmp(finllm_generation_request_id(batched), "engine-1") == 0);
      CHECK(finllm_generation_audit_seq(alone) == 1);   /* one complete record */
      CHECK(finllm_generation_audit_seq(batched) == 3); /* opened 2, closed 3 */
    }
    finllm_generation_free(alone);
    finllm_generation_free(batched);
    finllm_request_free(greq);
    finllm_guard_free(guard);
    verify_log(log, NULL, 3, 0);
  }

  /* Token ids and chat messages are prompts too; exactly one kind per request. */
  uint32_t ids[2] = {5, 6};
  finllm_chat_message msg = {"user", "hi"};
  sp = finllm_request_default_params();
  sp.ids = ids;
  sp.n_ids = 2;
  sp.generate = &g;
  finllm_generation *out = NULL;
  EXPECT_STATUS(finllm_engine_generate(engine, &sp, NULL, NULL, NULL, &out), FINLLM_OK);
  finllm_generation_free(out);
  sp.prompt = "the rate"; /* and ids: two prompts */
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, &req), FINLLM_ERROR_INVALID_ARGUMENT);
  sp = finllm_request_default_params();
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, &req), FINLLM_ERROR_INVALID_ARGUMENT); /* none */
  sp.messages = &msg;
  sp.n_messages = 1;
  sp.generate = &g;
  out = NULL;
  finllm_status chat = finllm_engine_generate(engine, &sp, NULL, NULL, NULL, &out);
  CHECK(chat == FINLLM_OK || chat == FINLLM_ERROR_CHAT_TEMPLATE);
  finllm_generation_free(out);
  sp = finllm_request_default_params();
  sp.ids = NULL;
  sp.n_ids = 3;
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, &req), FINLLM_ERROR_NULL_POINTER);
  uint32_t out_of_range = 0xFFFFFFu;
  sp.ids = &out_of_range;
  sp.n_ids = 1;
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, &req), FINLLM_ERROR_INVALID_ARGUMENT);
  sp = finllm_request_default_params();
  sp.struct_size = 8;
  sp.prompt = "x";
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, &req), FINLLM_ERROR_STRUCT_SIZE);
  sp = finllm_request_default_params();
  sp.prompt = "\xc3\x28";
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, &req), FINLLM_ERROR_INVALID_UTF8);
  EXPECT_STATUS(finllm_engine_submit(NULL, &sp, &req), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_engine_submit(engine, NULL, &req), FINLLM_ERROR_NULL_POINTER);
  sp.prompt = "x";
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_request_next(NULL, 0, &ev), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_request_wait(NULL, &out), FINLLM_ERROR_NULL_POINTER);
  finllm_request_cancel(NULL);
  finllm_request_free(NULL);
  finllm_engine_free(NULL);

  /* A deadline that has passed before the first step: a typed error from the request. */
  sp = finllm_request_default_params();
  sp.prompt = "the rate";
  g.max_tokens = 100;
  sp.generate = &g;
  sp.deadline_ms = 1;
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, &req), FINLLM_OK);
  usleep(5000);
  finllm_status st = finllm_request_wait(req, &out);
  CHECK(st == FINLLM_ERROR_DEADLINE_EXCEEDED || st == FINLLM_OK); /* OK only if it ended first */
  if (st == FINLLM_OK) finllm_generation_free(out);
  finllm_request_free(req);

  /* Cancel from the handle: the request ends cancelled (or by itself, if it was quicker). */
  sp.deadline_ms = 0;
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, &req), FINLLM_OK);
  finllm_request_cancel(req);
  out = NULL;
  EXPECT_STATUS(finllm_request_wait(req, &out), FINLLM_OK);
  if (out) {
    finllm_finish_reason f = finllm_generation_finish_reason(out);
    CHECK(f == FINLLM_FINISH_CANCELLED || f == FINLLM_FINISH_EOS || f == FINLLM_FINISH_LENGTH);
    finllm_generation_free(out);
  }
  finllm_request_free(req);

  /* Metrics text: the caller-buffer convention. */
  size_t needed = 0;
  char small[8];
  EXPECT_STATUS(finllm_engine_metrics_text(engine, small, sizeof small, &needed), FINLLM_ERROR_BUFFER_TOO_SMALL);
  char *text = malloc(needed);
  EXPECT_STATUS(finllm_engine_metrics_text(engine, text, needed, &needed), FINLLM_OK);
  CHECK(strstr(text, "# TYPE finllm_engine_requests_submitted_total counter") != NULL);
  CHECK(strstr(text, "finllm_engine_time_to_first_token_seconds{quantile=\"0.99\"}") != NULL);
  free(text);

  /* Soak: 8 threads at once on a small queue. */
  struct soak_job soak[8];
  pthread_t st_threads[8];
  for (int i = 0; i < 8; i++) {
    soak[i] = (struct soak_job){engine, 17u * (unsigned)i + 1u, 0};
    pthread_create(&st_threads[i], NULL, soak_thread, &soak[i]);
  }
  for (int i = 0; i < 8; i++) {
    pthread_join(st_threads[i], NULL);
    CHECK(soak[i].bad == 0);
  }
  finllm_engine_free(engine);

  /* Engine options: typed errors. */
  ep = finllm_engine_default_params();
  ep.max_running = 0;
  EXPECT_STATUS(finllm_engine_new(m, &ep, &engine), FINLLM_ERROR_INVALID_ARGUMENT);
  ep = finllm_engine_default_params();
  ep.struct_size = 4;
  EXPECT_STATUS(finllm_engine_new(m, &ep, &engine), FINLLM_ERROR_STRUCT_SIZE);
  EXPECT_STATUS(finllm_engine_new(NULL, NULL, &engine), FINLLM_ERROR_NULL_POINTER);
  ep = finllm_engine_default_params();
  ep.kv_budget_tokens = 8;
  engine = NULL;
  EXPECT_STATUS(finllm_engine_new(m, &ep, &engine), FINLLM_OK);
  sp = finllm_request_default_params();
  sp.prompt = "the rate";
  g.max_tokens = 100;
  sp.generate = &g;
  EXPECT_STATUS(finllm_engine_submit(engine, &sp, &req), FINLLM_ERROR_REQUEST_TOO_LARGE);
  finllm_engine_free(engine);
}

/* The sentence embedder on all-MiniLM-L6-v2: unit vectors of 384 floats, the model card's
   similarities (the reference README's sanity check of its float64 implementation), and typed
   errors for a small buffer, NULL pointers and a directory that is not an embedder. */
static double dot384(const float *a, const float *b) {
  double s = 0;
  for (int i = 0; i < 384; i++) s += (double)a[i] * b[i];
  return s;
}

static void test_embedder(const char *dir) {
  finllm_embedder *e = NULL;
  EXPECT_STATUS(finllm_embedder_load(dir, 2, &e), FINLLM_OK);
  if (!e) return;
  CHECK(finllm_embedder_dim(e) == 384);
  CHECK(finllm_embedder_dim(NULL) == 0);
  const char *texts[] = {"That is a happy person", "That is a very happy person", "That is a happy dog",
                         "Today is a sunny day"};
  static float v[4 * 384];
  EXPECT_STATUS(finllm_embedder_embed(e, texts, 4, v, 4 * 384), FINLLM_OK);
  for (int i = 0; i < 4; i++) CHECK(fabs(dot384(v + 384 * i, v + 384 * i) - 1.0) < 1e-5);
  CHECK(fabs(dot384(v, v + 384) - 0.943) < 0.005);
  CHECK(fabs(dot384(v, v + 2 * 384) - 0.695) < 0.005);
  CHECK(fabs(dot384(v, v + 3 * 384) - 0.257) < 0.005);
  /* One text alone gives the same vector as in the batch. */
  static float one[384];
  EXPECT_STATUS(finllm_embedder_embed(e, texts + 1, 1, one, 384), FINLLM_OK);
  CHECK(fabs(dot384(one, v + 384) - 1.0) < 1e-6);
  EXPECT_STATUS(finllm_embedder_embed(e, texts, 4, v, 4 * 384 - 1), FINLLM_ERROR_INVALID_ARGUMENT);
  EXPECT_STATUS(finllm_embedder_embed(e, NULL, 2, v, 4 * 384), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_embedder_embed(NULL, texts, 1, v, 384), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_embedder_embed(e, texts, 0, NULL, 0), FINLLM_OK);
  const char *bad_utf8[] = {"\xff\xfe"};
  EXPECT_STATUS(finllm_embedder_embed(e, bad_utf8, 1, v, 384), FINLLM_ERROR_INVALID_UTF8);
  /* Quantized at load: the same vectors to within a thousandth of cosine. */
  finllm_embedder *q8 = NULL;
  EXPECT_STATUS(finllm_embedder_load_quantized(dir, 1, "q8_0", &q8), FINLLM_OK);
  if (q8) {
    static float q8v[384];
    EXPECT_STATUS(finllm_embedder_embed(q8, texts + 1, 1, q8v, 384), FINLLM_OK);
    CHECK(dot384(q8v, one) > 0.999 && dot384(q8v, one) < 1.0 + 1e-6);
    finllm_embedder_free(q8);
  }
  finllm_embedder *bad_q = NULL;
  EXPECT_STATUS(finllm_embedder_load_quantized(dir, 1, "q3_x", &bad_q), FINLLM_ERROR_INVALID_ARGUMENT);
  CHECK(bad_q == NULL);
  finllm_embedder_free(e);
  finllm_embedder_free(NULL);
  finllm_embedder *none = NULL;
  EXPECT_STATUS(finllm_embedder_load(tmpdir, 1, &none), FINLLM_ERROR_IO); /* no config.json */
  CHECK(none == NULL);
  EXPECT_STATUS(finllm_embedder_load(NULL, 1, &none), FINLLM_ERROR_NULL_POINTER);
}

/* A retrieval function standing for a bank's own search service: two passages, one the caller
 * may not see. Counts its calls in *user_data; fails when the query asks for 99 passages. */
static int desk_search(void *user_data, const finllm_query *q, finllm_passages *out) {
  int *calls = user_data;
  ++*calls;
  if (q->k == 99) return 7;
  CHECK(q->restricted == 1 && q->n_entitlements == 1 && strcmp(q->entitlements[0], "desk") == 0);
  CHECK(strcmp(q->text, "What is the desk VaR limit?") == 0);
  const char *desk[] = {"desk"}, *mna[] = {"m-and-a"};
  finllm_passage p = {0};
  p.source = "desk-notes.txt";
  p.text = "The desk VaR limit is 12 million dollars.";
  p.labels = desk;
  p.n_labels = 1;
  p.score = 0.9f;
  EXPECT_STATUS(finllm_passages_add(out, &p), FINLLM_OK);
  p.source = "secret.txt";
  p.text = "Merger code name is Falcon.";
  p.labels = mna;
  EXPECT_STATUS(finllm_passages_add(out, &p), FINLLM_OK);
  p.source = NULL;
  EXPECT_STATUS(finllm_passages_add(out, &p), FINLLM_ERROR_NULL_POINTER);
  return 0;
}

static void test_retrieval(const finllm_model *m, const char *embedder_dir) {
  finllm_embedder *e = NULL;
  EXPECT_STATUS(finllm_embedder_load(embedder_dir, 2, &e), FINLLM_OK);
  if (!e) return;
  char docs[128], path[160], idx[160];
  snprintf(docs, sizeof docs, "%s/docs", tmpdir);
  CHECK(mkdir(docs, 0700) == 0);
  snprintf(path, sizeof path, "%s/acme.md", docs);
  CHECK(write_file(path, "# Acme Bank Q3\n\nThe CET1 ratio was 14.2% at quarter end. Net interest margin was 2.41%.\n"));
  snprintf(path, sizeof path, "%s/fed.txt", docs);
  CHECK(write_file(path, "The committee held the policy rate at 4.25% by a vote of 6 to 3.\n"));
  snprintf(path, sizeof path, "%s/metadata.toml", docs);
  CHECK(write_file(path, "[files.\"acme.md\"]\nticker = \"ACMB\"\nlabels = [\"public\"]\n"
                         "[files.\"fed.txt\"]\nlabels = [\"research\"]\n"));
  finllm_index *index = NULL;
  EXPECT_STATUS(finllm_index_create(e, 0, 0, &index), FINLLM_OK);
  size_t failed = 99;
  EXPECT_STATUS(finllm_index_sync(index, docs, NULL, &failed), FINLLM_OK);
  CHECK(failed == 0 && finllm_index_len(index) == 2);

  /* Search, restricted to "public": only the Acme chunk, with its metadata. */
  finllm_query q = finllm_query_default();
  const char *pub[] = {"public"};
  q.text = "capital ratio";
  q.restricted = 1;
  q.entitlements = pub;
  q.n_entitlements = 1;
  finllm_passages *found = NULL;
  EXPECT_STATUS(finllm_index_search(index, &q, &found), FINLLM_OK);
  CHECK(finllm_passages_len(found) == 1);
  finllm_passage p;
  EXPECT_STATUS(finllm_passages_get(found, 0, &p), FINLLM_OK);
  CHECK(strcmp(p.source, "acme.md") == 0 && strcmp(p.ticker, "ACMB") == 0 && p.date == NULL);
  CHECK(p.n_labels == 1 && strcmp(p.labels[0], "public") == 0 && strstr(p.text, "14.2%") != NULL);
  EXPECT_STATUS(finllm_passages_get(found, 1, &p), FINLLM_ERROR_INVALID_ARGUMENT);
  finllm_passages_free(found);
  q.restricted = 0;
  q.date_from = "last week";
  EXPECT_STATUS(finllm_index_search(index, &q, &found), FINLLM_ERROR_INVALID_ARGUMENT);

  /* Save, reopen, and a damaged file. */
  snprintf(idx, sizeof idx, "%s/docs.idx", tmpdir);
  EXPECT_STATUS(finllm_index_save(index, idx), FINLLM_OK);
  finllm_index *back = NULL;
  EXPECT_STATUS(finllm_index_open(idx, e, &back), FINLLM_OK);
  CHECK(finllm_index_len(back) == 2);
  finllm_index_free(back);
  snprintf(path, sizeof path, "%s/bad.idx", tmpdir);
  CHECK(write_file(path, "FINLLMRX not really"));
  back = NULL;
  EXPECT_STATUS(finllm_index_open(path, e, &back), FINLLM_ERROR_INDEX_FILE);
  CHECK(back == NULL);
  unlink(path);
  unlink(idx);

  /* The same chunks in PostgreSQL + pgvector (scripts/test.sh starts a throwaway server on
   * loopback and exports its URL). */
  const char *pg_url = getenv("FINLLM_TEST_PG_URL");
  if (!pg_url) fprintf(stderr, "FINLLM_TEST_PG_URL is not set: eval \"$(python3 scripts/pg_server.py start)\"\n");
  CHECK(pg_url != NULL);
  if (pg_url) {
    char table[64];
    snprintf(table, sizeof table, "c_%d", (int)getpid());
    finllm_pg *pg = NULL;
    EXPECT_STATUS(finllm_pg_open(pg_url, table, e, 0, &pg), FINLLM_OK);
    finllm_push_report rep = {0};
    EXPECT_STATUS(finllm_pg_push(pg, index, &rep), FINLLM_OK);
    CHECK(rep.added == 2 && rep.rows == 2);
    EXPECT_STATUS(finllm_pg_push(pg, index, &rep), FINLLM_OK);
    CHECK(rep.unchanged == 2 && rep.rows == 0);
    size_t rows = 0;
    EXPECT_STATUS(finllm_pg_len(pg, &rows), FINLLM_OK);
    CHECK(rows == 2);
    q.date_from = NULL;
    q.restricted = 1; /* "public" only, as above */
    found = NULL;
    EXPECT_STATUS(finllm_pg_search(pg, &q, &found), FINLLM_OK);
    CHECK(finllm_passages_len(found) == 1);
    EXPECT_STATUS(finllm_passages_get(found, 0, &p), FINLLM_OK);
    CHECK(strcmp(p.source, "acme.md") == 0 && strcmp(p.ticker, "ACMB") == 0 && strstr(p.text, "14.2%") != NULL);
    finllm_passages_free(found);
    finllm_retriever *pr = NULL;
    EXPECT_STATUS(finllm_retriever_from_pg(pg, &pr), FINLLM_OK);
    finllm_generate_params pgp = finllm_generate_default_params();
    pgp.max_tokens = 2;
    finllm_request_params prp = finllm_request_default_params();
    prp.prompt = "What was the CET1 ratio?";
    prp.generate = &pgp;
    prp.retriever = pr;
    finllm_generation *pout = NULL;
    EXPECT_STATUS(finllm_generate(m, &prp, NULL, NULL, NULL, &pout), FINLLM_OK);
    CHECK(finllm_generation_n_citations(pout) == 2);
    finllm_passage pc;
    EXPECT_STATUS(finllm_generation_citation(pout, 0, &pc), FINLLM_OK);
    CHECK(strcmp(pc.source, "acme.md") == 0);
    finllm_generation_free(pout);
    EXPECT_STATUS(finllm_pg_drop_tables(pg), FINLLM_OK);
    finllm_pg_free(pg); /* the retriever keeps the store alive */
    finllm_retriever_free(pr);
    finllm_pg_free(NULL);
    /* Nothing listens on port 1: a typed error, promptly; a table name that is not one. */
    pg = NULL;
    EXPECT_STATUS(finllm_pg_open("postgresql://postgres@127.0.0.1:1/postgres", NULL, e, 5000, &pg),
                  FINLLM_ERROR_RETRIEVER);
    CHECK(pg == NULL);
    EXPECT_STATUS(finllm_pg_open(pg_url, "x; drop table y", e, 0, &pg), FINLLM_ERROR_INVALID_ARGUMENT);
    EXPECT_STATUS(finllm_pg_open(NULL, NULL, e, 0, &pg), FINLLM_ERROR_NULL_POINTER);
    EXPECT_STATUS(finllm_pg_push(NULL, index, NULL), FINLLM_ERROR_NULL_POINTER);
    EXPECT_STATUS(finllm_pg_len(NULL, &rows), FINLLM_ERROR_NULL_POINTER);
  }

  /* A grounded request on the model: the sources come back as citations. */
  finllm_retriever *r = NULL;
  EXPECT_STATUS(finllm_retriever_from_index(index, &r), FINLLM_OK);
  finllm_index_free(index); /* the retriever keeps it alive */
  finllm_generate_params gp = finllm_generate_default_params();
  gp.max_tokens = 4;
  finllm_request_params rp = finllm_request_default_params();
  rp.prompt = "What was the CET1 ratio?";
  rp.generate = &gp;
  rp.retriever = r;
  finllm_generation *out = NULL;
  EXPECT_STATUS(finllm_generate(m, &rp, NULL, NULL, NULL, &out), FINLLM_OK);
  CHECK(finllm_generation_n_citations(out) == 2);
  finllm_passage c;
  EXPECT_STATUS(finllm_generation_citation(out, 0, &c), FINLLM_OK);
  CHECK(c.number == 1 && strcmp(c.source, "acme.md") == 0);
  EXPECT_STATUS(finllm_generation_citation(out, 2, &c), FINLLM_ERROR_INVALID_ARGUMENT);
  finllm_generation_free(out);
  CHECK(finllm_generation_n_citations(NULL) == 0);
  /* A question must be a prompt, not token ids. */
  uint32_t ids[] = {1, 2, 3};
  rp.prompt = NULL;
  rp.ids = ids;
  rp.n_ids = 3;
  out = NULL;
  EXPECT_STATUS(finllm_generate(m, &rp, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  CHECK(out == NULL);
  finllm_retriever_free(r);

  /* A C function as retriever; the passage outside the caller's entitlements is dropped. */
  int calls = 0;
  EXPECT_STATUS(finllm_retriever_from_callback(desk_search, &calls, &r), FINLLM_OK);
  finllm_query filter = finllm_query_default();
  const char *desk[] = {"desk"};
  filter.k = 3;
  filter.restricted = 1;
  filter.entitlements = desk;
  filter.n_entitlements = 1;
  rp = finllm_request_default_params();
  rp.prompt = "What is the desk VaR limit?";
  rp.generate = &gp;
  rp.retriever = r;
  rp.retrieval = &filter;
  EXPECT_STATUS(finllm_generate(m, &rp, NULL, NULL, NULL, &out), FINLLM_OK);
  CHECK(calls == 1 && finllm_generation_n_citations(out) == 1);
  EXPECT_STATUS(finllm_generation_citation(out, 0, &c), FINLLM_OK);
  CHECK(strcmp(c.source, "desk-notes.txt") == 0 && strcmp(c.id, "desk-notes.txt#0-41") == 0);
  finllm_generation_free(out);
  filter.k = 99; /* the function fails */
  out = NULL;
  EXPECT_STATUS(finllm_generate(m, &rp, NULL, NULL, NULL, &out), FINLLM_ERROR_RETRIEVER);
  CHECK(out == NULL && calls == 2);
  CHECK(strcmp(finllm_status_name(FINLLM_ERROR_RETRIEVER), "FINLLM_ERROR_RETRIEVER") == 0);
  finllm_retriever_free(r);
  EXPECT_STATUS(finllm_retriever_from_callback(NULL, NULL, &r), FINLLM_ERROR_NULL_POINTER);
  finllm_retriever_free(NULL);
  finllm_index_free(NULL);
  finllm_passages_free(NULL);
  finllm_embedder_free(e);
  snprintf(path, sizeof path, "%s/acme.md", docs);
  unlink(path);
  snprintf(path, sizeof path, "%s/fed.txt", docs);
  unlink(path);
  snprintf(path, sizeof path, "%s/metadata.toml", docs);
  unlink(path);
  rmdir(docs);
}

/* Explanations on the real chat model: the copied code ranks first; the matrix's row sums are
 * the units' scores; JSON and HTML by the caller-buffer convention; segments; typed errors. */
static void test_explain(const finllm_model *m) {
  const char *copy = "The code is 4711. Repeat the code:";
  finllm_explain_params p = finllm_explain_default_params();
  p.target = " 4711";
  finllm_attribution *a = NULL;
  EXPECT_STATUS(finllm_explain(m, copy, &p, &a), FINLLM_OK);
  if (!a) return;
  size_t n = finllm_attribution_n_units(a), cols = 0, rows = 0;
  CHECK(n >= 5);
  finllm_unit top, second;
  EXPECT_STATUS(finllm_attribution_unit(a, 0, &top), FINLLM_OK);
  EXPECT_STATUS(finllm_attribution_unit(a, 1, &second), FINLLM_OK);
  CHECK(strcmp(top.text, "4711") == 0);
  CHECK(top.label == NULL);
  CHECK(top.byte_end - top.byte_start == 4 && strncmp(copy + top.byte_start, "4711", 4) == 0);
  CHECK(top.start == top.byte_start && top.end == top.byte_end); /* ASCII: characters are bytes */
  CHECK(top.score > second.score);
  const double *mat = finllm_attribution_matrix(a, &rows, &cols);
  CHECK(mat != NULL && rows == n && cols == finllm_attribution_n_answer_tokens(a) && cols > 0);
  if (mat && top.index < rows) {
    double sum = 0;
    for (size_t c = 0; c < cols; c++) sum += mat[top.index * cols + c];
    CHECK(fabs(sum - top.score) < 1e-9);
  }
  size_t needed = 0;
  EXPECT_STATUS(finllm_attribution_json(a, NULL, 0, &needed), FINLLM_ERROR_BUFFER_TOO_SMALL);
  char *json = malloc(needed);
  if (json) {
    EXPECT_STATUS(finllm_attribution_json(a, json, needed, &needed), FINLLM_OK);
    CHECK(strstr(json, "\"method\":\"occlusion\"") != NULL);
    free(json);
  }
  EXPECT_STATUS(finllm_attribution_html(a, NULL, 0, &needed), FINLLM_ERROR_BUFFER_TOO_SMALL);
  char *html = malloc(needed);
  if (html) {
    EXPECT_STATUS(finllm_attribution_html(a, html, needed, &needed), FINLLM_OK);
    CHECK(strncmp(html, "<!DOCTYPE html>", 15) == 0);
    free(html);
  }
  finllm_unit u;
  EXPECT_STATUS(finllm_attribution_unit(a, n, &u), FINLLM_ERROR_INVALID_ARGUMENT);
  EXPECT_STATUS(finllm_attribution_unit(a, 0, NULL), FINLLM_ERROR_NULL_POINTER);

  /* Attention from a chosen layer, and every layer's profile: each layer's attention from a
     predicting position is a distribution, so over all units it sums to at most one per target
     token. */
  size_t layers = 0, units = 0;
  CHECK(finllm_attribution_attention_layers(a, &layers, &units) == NULL && layers == 0);
  finllm_attribution_free(a);
  finllm_explain_params ap = finllm_explain_default_params();
  ap.method = "attention";
  ap.target = " 4711";
  ap.layer = 3;
  a = NULL;
  EXPECT_STATUS(finllm_explain(m, copy, &ap, &a), FINLLM_OK);
  if (a) {
    const double *per_layer = finllm_attribution_attention_layers(a, &layers, &units);
    CHECK(per_layer != NULL && layers == 30 && units == finllm_attribution_n_units(a));
    const double *am = finllm_attribution_matrix(a, &rows, &cols);
    for (size_t l = 0; per_layer && l < layers; l++) {
      double sum = 0;
      for (size_t u2 = 0; u2 < units; u2++) sum += per_layer[l * units + u2];
      CHECK(sum > 0 && sum <= (double)cols + 1e-9);
    }
    /* The matrix is layer 3's (the whole answer is the target). */
    for (size_t r = 0; per_layer && am && r < rows; r++) {
      double row = 0;
      for (size_t c = 0; c < cols; c++) row += am[r * cols + c];
      CHECK(fabs(row - per_layer[3 * units + r]) < 1e-9);
    }
    finllm_attribution_free(a);
  }
  ap.layer = 30;
  a = NULL;
  EXPECT_STATUS(finllm_explain(m, copy, &ap, &a), FINLLM_ERROR_INVALID_ARGUMENT);
  CHECK(a == NULL);
  ap.layer = -2;
  EXPECT_STATUS(finllm_explain(m, copy, &ap, &a), FINLLM_ERROR_INVALID_ARGUMENT);
  CHECK(a == NULL);

  /* Sources as segments: the one holding the answer ranks first, with its label. */
  const char *text = "Source A: It rained in Zurich on Monday.\n"
                     "Source B: Acme Bank reported a CET1 ratio of 14.2 percent.\n"
                     "Question: What was Acme Bank's CET1 ratio? Answer: It was";
  const char *b = strstr(text, "Source B");
  finllm_segment segs[2] = {{"rain", 0, 40}, {"acme", (size_t)(b - text), (size_t)(strchr(b, '\n') - text)}};
  finllm_explain_params sp = finllm_explain_default_params();
  sp.method = "surrogate";
  sp.target = " 14.2 percent";
  sp.segments = segs;
  sp.n_segments = 2;
  a = NULL;
  EXPECT_STATUS(finllm_explain(m, text, &sp, &a), FINLLM_OK);
  if (a) {
    CHECK(finllm_attribution_n_units(a) == 2);
    EXPECT_STATUS(finllm_attribution_unit(a, 0, &top), FINLLM_OK);
    CHECK(top.label && strcmp(top.label, "acme") == 0);
    finllm_attribution_free(a);
  }

  /* A guarded explanation: the answer is a guarded request's, the masked prompt is explained,
     and the explanation is recorded right after the request's record. */
  char elog[128];
  tmp_path(elog, sizeof elog, "explain-audit.log");
  finllm_guard_params eg = finllm_guard_default_params();
  eg.mask_pii = true;
  eg.audit_log_path = elog;
  finllm_guard *eguard = NULL;
  EXPECT_STATUS(finllm_guard_new(&eg, &eguard), FINLLM_OK);
  if (eguard) {
    finllm_explain_params gp2 = finllm_explain_default_params();
    gp2.guard = eguard;
    gp2.caller_id = "desk-7";
    gp2.max_tokens = 6;
    gp2.chat = 1;
    a = NULL;
    EXPECT_STATUS(finllm_explain(m, "The code is 4711. Mail it to jane.doe@example.com. Repeat the code:", &gp2, &a),
                  FINLLM_OK);
    if (a) {
      CHECK(finllm_attribution_audit_seq(a) == 2);
      size_t jn = 0;
      EXPECT_STATUS(finllm_attribution_json(a, NULL, 0, &jn), FINLLM_ERROR_BUFFER_TOO_SMALL);
      char *j = malloc(jn);
      if (j) {
        EXPECT_STATUS(finllm_attribution_json(a, j, jn, &jn), FINLLM_OK);
        CHECK(strstr(j, "jane.doe@example.com") == NULL && strstr(j, "4711") != NULL);
        free(j);
      }
      finllm_attribution_free(a);
    }
    uint64_t records = 0, issues = 1;
    EXPECT_STATUS(finllm_audit_verify(elog, NULL, &records, &issues, NULL), FINLLM_OK);
    CHECK(records == 2 && issues == 0);
    /* A given answer is not a guarded request's. */
    gp2.target = " 4711";
    a = NULL;
    EXPECT_STATUS(finllm_explain(m, copy, &gp2, &a), FINLLM_ERROR_INVALID_ARGUMENT);
    CHECK(a == NULL);
    finllm_guard_free(eguard);
  }
  CHECK(finllm_attribution_audit_seq(NULL) == 0);

  /* Errors. */
  a = NULL;
  finllm_explain_params bad = finllm_explain_default_params();
  bad.method = "magic";
  EXPECT_STATUS(finllm_explain(m, copy, &bad, &a), FINLLM_ERROR_INVALID_ARGUMENT);
  CHECK(a == NULL && last_error_len() > 1);
  EXPECT_STATUS(finllm_explain(m, NULL, NULL, &a), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_explain(m, copy, NULL, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_explain(NULL, copy, NULL, &a), FINLLM_ERROR_NULL_POINTER);
  bad = finllm_explain_default_params();
  bad.n_segments = 1;
  EXPECT_STATUS(finllm_explain(m, copy, &bad, &a), FINLLM_ERROR_NULL_POINTER);
  bad = finllm_explain_default_params();
  bad.struct_size = 4;
  EXPECT_STATUS(finllm_explain(m, copy, &bad, &a), FINLLM_ERROR_STRUCT_SIZE);
  bad = finllm_explain_default_params();
  bad.target = "";
  EXPECT_STATUS(finllm_explain(m, copy, &bad, &a), FINLLM_ERROR_INVALID_ARGUMENT);
  CHECK(finllm_attribution_n_units(NULL) == 0);
  CHECK(finllm_attribution_matrix(NULL, &rows, &cols) == NULL);
  finllm_attribution_free(NULL);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s TINY_MODEL.gguf EMBEDDER_DIR [CHAT_MODEL.gguf]\n", argv[0]);
    return 2;
  }
  snprintf(tmpdir, sizeof tmpdir, "/tmp/finllm-capi-XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 2;
  }
  test_version();
  test_status_names();
  test_load_errors(argv[1]);
  test_pii_mask();
  test_policy();
  test_guard_new_errors();
  finllm_model *m = NULL;
  EXPECT_STATUS(finllm_model_load(argv[1], NULL, &m), FINLLM_OK);
  if (m) {
    CHECK(finllm_model_vocab_size(m) > 0);
    CHECK(strcmp(finllm_model_architecture(m), "llama") == 0);
    test_tokenize(m);
    test_generate(m);
    test_unguarded_accessors(m);
    test_guarded(m);
    test_guarded_block(m);
    test_guarded_fail_closed();
    test_engine(m);
    finllm_model_free(m);
  }
  test_embedder(argv[2]);
  /* Grounded requests need a real chat model (the tiny one's context is too short). */
  if (argc > 3) {
    finllm_model *chat_model = NULL;
    EXPECT_STATUS(finllm_model_load(argv[3], NULL, &chat_model), FINLLM_OK);
    if (chat_model) test_retrieval(chat_model, argv[2]);
    if (chat_model) test_explain(chat_model);
    finllm_model_free(chat_model);
  }
  rmdir(tmpdir);
  printf("%d passed, %d failed\n", checks - failures, failures);
  return failures ? 1 : 0;
}
