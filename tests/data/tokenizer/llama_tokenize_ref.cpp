// Reference token ids from llama.cpp's public API, for tests/data/tokenizer/*.json.
// Reads texts from stdin (each one as: 8 hex digits of its byte length, then the bytes) and
// writes one line per text and mode: "<add_special> <parse_special> <ids...>|<hex of
// llama_detokenize(ids, remove_special=false, unparse_special=true)>".
// Build: g++ -O1 -std=c++17 llama_tokenize_ref.cpp -I<llama.cpp>/include -I<llama.cpp>/ggml/include
//        -L<build>/bin -lllama -o llama_tokenize_ref
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

static void quiet(ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s vocab.gguf < texts\n", argv[0]);
        return 1;
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    char head[9] = {0};
    while (fread(head, 1, 8, stdin) == 8) {
        size_t n = strtoul(head, nullptr, 16);
        std::string text(n, '\0');
        if (n && fread(&text[0], 1, n, stdin) != n) {
            return 2;
        }
        for (int mode = 0; mode < 2; ++mode) {
            bool add_special = mode == 1, parse_special = mode == 1;
            std::vector<llama_token> ids(text.size() + 16);
            int k = llama_tokenize(vocab, text.data(), (int) text.size(), ids.data(), (int) ids.size(),
                                   add_special, parse_special);
            if (k < 0) {
                ids.resize(-k);
                k = llama_tokenize(vocab, text.data(), (int) text.size(), ids.data(), (int) ids.size(),
                                   add_special, parse_special);
            }
            ids.resize(k);
            std::string out(text.size() * 4 + 256, '\0');
            int m = llama_detokenize(vocab, ids.data(), k, &out[0], (int) out.size(), false, true);
            if (m < 0) {
                out.resize(-m);
                m = llama_detokenize(vocab, ids.data(), k, &out[0], (int) out.size(), false, true);
            }
            out.resize(m);
            printf("%d %d", (int) add_special, (int) parse_special);
            for (auto t : ids) printf(" %d", t);
            printf("|");
            for (unsigned char c : out) printf("%02x", c);
            printf("\n");
        }
    }
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
