// NFC / NFD (UAX #15) over tables generated from Python's unicodedata
// (tools/gen_normalize_tables.py). Written by hand because the bridge links only
// llama.cpp, whose tokenizer does not normalize, and pulling ICU onto phones for
// one function is out of proportion; tests/test_normalize.py compares this code with
// unicodedata.normalize over thousands of strings.
#include "normalize.h"

#include "normalize_tables.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace mcv {
namespace {

using namespace nfc_tables;

// Hangul syllables compose and decompose arithmetically (Unicode 3.12).
constexpr uint32_t S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7;
constexpr uint32_t L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT,
                   S_COUNT = L_COUNT * N_COUNT;

uint8_t ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    const Ccc *end = kCcc + sizeof(kCcc) / sizeof(kCcc[0]);
    const Ccc *it = std::lower_bound(kCcc, end, cp, [](const Ccc &e, uint32_t v) { return e.cp < v; });
    return it != end && it->cp == cp ? it->ccc : 0;
}

void decompose_into(uint32_t cp, std::vector<uint32_t> &out) {
    if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
        const uint32_t s = cp - S_BASE;
        out.push_back(L_BASE + s / N_COUNT);
        out.push_back(V_BASE + (s % N_COUNT) / T_COUNT);
        if (s % T_COUNT) out.push_back(T_BASE + s % T_COUNT);
        return;
    }
    if (cp >= 0xC0) {
        const Decomp *end = kDecomp + sizeof(kDecomp) / sizeof(kDecomp[0]);
        const Decomp *it = std::lower_bound(kDecomp, end, cp, [](const Decomp &e, uint32_t v) { return e.cp < v; });
        if (it != end && it->cp == cp) {
            out.insert(out.end(), kDecompData + it->offset, kDecompData + it->offset + it->length);
            return;
        }
    }
    out.push_back(cp);
}

// 0 when (a, b) has no primary composite.
uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE && b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    const Pair *end = kPairs + sizeof(kPairs) / sizeof(kPairs[0]);
    const Pair *it = std::lower_bound(kPairs, end, std::make_pair(a, b), [](const Pair &e, std::pair<uint32_t, uint32_t> v) {
        return e.first < v.first || (e.first == v.first && e.second < v.second);
    });
    return it != end && it->first == a && it->second == b ? it->composite : 0;
}

bool decode_utf8(const std::string &s, std::vector<uint32_t> &out) {
    const auto *p = reinterpret_cast<const unsigned char *>(s.data());
    const size_t n = s.size();
    for (size_t i = 0; i < n;) {
        const unsigned c = p[i];
        uint32_t cp;
        size_t len;
        if (c < 0x80) { cp = c; len = 1; }
        else if ((c & 0xE0) == 0xC0) { cp = c & 0x1F; len = 2; }
        else if ((c & 0xF0) == 0xE0) { cp = c & 0x0F; len = 3; }
        else if ((c & 0xF8) == 0xF0) { cp = c & 0x07; len = 4; }
        else return false;
        if (i + len > n) return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) return false;
        out.push_back(cp);
        i += len;
    }
    return true;
}

void encode_utf8(const std::vector<uint32_t> &cps, std::string &out) {
    out.clear();
    out.reserve(cps.size() * 2);
    for (uint32_t cp : cps) {
        if (cp < 0x80) {
            out += (char)cp;
        } else if (cp < 0x800) {
            out += (char)(0xC0 | (cp >> 6));
            out += (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += (char)(0xE0 | (cp >> 12));
            out += (char)(0x80 | ((cp >> 6) & 0x3F));
            out += (char)(0x80 | (cp & 0x3F));
        } else {
            out += (char)(0xF0 | (cp >> 18));
            out += (char)(0x80 | ((cp >> 12) & 0x3F));
            out += (char)(0x80 | ((cp >> 6) & 0x3F));
            out += (char)(0x80 | (cp & 0x3F));
        }
    }
}

bool is_ascii(const std::string &s) {
    for (unsigned char c : s)
        if (c >= 0x80) return false;
    return true;
}

// Full canonical decomposition, then the canonical ordering of every run of non-starters.
bool decompose(const std::string &text, std::vector<uint32_t> &out) {
    std::vector<uint32_t> cps;
    if (!decode_utf8(text, cps)) return false;
    out.clear();
    out.reserve(cps.size() + 8);
    for (uint32_t cp : cps) decompose_into(cp, out);
    for (size_t i = 0; i < out.size();) {
        if (ccc_of(out[i]) == 0) { i++; continue; }
        size_t j = i;
        while (j < out.size() && ccc_of(out[j]) != 0) j++;
        std::stable_sort(out.begin() + i, out.begin() + j, [](uint32_t a, uint32_t b) { return ccc_of(a) < ccc_of(b); });
        i = j;
    }
    return true;
}

}  // namespace

std::string normalize_nfd(const std::string &text) {
    if (is_ascii(text)) return text;
    std::vector<uint32_t> cps;
    if (!decompose(text, cps)) return text;
    std::string out;
    encode_utf8(cps, out);
    return out;
}

std::string normalize_nfc(const std::string &text) {
    if (is_ascii(text)) return text;
    std::vector<uint32_t> cps;
    if (!decompose(text, cps)) return text;
    // canonical composition: each character joins the last starter unless a character
    // in between blocks it (same or higher combining class, or a starter)
    size_t starter = SIZE_MAX, w = 0;
    int last_ccc = -1;
    for (size_t r = 0; r < cps.size(); r++) {
        const uint32_t cp = cps[r];
        const int c = ccc_of(cp);
        if (starter != SIZE_MAX && (last_ccc < c || (last_ccc == 0 && w == starter + 1))) {
            if (uint32_t comp = compose_pair(cps[starter], cp)) {
                cps[starter] = comp;
                continue;
            }
        }
        if (c == 0) {
            starter = w;
            last_ccc = 0;
        } else {
            last_ccc = c;
        }
        cps[w++] = cp;
    }
    cps.resize(w);
    std::string out;
    encode_utf8(cps, out);
    return out;
}

bool normalize_for(NormForm form, const std::string &text, std::string &out) {
    switch (form) {
        case NormForm::None: out = text; return true;
        case NormForm::NFC: out = normalize_nfc(text); return true;
        case NormForm::NFD: out = normalize_nfd(text); return true;
        default: out = text; return false;
    }
}

}  // namespace mcv
