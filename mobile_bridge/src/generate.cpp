// Generation: begin (prefill + sampler), next (one piece), generate (callback loop), cancel.
#include "internal.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

using namespace mcv;

namespace {

std::string token_piece(const llama_vocab *v, llama_token t) {
    char buf[128];
    int32_t n = llama_token_to_piece(v, t, buf, sizeof(buf), 0, true);
    if (n >= 0) return std::string(buf, (size_t)n);
    std::string big((size_t)-n, '\0');
    n = llama_token_to_piece(v, t, &big[0], (int32_t)big.size(), 0, true);
    return n >= 0 ? big.substr(0, (size_t)n) : std::string();
}

// Bytes of `held` that can be released: no split UTF-8 character at the end and no
// suffix that could still grow into a stop string.
size_t releasable(const std::string &held, const std::vector<std::string> &stops) {
    size_t n = held.size(), i = n, cont = 0;
    while (i > 0 && cont < 3 && ((unsigned char)held[i - 1] & 0xC0) == 0x80) i--, cont++;
    if (i > 0) {
        unsigned char c = (unsigned char)held[i - 1];
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        if (need > 1 && n - (i - 1) < need) n = i - 1;
    }
    size_t keep = 0;
    for (const std::string &s : stops)
        for (size_t L = std::min(s.size() - 1, n); L > keep; L--)
            if (held.compare(n - L, L, s, 0, L) == 0) {
                keep = L;
                break;
            }
    return n - keep;
}

// Released text is valid UTF-8: a byte that does not start a well-formed sequence (random
// weights, a reply cut inside a character) becomes U+FFFD. The transcript keeps raw bytes.
std::string valid_utf8(const std::string &in) {
    std::string out;
    out.reserve(in.size());
    for (size_t i = 0; i < in.size();) {
        unsigned char c = (unsigned char)in[i];
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = n > 0 && i + n <= in.size() && !(n == 2 && c < 0xC2) && !(n == 4 && c > 0xF4);
        for (size_t k = 1; ok && k < n; k++) ok = ((unsigned char)in[i + k] & 0xC0) == 0x80;
        if (ok && n == 3) {
            unsigned char d = (unsigned char)in[i + 1];
            ok = !(c == 0xE0 && d < 0xA0) && !(c == 0xED && d >= 0xA0);  // overlong, surrogates
        }
        if (ok && n == 4) {
            unsigned char d = (unsigned char)in[i + 1];
            ok = !(c == 0xF0 && d < 0x90) && !(c == 0xF4 && d >= 0x90);
        }
        if (ok) {
            out.append(in, i, n);
            i += n;
        } else {
            out += "\xEF\xBF\xBD";
            i++;
        }
    }
    return out;
}

void end_with(mcv_session *s, int reason) {
    s->finished = true;
    s->finish = reason;
}

// Produces s->ready (MCV_OK), or MCV_DONE / an error when the reply is over.
int step(mcv_session *s) {
    const mcv_model *m = s->model;
    while (!s->ready_valid) {
        if (s->finished) {
            if (s->held.empty()) return MCV_DONE;
            s->ready.swap(s->held);
            s->held.clear();
            s->ready_valid = true;
            break;
        }
        if (s->cancel.load()) {
            s->to_decode = -1;
            s->held.clear();
            end_with(s, MCV_FINISH_CANCELLED);
            return fail(&s->err, MCV_ERR_CANCELLED, "cancelled");
        }
        if (s->to_decode >= 0) {
            llama_token t = s->to_decode;
            int rc = decode_tokens(s, &t, 1);
            if (rc == MCV_ERR_CANCELLED) continue;  // handled at the top of the loop
            if (rc == MCV_ERR_CONTEXT_FULL) {
                s->to_decode = -1;
                end_with(s, MCV_FINISH_CONTEXT_FULL);
                continue;
            }
            if (rc != MCV_OK) {
                end_with(s, MCV_FINISH_NONE);
                return rc;
            }
            s->evaluated += s->to_decode_piece;
            s->to_decode = -1;
        }
        if (s->max_tokens > 0 && s->n_sampled >= s->max_tokens) {
            end_with(s, MCV_FINISH_LENGTH);
            continue;
        }
        if (s->n_past >= (int32_t)llama_n_ctx(s->lctx)) {
            end_with(s, MCV_FINISH_CONTEXT_FULL);
            continue;
        }
        llama_token t = llama_sampler_sample(s->smpl, s->lctx, -1);
        s->t_last = now_ms();
        if (s->n_sampled++ == 0) s->t_first = s->t_last;
        if (llama_vocab_is_eog(m->vocab, t)) {
            end_with(s, MCV_FINISH_EOG);
            continue;
        }
        std::string piece = token_piece(m->vocab, t);
        s->held += piece;
        size_t cut = std::string::npos;
        for (const std::string &st : m->fmt.stop) cut = std::min(cut, st.empty() ? cut : s->held.find(st));
        if (cut != std::string::npos) {  // the stop string's last token stays out of the KV cache
            s->held.resize(cut);
            end_with(s, MCV_FINISH_STOP_STRING);
            continue;
        }
        s->to_decode = t;
        s->to_decode_piece = piece;
        size_t n = releasable(s->held, m->fmt.stop);
        if (n > 0) {
            s->ready = s->held.substr(0, n);
            s->held.erase(0, n);
            s->ready_valid = true;
        }
    }
    s->ready = valid_utf8(s->ready);
    if (s->ttft_ms == 0) s->ttft_ms = now_ms() - s->t_begin;
    return MCV_OK;
}

int begin(mcv_session *s, const mcv_gen_params *gp) {
    mcv_gen_params p;
    mcv_gen_params_init(&p);
    if (gp) {
        const size_t v1 = offsetof(mcv_gen_params, seed) + sizeof(uint32_t);
        if (gp->struct_size < v1)
            return fail(&s->err, MCV_ERR_INVALID_ARG, "mcv_gen_params.struct_size too small (call mcv_gen_params_init)");
        memcpy(&p, gp, gp->struct_size < sizeof(p) ? gp->struct_size : sizeof(p));
    }
    finish_reply(s);
    s->cancel.store(false);
    s->t_begin = now_ms();
    int32_t n = 0;
    int rc = open_reply(s, s->thinking, &n);  // transcript.cpp: the template's generation prompt
    if (rc != MCV_OK) return rc;
    s->prefill_ms = now_ms() - s->t_begin;
    s->n_prefill = n;
    if (s->smpl) llama_sampler_free(s->smpl);
    llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    s->smpl = llama_sampler_chain_init(cp);
    if (p.temperature <= 0) {
        llama_sampler_chain_add(s->smpl, llama_sampler_init_greedy());
    } else {
        if (p.top_k > 0) llama_sampler_chain_add(s->smpl, llama_sampler_init_top_k(p.top_k));
        if (p.top_p > 0 && p.top_p < 1) llama_sampler_chain_add(s->smpl, llama_sampler_init_top_p(p.top_p, 1));
        llama_sampler_chain_add(s->smpl, llama_sampler_init_temp(p.temperature));
        llama_sampler_chain_add(s->smpl, llama_sampler_init_dist(p.seed));
    }
    s->generating = true;
    s->finished = false;
    s->finish = MCV_FINISH_NONE;
    s->max_tokens = p.max_tokens;
    s->n_sampled = 0;
    s->to_decode = -1;
    s->held.clear();
    s->ready_valid = false;
    s->ttft_ms = s->t_first = s->t_last = 0;
    return MCV_OK;
}

}  // namespace

