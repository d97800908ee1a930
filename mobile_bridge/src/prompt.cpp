// The prompt as the model's own chat template renders it, without jinja: the template's
// behaviour comes as plain facts from minicpmv_edge.* metadata (minicpmv_edge/model_facts.py
// names every fact), or from the detected family for GGUFs written by other tools
// (family_facts.h). tests/test_bridge_prompt.py pins these bytes to the jinja rendering.
// Also: the text/mmproj pair check that runs before mtmd is initialised.
#include "internal.h"

#include "family_facts.h"
#include "gguf.h"

#include <cstdlib>
#include <cstring>

namespace mcv {

namespace {
const char *NS = "minicpmv_edge.";

std::string key(const char *k) { return std::string(NS) + k; }

bool get(const llama_model *m, const char *k, std::string &out) { return meta_str(m, key(k).c_str(), out); }

std::string get_or(const llama_model *m, const char *k, const char *dflt) {
    std::string v;
    return get(m, k, v) ? v : std::string(dflt);
}

bool get_bool(const llama_model *m, const char *k, bool dflt) {
    std::string v;
    if (!get(m, k, v)) return dflt;
    return v == "true" || v == "1";
}

int get_int(const llama_model *m, const char *k, int dflt) {
    std::string v;
    if (!get(m, k, v) || v.empty()) return dflt;
    return (int)strtol(v.c_str(), nullptr, 10);
}

// gguf.h getters assert on a type mismatch (abort): check the type first.
bool gguf_str(const gguf_context *g, const char *k, std::string &out) {
    int64_t id = gguf_find_key(g, k);
    if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_STRING) return false;
    out = gguf_get_val_str(g, id);
    return true;
}

bool gguf_int(const gguf_context *g, const char *k, int64_t &out) {
    int64_t id = gguf_find_key(g, k);
    if (id < 0) return false;
    switch (gguf_get_kv_type(g, id)) {
        case GGUF_TYPE_INT32: out = gguf_get_val_i32(g, id); return true;
        case GGUF_TYPE_UINT32: out = gguf_get_val_u32(g, id); return true;
        case GGUF_TYPE_INT64: out = gguf_get_val_i64(g, id); return true;
        case GGUF_TYPE_UINT64: out = (int64_t)gguf_get_val_u64(g, id); return true;
        default: return false;
    }
}
}  // namespace

bool meta_str(const llama_model *model, const char *k, std::string &out) {
    std::vector<char> buf(512);
    int32_t n = llama_model_meta_val_str(model, k, buf.data(), buf.size());
    if (n < 0) return false;
    if ((size_t)n >= buf.size()) {
        buf.resize((size_t)n + 1);
        n = llama_model_meta_val_str(model, k, buf.data(), buf.size());
        if (n < 0) return false;
    }
    out.assign(buf.data(), (size_t)n);
    return true;
}

std::string format_field(const std::string &t, const char *name, const std::string &value) {
    std::string out, field = std::string("{") + name + "}";
    for (size_t i = 0; i < t.size();) {
        if (t.compare(i, field.size(), field) == 0) {
            out += value;
            i += field.size();
        } else if ((t[i] == '{' || t[i] == '}') && i + 1 < t.size() && t[i + 1] == t[i]) {
            out += t[i];
            i += 2;
        } else {
            out += t[i++];
        }
    }
    return out;
}

bool parse_string_array(const std::string &s, std::vector<std::string> &out) {
    out.clear();
    size_t i = 0;
    auto ws = [&] { while (i < s.size() && (s[i] == ' ' || s[i] == ',')) i++; };
    if (s.empty() || s[0] != '[') return false;
    i = 1;
    for (;;) {
        ws();
        if (i >= s.size()) return false;
        if (s[i] == ']') return true;
        if (s[i] != '"') return false;
        std::string v;
        for (i++; i < s.size() && s[i] != '"'; i++) {
            if (s[i] == '\\' && i + 1 < s.size()) i++;
            v += s[i];
        }
        if (i >= s.size()) return false;
        i++;
        out.push_back(v);
    }
}

