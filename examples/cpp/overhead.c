/* Per-call cost of the C ABI on a tiny model (compare with `cargo bench --bench overhead`).
 *   make -C examples/cpp overhead MODEL=target/tiny-llama.gguf */
#define _POSIX_C_SOURCE 199309L
#include <finllm.h>

#include <stdio.h>
#include <time.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  finllm_load_params lp = finllm_load_default_params();
  lp.threads = 1;
  finllm_model *m = NULL;
  if (finllm_model_load(argv[1], &lp, &m) != FINLLM_OK) return 1;
  uint32_t ids[64];
  size_t n = 0;
  finllm_tokenize(m, "The rate", ids, 64, &n);
  double t0 = now_us();
  for (int i = 0; i < 20000; i++) finllm_tokenize(m, "The rate", ids, 64, &n);
  double tokenize = (now_us() - t0) / 20000;
  finllm_generate_params p = finllm_generate_default_params();
  p.max_tokens = 1;
  finllm_request_params r = finllm_request_default_params();
  r.prompt = "The rate";
  r.generate = &p;
  finllm_generation *g = NULL;
  finllm_generate(m, &r, NULL, NULL, NULL, &g);
  finllm_generation_free(g);
  t0 = now_us();
  for (int i = 0; i < 2000; i++) {
    finllm_generate(m, &r, NULL, NULL, NULL, &g);
    finllm_generation_free(g);
  }
  double generate = (now_us() - t0) / 2000;
  printf("{\"layer\": \"c\", \"tokenize_us\": %.2f, \"generate1_us\": %.2f}\n", tokenize, generate);
  finllm_model_free(m);
  return 0;
}