namespace mcv {
void finish_reply(mcv_session *s) {
    if (!s->generating) return;
    if (s->to_decode >= 0 && !s->cancel.load()) {  // emitted text must be in the KV cache too
        llama_token t = s->to_decode;
        if (decode_tokens(s, &t, 1) == MCV_OK) s->evaluated += s->to_decode_piece;
    }
    s->to_decode = -1;
    s->generating = false;
    s->ready_valid = false;
    s->held.clear();
}
}  // namespace mcv

extern "C" {

void mcv_gen_params_init(mcv_gen_params *p) {
    if (!p) return;
    memset(p, 0, sizeof(*p));
    p->struct_size = sizeof(*p);
    p->max_tokens = 512;
    p->temperature = 0.0f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->seed = 0xFFFFFFFFu;
}

void mcv_session_cancel(mcv_session *s) {
    if (s) s->cancel.store(true);
}

int mcv_session_begin(mcv_session *s, const mcv_gen_params *gp) {
    MCV_GUARD(s);
    return begin(s, gp);
}

int mcv_session_next(mcv_session *s, char *buf, size_t buf_size, size_t *n_out) {
    MCV_GUARD(s);
    if (!n_out || (!buf && buf_size > 0)) return fail(&s->err, MCV_ERR_INVALID_ARG, "n_out is NULL or buf is NULL");
    *n_out = 0;
    if (!s->generating) return fail(&s->err, MCV_ERR_STATE, "call mcv_session_begin first");
    int rc = step(s);
    if (rc != MCV_OK) {
        if (buf && buf_size) buf[0] = '\0';
        return rc;
    }
    if (buf_size < s->ready.size() + 1) {
        *n_out = s->ready.size() + 1;
        return fail(&s->err, MCV_ERR_BUFFER_TOO_SMALL, "buffer too small for the next piece");
    }
    memcpy(buf, s->ready.c_str(), s->ready.size() + 1);
    *n_out = s->ready.size();
    s->ready_valid = false;
    return MCV_OK;
}

int mcv_session_next_alloc(mcv_session *s, char **out) {
    MCV_GUARD(s);
    if (!out) return fail(&s->err, MCV_ERR_INVALID_ARG, "out is NULL");
    *out = nullptr;
    if (!s->generating) return fail(&s->err, MCV_ERR_STATE, "call mcv_session_begin first");
    int rc = step(s);
    if (rc != MCV_OK) return rc;
    char *c = static_cast<char *>(malloc(s->ready.size() + 1));
    if (!c) return fail(&s->err, MCV_ERR_NO_MEMORY, "out of memory");
    memcpy(c, s->ready.c_str(), s->ready.size() + 1);
    s->ready_valid = false;
    *out = c;
    return MCV_OK;
}

int mcv_session_generate(mcv_session *s, const mcv_gen_params *gp, mcv_token_callback cb, void *user_data) {
    MCV_GUARD(s);
    if (!cb) return fail(&s->err, MCV_ERR_INVALID_ARG, "callback is NULL");
    int rc = begin(s, gp);
    if (rc != MCV_OK) return rc;
    for (;;) {
        rc = step(s);
        if (rc == MCV_DONE) break;
        if (rc != MCV_OK) {
            finish_reply(s);
            return rc;
        }
        s->ready_valid = false;
        if (cb(s->ready.data(), s->ready.size(), user_data) != 0) {
            end_with(s, MCV_FINISH_CALLBACK);
            break;
        }
    }
    finish_reply(s);
    return MCV_OK;
}

}  // extern "C"
