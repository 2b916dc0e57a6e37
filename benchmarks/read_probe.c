// A second opinion on the memory read bandwidth that `pyengine bench` probes with numba.
//
// The engine's probe (pyengine/bench/bandwidth.py) sums a 1 GiB uint64 buffer in a numba
// prange loop, in 4 KiB pages. Every "% of the probe" figure in benchmarks/README.md rests on
// it, so this asks whether a hand-written read does better: a 1 GiB buffer in 2 MiB pages
// (MADV_HUGEPAGE, as the engine's weight copy) or 4 KiB pages, summed with 256-bit loads by
// 1..N threads, optionally with software prefetch 4 or 8 KiB ahead; best of 7 passes each.
// If it reads much faster than the numba probe, the engine's "% of the probe" overstates
// how close a decode step is to the bus.
//
//   cc -O2 -mavx2 -pthread benchmarks/read_probe.c -o /tmp/read_probe
//   /tmp/read_probe [MiB=1024] [max threads=2]
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static const char* buf;  // the buffer, 2 MiB aligned
static int prefetch_kib;  // 0: none

typedef struct {
    size_t lo, hi;  // byte range of one thread
    uint64_t sum;
} Share;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void* read_share(void* arg) {
    Share* s = (Share*)arg;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;  // four chains: loads, not adds, bound the loop
    const size_t ahead = (size_t)prefetch_kib << 10;
    for (size_t i = s->lo; i < s->hi; i += 128) {
        if (ahead) _mm_prefetch(buf + i + ahead, _MM_HINT_T0), _mm_prefetch(buf + i + ahead + 64, _MM_HINT_T0);
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i*)(buf + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i*)(buf + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i*)(buf + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i*)(buf + i + 96)));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i*)lanes, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    s->sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    return NULL;
}

// best GB/s (1e9 bytes/s) of 7 passes over n bytes with t threads
static double probe(size_t n, int t) {
    pthread_t th[64];
    Share sh[64];
    double best = 1e30;
    for (int pass = 0; pass < 7; ++pass) {
        const double t0 = now();
        for (int k = 0; k < t; ++k) {
            sh[k].lo = n / (size_t)t * (size_t)k;
            sh[k].hi = n / (size_t)t * (size_t)(k + 1);
            pthread_create(&th[k], NULL, read_share, &sh[k]);
        }
        uint64_t total = 0;
        for (int k = 0; k < t; ++k) pthread_join(th[k], NULL), total += sh[k].sum;
        const double dt = now() - t0;
        if (total != n / 8) fprintf(stderr, "read_probe: summed %llu, expected %zu\n", (unsigned long long)total, n / 8);
        if (dt < best) best = dt;
    }
    return (double)n / best / 1e9;
}

int main(int argc, char** argv) {
    const size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 1024;
    const int maxt = argc > 2 ? atoi(argv[2]) : 2;
    const size_t n = mib << 20, huge = 2u << 20;
    if (maxt < 1 || maxt > 64 || n < huge) return fprintf(stderr, "usage: read_probe [MiB >= 2] [threads 1..64]\n"), 2;
    for (int hp = 0; hp < 2; ++hp) {
        char* raw = mmap(NULL, n + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) return perror("mmap"), 1;
        char* b = (char*)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
        madvise(b, n, hp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
        for (size_t i = 0; i < n; i += 8) *(uint64_t*)(b + i) = 1;  // every page touched; the sum checks the read
        buf = b;
        for (int pf = 0; pf <= 8; pf += 4) {
            prefetch_kib = pf;
            printf("%s pages, prefetch %d KiB:", hp ? "2 MiB" : "4 KiB", pf);
            for (int t = 1; t <= maxt; t *= 2) printf("  %d thread%s %.1f GB/s", t, t > 1 ? "s" : " ", probe(n, t));
            printf("\n");
            fflush(stdout);
        }
        munmap(raw, n + huge);
    }
    return 0;
}
