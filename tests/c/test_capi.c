/* Error paths and contracts of the finllm C ABI. Usage: test_capi TINY_MODEL.gguf
 * Built and run (under AddressSanitizer) by `make -C examples/cpp check`. */
#define _DEFAULT_SOURCE
#include <finllm.h>

#include <pthread.h>
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
  finllm_generate_params p = finllm_generate_default_params();
  p.max_tokens = 8;
  finllm_generation *sentinel = (finllm_generation *)0x1, *out = sentinel;

  EXPECT_STATUS(finllm_generate(m, NULL, &p, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_generate(m, "x", &p, NULL, NULL, NULL, NULL), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_generate(m, "\xff", &p, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_UTF8);
  finllm_generate_params bad = p;
  bad.temperature = -1.0f;
  EXPECT_STATUS(finllm_generate(m, "x", &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  bad = p;
  bad.struct_size = 8;
  EXPECT_STATUS(finllm_generate(m, "x", &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_STRUCT_SIZE);
  bad = p;
  bad.max_tokens = 1000000;
  EXPECT_STATUS(finllm_generate(m, "x", &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_CONTEXT_OVERFLOW);
  bad = p;
  bad.n_stop = 2;
  bad.stop = NULL;
  EXPECT_STATUS(finllm_generate(m, "x", &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  const char *stops[2] = {"ok", NULL};
  bad.stop = stops;
  EXPECT_STATUS(finllm_generate(m, "x", &bad, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_generate(m, "", &p, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
  CHECK(out == sentinel);

  /* NULL params means defaults; a plain run. */
  EXPECT_STATUS(finllm_generate(m, "the rate", &p, NULL, NULL, NULL, &out), FINLLM_OK);
  size_t n = 0;
  finllm_generation_tokens(out, &n);
  CHECK(n == 8);
  CHECK(finllm_generation_finish_reason(out) == FINLLM_FINISH_LENGTH);
  CHECK(finllm_generation_prompt_tokens(out) > 0);
  finllm_generation_free(out);

  /* The callback stops generation. */
  int count = 0;
  EXPECT_STATUS(finllm_generate(m, "the rate", &p, stop_after_three, &count, NULL, &out), FINLLM_OK);
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
  EXPECT_STATUS(finllm_generate(m, "the rate", &p, slow_callback, NULL, cancel, &out), FINLLM_OK);
  pthread_join(t, NULL);
  finllm_generation_tokens(out, &n);
  CHECK(finllm_generation_finish_reason(out) == FINLLM_FINISH_CANCELLED);
  CHECK(n < 200);
  finllm_generation_free(out);
  finllm_cancel_free(cancel);

  /* Chat. */
  finllm_chat_message msgs[2] = {{"system", "terse"}, {"user", "rate?"}};
  p.max_tokens = 4;
  EXPECT_STATUS(finllm_chat(m, msgs, 2, &p, NULL, NULL, NULL, &out), FINLLM_OK);
  finllm_generation_free(out);
  finllm_chat_message broken[1] = {{NULL, "x"}};
  EXPECT_STATUS(finllm_chat(m, broken, 1, &p, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_chat(m, NULL, 1, &p, NULL, NULL, NULL, &out), FINLLM_ERROR_NULL_POINTER);
  EXPECT_STATUS(finllm_chat(m, msgs, 0, &p, NULL, NULL, NULL, &out), FINLLM_ERROR_INVALID_ARGUMENT);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s TINY_MODEL.gguf\n", argv[0]);
    return 2;
  }
  test_version();
  test_load_errors(argv[1]);
  finllm_model *m = NULL;
  EXPECT_STATUS(finllm_model_load(argv[1], NULL, &m), FINLLM_OK);
  if (m) {
    CHECK(finllm_model_vocab_size(m) > 0);
    CHECK(strcmp(finllm_model_architecture(m), "llama") == 0);
    test_tokenize(m);
    test_generate(m);
    finllm_model_free(m);
  }
  printf("%d passed, %d failed\n", checks - failures, failures);
  return failures ? 1 : 0;
}
