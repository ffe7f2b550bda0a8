// Small RAII wrappers over the finllm C ABI (include/finllm.h), C++17.
#pragma once

#include <finllm.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace finllm {

// Thrown for every non-OK status; carries the code and the library's message.
class Error : public std::runtime_error {
 public:
  Error(finllm_status status, const std::string& message)
      : std::runtime_error(std::string(finllm_status_name(status)) + ": " + message), status_(status) {}
  finllm_status status() const { return status_; }

 private:
  finllm_status status_;
};

inline void check(finllm_status status) {
  if (status == FINLLM_OK) return;
  std::string message(finllm_last_error_message(nullptr, 0), '\0');
  finllm_last_error_message(message.data(), message.size());
  message.pop_back();  // the NUL
  throw Error(status, message);
}

struct Result {
  std::string text;
  std::vector<uint32_t> tokens;
  finllm_finish_reason finish;
  double prefill_ms = 0, decode_ms = 0;
};

// A loaded model; safe to share between threads (const methods only).
class Model {
 public:
  explicit Model(const std::string& path, uint32_t threads = 0) {
    finllm_load_params params = finllm_load_default_params();
    params.threads = threads;
    finllm_model* raw = nullptr;
    check(finllm_model_load(path.c_str(), &params, &raw));
    handle_.reset(raw);
  }

  // on_text returns false to stop generation.
  Result generate(const std::string& prompt, const finllm_generate_params& params,
                  const std::function<bool(const std::string&)>& on_text = nullptr,
                  const finllm_cancel* cancel = nullptr) const {
    finllm_request_params request = finllm_request_default_params();
    request.prompt = prompt.c_str();
    request.generate = &params;
    return run(request, on_text, cancel);
  }

  Result chat(const std::vector<std::pair<std::string, std::string>>& messages, const finllm_generate_params& params,
              const std::function<bool(const std::string&)>& on_text = nullptr) const {
    std::vector<finllm_chat_message> msgs;
    for (const auto& [role, content] : messages) msgs.push_back({role.c_str(), content.c_str()});
    finllm_request_params request = finllm_request_default_params();
    request.messages = msgs.data();
    request.n_messages = msgs.size();
    request.generate = &params;
    return run(request, on_text, nullptr);
  }

  // Any request (text, chat or ids; guarded or not) through the one C entry point.
  Result run(const finllm_request_params& request, const std::function<bool(const std::string&)>& on_text,
             const finllm_cancel* cancel) const {
    finllm_generation* raw = nullptr;
    check(finllm_generate(handle_.get(), &request, on_text ? &trampoline : nullptr,
                          const_cast<void*>(static_cast<const void*>(&on_text)), cancel, &raw));
    return collect(raw);
  }

  std::vector<uint32_t> tokenize(const std::string& text) const {
    size_t n = 0;
    finllm_status s = finllm_tokenize(handle_.get(), text.c_str(), nullptr, 0, &n);
    if (s != FINLLM_ERROR_BUFFER_TOO_SMALL) check(s);
    std::vector<uint32_t> ids(n);
    check(finllm_tokenize(handle_.get(), text.c_str(), ids.data(), ids.size(), &n));
    return ids;
  }

  const finllm_model* get() const { return handle_.get(); }

 private:
  struct Free {
    void operator()(finllm_model* m) const { finllm_model_free(m); }
  };
  std::unique_ptr<finllm_model, Free> handle_;

  static int32_t trampoline(const char* text, size_t len, uint32_t, void* user_data) {
    const auto& fn = *static_cast<const std::function<bool(const std::string&)>*>(user_data);
    try {
      return fn(std::string(text, len)) ? 0 : 1;
    } catch (...) {
      return 1;  // never let an exception cross the C boundary
    }
  }

  static Result collect(finllm_generation* raw) {
    std::unique_ptr<finllm_generation, void (*)(finllm_generation*)> gen(raw, finllm_generation_free);
    Result r;
    size_t len = 0, n = 0;
    const char* text = finllm_generation_text(gen.get(), &len);
    r.text.assign(text, len);
    const uint32_t* ids = finllm_generation_tokens(gen.get(), &n);
    r.tokens.assign(ids, ids + n);
    r.finish = finllm_generation_finish_reason(gen.get());
    finllm_generation_timings(gen.get(), &r.prefill_ms, &r.decode_ms);
    return r;
  }
};

// A cancellation flag that any thread may trigger.
class Cancel {
 public:
  Cancel() : handle_(finllm_cancel_new()) {}
  void trigger() const { finllm_cancel_trigger(handle_.get()); }
  const finllm_cancel* get() const { return handle_.get(); }

 private:
  struct Free {
    void operator()(finllm_cancel* c) const { finllm_cancel_free(c); }
  };
  std::unique_ptr<finllm_cancel, Free> handle_;
};

}  // namespace finllm
