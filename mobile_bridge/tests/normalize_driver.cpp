// Test driver for src/normalize.cpp (tests/test_normalize.py): reads lines
// "C|D <hex code point>..." from stdin, writes the NFC|NFD code points in hex; a line
// "B <hex byte>..." passes raw bytes through NFC and writes the resulting bytes in hex.
// Everything travels as hex so that any string, newlines included, fits on one line.
#include "../src/normalize.h"

#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

static std::string utf8(const std::vector<unsigned long> &cps) {
    std::string s;
    for (unsigned long cp : cps) {
        if (cp < 0x80) s += (char)cp;
        else if (cp < 0x800) { s += (char)(0xC0 | (cp >> 6)); s += (char)(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) { s += (char)(0xE0 | (cp >> 12)); s += (char)(0x80 | ((cp >> 6) & 0x3F)); s += (char)(0x80 | (cp & 0x3F)); }
        else { s += (char)(0xF0 | (cp >> 18)); s += (char)(0x80 | ((cp >> 12) & 0x3F)); s += (char)(0x80 | ((cp >> 6) & 0x3F)); s += (char)(0x80 | (cp & 0x3F)); }
    }
    return s;
}

int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string mode;
        in >> mode;
        std::vector<unsigned long> cps;
        std::string hex;
        while (in >> hex) cps.push_back(std::stoul(hex, nullptr, 16));
        if (mode == "B") {
            std::string raw;
            for (unsigned long b : cps) raw += (char)b;
            const std::string out = mcv::normalize_nfc(raw);
            for (size_t i = 0; i < out.size(); i++) std::printf(i ? " %X" : "%X", (unsigned char)out[i]);
            std::printf("\n");
            continue;
        }
        const std::string text = utf8(cps);
        const std::string out = mode == "D" ? mcv::normalize_nfd(text) : mcv::normalize_nfc(text);
        // decode the output back to code points (valid UTF-8 by construction)
        const auto *p = reinterpret_cast<const unsigned char *>(out.data());
        bool first = true;
        for (size_t i = 0; i < out.size();) {
            unsigned long cp;
            size_t len = p[i] < 0x80 ? 1 : (p[i] & 0xE0) == 0xC0 ? 2 : (p[i] & 0xF0) == 0xE0 ? 3 : 4;
            cp = len == 1 ? p[i] : len == 2 ? (p[i] & 0x1F) : len == 3 ? (p[i] & 0x0F) : (p[i] & 0x07);
            for (size_t k = 1; k < len; k++) cp = (cp << 6) | (p[i + k] & 0x3F);
            std::printf(first ? "%lX" : " %lX", cp);
            first = false;
            i += len;
        }
        std::printf("\n");
    }
    return 0;
}
