// Which normalization a text GGUF asks for (see normalize.h).
#include "normalize.h"

#include "llama.h"

namespace mcv {

NormForm normalizer_for_model(const llama_model *model, std::string &name) {
    char buf[64];
    if (llama_model_meta_val_str(model, "minicpmv_edge.tokenizer.normalizer", buf, sizeof(buf)) >= 0) {
        name = buf;
    } else {
        // a GGUF from another tool: the Qwen pre-tokenizers come from NFC tokenizers
        const bool qwen = llama_model_meta_val_str(model, "tokenizer.ggml.pre", buf, sizeof(buf)) >= 0 &&
                          (std::string(buf) == "qwen2" || std::string(buf) == "qwen35");
        name = qwen ? "NFC" : "";
    }
    if (name.empty()) return NormForm::None;
    if (name == "NFC") return NormForm::NFC;
    if (name == "NFD") return NormForm::NFD;
    return NormForm::Unsupported;
}

}  // namespace mcv