namespace {
// The mmproj's projector type and version (clip.projector_type, clip.minicpmv_version).
bool projector_of(const char *mmproj_path, std::string &ptype, int64_t &version) {
    gguf_init_params gp = {/*no_alloc*/ true, /*ctx*/ nullptr};
    gguf_context *g = mmproj_path ? gguf_init_from_file(mmproj_path, gp) : nullptr;
    if (!g) return false;
    bool ok = gguf_str(g, "clip.projector_type", ptype);
    version = 0;
    gguf_int(g, "clip.minicpmv_version", version);
    gguf_free(g);
    return ok;
}

// A GGUF written by another tool: the family from standard keys, as model_facts.detect does.
int detect_family(const llama_model *m, const char *mmproj_path, PromptFormat &f, std::string &err) {
    std::string arch, ptype;
    int64_t pver = 0;
    meta_str(m, "general.architecture", arch);
    const bool have_mm = projector_of(mmproj_path, ptype, pver);
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(m));
    std::vector<const FamilyFacts *> cands;
    for (const FamilyFacts &r : FAMILY_FACTS)
        if (r.detectable && arch == r.text_arch &&
            (have_mm ? ptype == r.projector_type && (r.projector_version == 0 || r.projector_version == pver)
                     : r.n_vocab == n_vocab))  // a text model alone: the vocabulary tells MiniCPM-V apart
            cands.push_back(&r);
    if (cands.size() > 1) {
        std::vector<const FamilyFacts *> by_vocab;
        for (const FamilyFacts *r : cands)
            if (r->n_vocab == n_vocab) by_vocab.push_back(r);
        if (!by_vocab.empty()) cands = by_vocab;
    }
    if (cands.size() != 1) {
        err = "not a MiniCPM-V GGUF we recognise (architecture '" + arch + "', " + std::to_string(n_vocab) +
              " tokens" + (have_mm ? ", projector '" + ptype + "' version " + std::to_string(pver) : ", no projector") +
              ") and no minicpmv_edge.* metadata; convert the checkpoint with `minicpmv-edge convert`";
        return MCV_ERR_UNSUPPORTED;
    }
    const FamilyFacts &r = *cands[0];
    f.family = r.family;
    f.turn_prefix = r.turn_prefix;
    f.turn_suffix = r.turn_suffix;
    f.default_system = r.default_system;
    f.separator = r.content_separator;
    f.stop.clear();
    for (const char *const *p = r.stop; *p; p++) f.stop.push_back(*p);
    f.image_id_template = r.image_id_template;
    f.use_image_id = r.use_image_id;
    f.thinking_supported = r.thinking_supported;
    f.thinking_default = r.thinking_default;
    f.thinking_prefix_on = r.thinking_prefix_on;
    f.thinking_prefix_off = r.thinking_prefix_off;
    f.think_close = r.think_close;
    f.trim_content = r.trim_content;
    f.strip_history = r.strip_history;
    f.max_slice_nums = r.max_slice_nums;
    f.scale_resolution = r.scale_resolution;
    f.projector_type = r.projector_type;
    f.projector_version = r.projector_version;
    f.own_keys = false;
    return MCV_OK;
}
}  // namespace

