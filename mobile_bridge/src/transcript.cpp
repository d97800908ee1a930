// The conversation text as the model's own chat template renders it (the bridge cannot run
// jinja; the template's behaviour comes as PromptFormat facts, prompt.cpp). MiniCPM-V's
// templates are ChatML with three twists that matter here:
//  - default system turn when the first message is not a system one (2.6, Qwen2's template);
//  - message text through jinja's |trim (4.6): Python's str.strip() whitespace set;
//  - answers before the last user message lose the thinking prefix and everything up to the
//    last </think> (4.5, 4.6). The KV cache holds the answer as generated, so when the next
//    message closes it the cache is cut back to the answer's start (llama_memory_seq_rm, or
//    for recurrent models the sequence state saved there) and the history form re-evaluated.
// tests/test_bridge_prompt.py compares these bytes with the jinja rendering.
#include "internal.h"

#include <cstring>

namespace mcv {
namespace {

const char *role_name(int r) { return r == MCV_ROLE_SYSTEM ? "system" : r == MCV_ROLE_USER ? "user" : "assistant"; }

// Python's str.isspace() (Py_UNICODE_ISSPACE): what jinja's |trim and str.strip() remove.
bool py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// The code point of the UTF-8 sequence at s[i..] and its length (a broken byte: itself, not space).
uint32_t decode_at(const std::string &s, size_t i, size_t &len) {
    const unsigned char c = (unsigned char)s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) {
        len = 1;
        return 0xFFFD;
    }
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (size_t k = 1; k < n; k++) {
        if (((unsigned char)s[i + k] & 0xC0) != 0x80) {
            len = 1;
            return 0xFFFD;
        }
        cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3F);
    }
    len = n;
    return cp;
}

// First byte at or after `from` that is not Python whitespace.
size_t skip_space(const std::string &s, size_t from) {
    size_t len = 1;
    while (from < s.size() && py_space(decode_at(s, from, len))) from += len;
    return from;
}

// End of `s` without trailing Python whitespace, never below `floor`.
size_t trim_end(const std::string &s, size_t floor) {
    size_t end = s.size();
    while (end > floor) {
        size_t start = end - 1;
        while (start > floor && ((unsigned char)s[start] & 0xC0) == 0x80) start--;
        size_t len = 1;
        if (!py_space(decode_at(s, start, len)) || start + len != end) break;
        end = start;
    }
    return end;
}

std::string py_strip(const std::string &s) {
    size_t a = skip_space(s, 0);
    return s.substr(a, trim_end(s, a) - a);
}

// Where the open turn's content starts inside `pending` (0 when it started in `evaluated`).
size_t content_floor(const mcv_session *s) {
    return s->content_at >= s->evaluated.size() ? s->content_at - s->evaluated.size() : 0;
}

bool can_cut(const mcv_session *s) {
    return !llama_model_is_recurrent(s->model->lm) && !llama_model_is_hybrid(s->model->lm);
}

// Puts the KV cache back at `pos` (<= n_past): removes later cells, or restores `state` (taken
// at `pos`) for recurrent memory, which cannot cut in the middle.
bool cut_back(mcv_session *s, int32_t pos, const std::vector<uint8_t> &state) {
    llama_memory_t mem = llama_get_memory(s->lctx);
    if (can_cut(s)) {
        if (!llama_memory_seq_rm(mem, 0, pos, -1)) return false;
    } else {
        llama_memory_clear(mem, true);
        if (state.empty() || llama_state_seq_set_data(s->lctx, state.data(), state.size(), 0) != state.size())
            return false;
    }
    s->n_past = pos;
    return true;
}

void forget_reply(mcv_session *s) {
    s->reply_pos = -1;
    s->reply_text = 0;
    s->reply_prefix.clear();
    s->reply_state.clear();
    s->reply_state.shrink_to_fit();
}

// Opens (or continues) a turn of `role` for one more content part.
void start_part(mcv_session *s, int role) {
    const PromptFormat &f = s->model->fmt;
    if (s->evaluated.empty() && s->pending.empty() && role != MCV_ROLE_SYSTEM && !f.default_system.empty())
        s->pending += format_field(f.turn_prefix, "role", "system") + f.default_system + f.turn_suffix;
    if (s->reply_open || s->open_role != role) {
        close_turn(s);
        s->pending += format_field(f.turn_prefix, "role", role_name(role));
        s->open_role = s->last_role = role;
        s->open_parts = 0;
        s->content_at = s->evaluated.size() + s->pending.size();
        s->content_started = false;
    }
    if (s->open_parts > 0) s->pending += f.separator;
    s->open_parts++;
}
}  // namespace

std::string history_reply(const PromptFormat &f, const std::string &reply) {
    std::string content = f.trim_content ? py_strip(reply) : reply;
    size_t k = f.strip_history ? content.rfind(f.think_close) : std::string::npos;
    if (k != std::string::npos) {  // content.split('</think>')[-1].lstrip('\n')
        k += f.think_close.size();
        while (k < content.size() && content[k] == '\n') k++;
        content.erase(0, k);
    }
    return content;
}

size_t evaluable_prefix(const mcv_session *s) {
    if (s->open_role < 0) return s->pending.size();
    const size_t floor = content_floor(s);
    if (s->open_role == MCV_ROLE_ASSISTANT && !s->reply_open) return floor;  // close_turn rewrites it
    return s->model->fmt.trim_content ? trim_end(s->pending, floor) : s->pending.size();
}

