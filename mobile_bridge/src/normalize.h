// Unicode normalization of prompt text before llama.cpp tokenizes it.
//
// The Qwen tokenizers (MiniCPM-V 2.6 / 4.5 / 4.6) normalize text to NFC before
// splitting it; llama.cpp does not, so "e" + U+0301 would tokenize unlike "é".
// The bridge normalizes exactly where the Python runtime does (edge_runtime/engine.py,
// minicpmv_edge/text_normalize.py): the form comes from the text GGUF's
// minicpmv_edge.tokenizer.normalizer, or, for GGUFs written by other tools, from
// tokenizer.ggml.pre ("qwen2", "qwen35": NFC; anything else: none).
#pragma once

#include <string>

struct llama_model;

namespace mcv {

enum class NormForm { None, NFC, NFD, Unsupported };

// The form the model's source tokenizer applies; `name` receives its spelling
// (normalize_model.cpp; the rest of this header is free of llama.cpp).
NormForm normalizer_for_model(const llama_model *model, std::string &name);

// `text` (UTF-8) in canonical composed (NFC) or decomposed (NFD) form, as Python's
// unicodedata.normalize gives it for the Unicode version of normalize_tables.h.
// Text that is not valid UTF-8 is returned unchanged.
std::string normalize_nfc(const std::string &text);
std::string normalize_nfd(const std::string &text);

// normalize_* for `form`; false (and `text` untouched in `out`) for an unsupported form.
bool normalize_for(NormForm form, const std::string &text, std::string &out);

}  // namespace mcv