int read_prompt_format(const llama_model *m, const char *mmproj_path, PromptFormat &f, std::string &err) {
    if (!get(m, "family", f.family)) return detect_family(m, mmproj_path, f, err);
    if (!get(m, "prompt.turn_prefix", f.turn_prefix) || !get(m, "prompt.turn_suffix", f.turn_suffix)) {
        err = "minicpmv_edge.prompt.turn_prefix/turn_suffix missing from the text GGUF";
        return MCV_ERR_FORMAT;
    }
    f.default_system = get_or(m, "prompt.default_system", "");
    f.separator = get_or(m, "prompt.content_separator", "\n");
    std::string stop;
    if (get(m, "prompt.stop", stop) && !parse_string_array(stop, f.stop)) {
        err = "minicpmv_edge.prompt.stop is not a string array";
        return MCV_ERR_FORMAT;
    }
    f.image_id_template = get_or(m, "prompt.image_id_template", "<image_id>{id}</image_id>");
    f.use_image_id = get_bool(m, "prompt.use_image_id", false);
    f.thinking_supported = get_bool(m, "thinking.supported", false);
    f.thinking_default = get_bool(m, "thinking.default", false);
    f.thinking_prefix_on = get_or(m, "thinking.prefix_on", "");
    f.thinking_prefix_off = get_or(m, "thinking.prefix_off", "");
    f.think_close = get_or(m, "thinking.close_tag", "</think>");
    f.trim_content = get_bool(m, "prompt.trim_content", false);
    f.strip_history = get_bool(m, "thinking.strip_history", false);
    f.max_slice_nums = get_int(m, "image.max_slice_nums", 9);
    f.scale_resolution = get_int(m, "image.scale_resolution", 448);
    f.projector_type = get_or(m, "projector_type", "");
    f.projector_version = get_int(m, "projector_version", 0);
    return MCV_OK;
}

std::string PromptFormat::image_placeholder(const std::string &marker, int index) const {
    return (use_image_id ? format_field(image_id_template, "id", std::to_string(index)) : std::string()) + marker;
}

int check_pair(const llama_model *m, const PromptFormat &f, const char *mmproj_path, std::string &err,
               SliceParams *slicing) {
    gguf_init_params gp = {/*no_alloc*/ true, /*ctx*/ nullptr};
    gguf_context *g = gguf_init_from_file(mmproj_path, gp);
    if (!g) {
        err = std::string("not a readable GGUF projector: ") + mmproj_path;
        return MCV_ERR_MMPROJ_LOAD;
    }
    std::string ptype, fam;
    int64_t version = 0, width = 0;
    bool has_ptype = gguf_str(g, "clip.projector_type", ptype);
    bool has_version = gguf_int(g, "clip.minicpmv_version", version);
    bool has_fam = gguf_str(g, (std::string(NS) + "family").c_str(), fam);
    bool has_width = gguf_int(g, "clip.vision.projection_dim", width);
    if (slicing) {  // as clip.cpp reads them for PROJECTOR_TYPE_MINICPMV / MINICPMV4_6
        int64_t v = 0;
        if (gguf_int(g, "clip.vision.image_size", v) && v > 0) slicing->image_size = (int)v;
        if (gguf_int(g, "clip.vision.patch_size", v) && v > 0) slicing->patch_size = (int)v;
        slicing->n_merge = 1;
        if (ptype == "minicpmv4_6") {
            slicing->n_merge = 4;
            if (gguf_int(g, "clip.vision.projector.scale_factor", v) && v > 0) slicing->n_merge = (int)v;
        }
        slicing->keep_small_whole = slicing->n_merge == 2;
    }
    gguf_free(g);

    const int n_embd = llama_model_n_embd_inp(m);
    if (!has_ptype) {
        err = std::string("not a vision projector (no clip.projector_type): ") + mmproj_path;
        return MCV_ERR_MMPROJ_LOAD;
    }
    if (has_fam && fam != f.family) {
        err = "projector is for " + fam + " but the text model is " + f.family;
        return MCV_ERR_MISMATCH;
    }
    if (!f.projector_type.empty() && ptype != f.projector_type) {
        err = "projector type " + ptype + " does not match the text model's " + f.projector_type + " (" + f.family + ")";
        return MCV_ERR_MISMATCH;
    }
    if (f.projector_version > 0 && (!has_version || version != f.projector_version)) {
        err = "projector minicpmv_version " + std::to_string(has_version ? version : 0) + " does not match the text model's " +
              std::to_string(f.projector_version) + " (" + f.family + ")";
        return MCV_ERR_MISMATCH;
    }
    if (has_width && width != n_embd) {
        err = "projector output width " + std::to_string(width) + " != text model n_embd " + std::to_string(n_embd);
        return MCV_ERR_MISMATCH;
    }
    return MCV_OK;
}

}  // namespace mcv