int append_part(mcv_session *s, int role, const std::string &text) {
    if (role == MCV_ROLE_SYSTEM && s->last_role != -1 && s->open_role != MCV_ROLE_SYSTEM)
        return fail(&s->err, MCV_ERR_INVALID_ARG, "a system message must come first (the chat template allows "
                                                  "one, at the start)");
    start_part(s, role);
    s->pending += text;
    if (s->model->fmt.trim_content && !s->content_started) {  // |trim: no leading whitespace
        const size_t floor = content_floor(s);
        s->pending.erase(floor, skip_space(s->pending, floor) - floor);
        s->content_started = s->pending.size() > floor;
    }
    return MCV_OK;
}

void close_turn(mcv_session *s) {
    const PromptFormat &f = s->model->fmt;
    if (s->open_role < 0) return;
    if (s->reply_open && s->reply_pos >= 0) {
        const size_t start = s->reply_text + s->reply_prefix.size();
        const std::string reply = s->evaluated.substr(start < s->evaluated.size() ? start : s->evaluated.size()) + s->pending;
        const std::string hist = history_reply(f, reply);
        if (!s->reply_prefix.empty() || hist != reply) {  // the cache holds what the template drops
            if (cut_back(s, s->reply_pos, s->reply_state)) {
                s->evaluated.resize(s->reply_text);
                s->pending = hist;
            } else {
                llama_memory_clear(llama_get_memory(s->lctx), true);
                s->needs_reset = true;
            }
        }
        forget_reply(s);
    } else if (s->open_role == MCV_ROLE_ASSISTANT) {  // an answer given as text: its history form
        const size_t floor = content_floor(s);
        s->pending = s->pending.substr(0, floor) + history_reply(f, s->pending.substr(floor));
    } else if (f.trim_content) {
        s->pending.resize(trim_end(s->pending, content_floor(s)));
    }
    s->pending += f.turn_suffix;
    s->open_role = -1;
    s->open_parts = 0;
    s->reply_open = false;
}

int open_reply(mcv_session *s, bool thinking, int32_t *n_prefill) {
    const PromptFormat &f = s->model->fmt;
    if (s->last_role != MCV_ROLE_USER)
        return fail(&s->err, MCV_ERR_STATE, "add a user message first: the chat template renders a reply only "
                                            "after a user turn");
    const std::string saved = s->pending, saved_eval = s->evaluated;
    const int saved_role = s->open_role, saved_parts = s->open_parts;
    const int32_t saved_past = s->n_past;
    close_turn(s);
    s->pending += format_field(f.turn_prefix, "role", "assistant");
    int32_t n1 = 0, n2 = 0;
    int rc = eval_pending(s, nullptr, &n1);
    if (rc == MCV_OK) {
        s->reply_pos = s->n_past;
        s->reply_text = s->evaluated.size();
        s->reply_prefix = f.thinking_supported ? (thinking ? f.thinking_prefix_on : f.thinking_prefix_off) : "";
        s->reply_state.clear();
        if (!can_cut(s) && (!s->reply_prefix.empty() || f.strip_history || f.trim_content)) {
            s->reply_state.resize(llama_state_seq_get_size(s->lctx, 0));
            s->reply_state.resize(llama_state_seq_get_data(s->lctx, s->reply_state.data(), s->reply_state.size(), 0));
        }
        s->pending = s->reply_prefix;
        if (!s->pending.empty()) rc = eval_pending(s, nullptr, &n2);
        if (rc != MCV_OK) {  // back to before this call: cut the turn closing and the prefix off again
            std::vector<uint8_t> none;
            if (s->needs_reset || !cut_back(s, saved_past, none)) s->needs_reset = true;
            forget_reply(s);
        }
    }
    if (rc != MCV_OK) {
        s->pending = saved;
        s->evaluated = saved_eval;
        s->open_role = saved_role;
        s->open_parts = saved_parts;
        if (!s->needs_reset) s->n_past = saved_past;
        return rc;
    }
    s->open_role = s->last_role = MCV_ROLE_ASSISTANT;
    s->open_parts = 1;
    s->reply_open = true;
    if (n_prefill) *n_prefill = n1 + n2;
    return MCV_OK;
}

std::string transcript(const mcv_session *s, bool with_generation_prefix) {
    const PromptFormat &f = s->model->fmt;
    std::string t = s->evaluated + s->pending;
    if (!with_generation_prefix) return t;
    if (s->open_role >= 0) {  // close the open turn as the next message would
        if (s->reply_open && s->reply_pos >= 0) {
            const size_t start = s->reply_text + s->reply_prefix.size();
            t = s->evaluated.substr(0, s->reply_text) +
                history_reply(f, start < t.size() ? t.substr(start) : std::string());
        } else if (s->open_role == MCV_ROLE_ASSISTANT) {
            const size_t floor = s->evaluated.size() + content_floor(s);
            t = t.substr(0, floor) + history_reply(f, t.substr(floor));
        } else if (f.trim_content) {
            t.resize(s->evaluated.size() + trim_end(s->pending, content_floor(s)));
        }
        t += f.turn_suffix;
    }
    t += format_field(f.turn_prefix, "role", "assistant");
    if (f.thinking_supported) t += s->thinking ? f.thinking_prefix_on : f.thinking_prefix_off;
    return t;
}

void clear_transcript(mcv_session *s) {
    s->evaluated.clear();
    s->pending.clear();
    s->open_role = s->last_role = -1;
    s->open_parts = 0;
    s->content_at = 0;
    s->content_started = false;
    s->reply_open = false;
    forget_reply(s);
}

}  // namespace mcv
