#include "threadpool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax() { __asm__ __volatile__("yield"); }
#else
static inline void cpu_relax() {}
#endif

namespace pyengine {

ThreadPool& ThreadPool::instance() {
    // Leaked on purpose: joining threads from a static destructor at interpreter exit is fragile.
    static ThreadPool* pool = new ThreadPool();
    return *pool;
}

ThreadPool::ThreadPool() {
    if (const char* s = std::getenv("PYENGINE_SPIN_US")) spin_us_ = std::atoi(s);
    int n = 0;
    if (const char* s = std::getenv("PYENGINE_NUM_THREADS")) n = std::atoi(s);
    set_num_threads(n);
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::set_num_threads(int n) {
    if (n <= 0) {
        unsigned hc = std::thread::hardware_concurrency();
        n = hc ? (int)hc : 1;
    }
    if (n > kMaxThreads) n = kMaxThreads;
    std::lock_guard<std::mutex> lk(run_mutex_);
    if (n - 1 != (int)workers_.size()) resize(n - 1);
    n_threads_ = n;
}

void ThreadPool::stop_workers() {
    {
        std::lock_guard<std::mutex> lk(sleep_mutex_);
        stop_.store(true, std::memory_order_seq_cst);
    }
    sleep_cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_.store(false);
}

void ThreadPool::resize(int n_workers) {
    stop_workers();
    generation_.store(0);
    for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this, i] { worker_main(i + 1); });
}

void ThreadPool::worker_main(int id) {
    uint64_t seen = 0;
    for (;;) {
        // Spin first: back-to-back kernel calls (a decode step) find us awake.
        auto t0 = std::chrono::steady_clock::now();
        const auto budget = std::chrono::microseconds(spin_us_.load(std::memory_order_relaxed));
        for (int i = 0; generation_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_relaxed); ++i) {
            cpu_relax();
            if ((i & 255) == 255 && std::chrono::steady_clock::now() - t0 > budget) {
                std::unique_lock<std::mutex> lk(sleep_mutex_);
                sleep_cv_.wait(lk, [&] {
                    return generation_.load(std::memory_order_acquire) != seen || stop_.load();
                });
                break;
            }
        }
        if (stop_.load()) return;
        seen = generation_.load(std::memory_order_acquire);
        // Register, then check the job is still open (seq_cst pairs with the caller's
        // close-then-drain in dispatch()): either we are counted, or we see it closed.
        running_.fetch_add(1, std::memory_order_seq_cst);
        if (open_gen_.load(std::memory_order_seq_cst) == seen) {
            const int nth = active_.load(std::memory_order_relaxed);
            if (id < nth) {
                (*job_)(id, nth);
                done_.fetch_add(1, std::memory_order_acq_rel);
            }
        }
        running_.fetch_sub(1, std::memory_order_release);
    }
}

void ThreadPool::dispatch(const std::function<void(int, int)>& fn, int nth, bool all_must_run) {
    job_ = &fn;
    active_.store(nth, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    {
        // Bump under the sleep mutex so a worker about to sleep cannot miss it.
        std::lock_guard<std::mutex> slk(sleep_mutex_);
        const uint64_t g = generation_.load(std::memory_order_relaxed) + 1;
        open_gen_.store(g, std::memory_order_seq_cst);
        generation_.store(g, std::memory_order_seq_cst);
    }
    sleep_cv_.notify_all();
    fn(0, nth);
    if (all_must_run)
        while (done_.load(std::memory_order_acquire) != nth - 1) cpu_relax();
    open_gen_.store(0, std::memory_order_seq_cst);  // close: late workers skip it
    while (running_.load(std::memory_order_seq_cst) != 0) cpu_relax();
    job_ = nullptr;
}

void ThreadPool::run(const std::function<void(int, int)>& fn, int nth) {
    std::lock_guard<std::mutex> lk(run_mutex_);
    const int max_t = (int)workers_.size() + 1;
    if (nth <= 0 || nth > max_t) nth = max_t;
    if (nth == 1) {
        fn(0, 1);
        return;
    }
    dispatch(fn, nth, true);
}

void ThreadPool::parallel_for(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t, int)>& fn,
                              int nth) {
    if (n <= 0) return;
    if (chunk <= 0) chunk = 1;
    std::atomic<int64_t> next{0};
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    std::lock_guard<std::mutex> lk(run_mutex_);
    int want = nth <= 0 ? n_threads_ : nth;
    if (want > (int)workers_.size() + 1) want = (int)workers_.size() + 1;
    if (want > n_chunks) want = (int)n_chunks;
    const std::function<void(int, int)> body = [&](int tid, int) {
        for (;;) {
            const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
            if (c >= n_chunks) break;
            const int64_t b = c * chunk;
            fn(b, b + chunk < n ? b + chunk : n, tid);
        }
    };
    if (want <= 1)
        body(0, 1);
    else
        dispatch(body, want, false);
}

void ThreadPool::parallel_shares(const int64_t* bounds, int nth, int64_t grain,
                                 const std::function<void(int64_t, int64_t, int)>& fn) {
    if (nth <= 0 || bounds[nth] <= bounds[0]) return;
    if (nth > kMaxThreads || bounds[0] < 0 || bounds[nth] >= ((int64_t)1 << 31)) {
        // beyond what a share's packed (next, end) holds: each share whole, no taking over
        parallel_for(nth, 1, [&](int64_t s0, int64_t s1, int tid) {
            for (int64_t s = s0; s < s1; ++s)
                if (bounds[s + 1] > bounds[s]) fn(bounds[s], bounds[s + 1], tid);
        }, std::min(nth, kMaxThreads));
        return;
    }
    if (grain < 1) grain = 1;
    std::lock_guard<std::mutex> lk(run_mutex_);
    int want = 0;  // threads: no more than the shares that hold rows (as parallel_for's chunks)
    for (int s = 0; s < nth; ++s) want += bounds[s + 1] > bounds[s];
    if (want > (int)workers_.size() + 1) want = (int)workers_.size() + 1;
    auto pack = [](int64_t a, int64_t b) { return (uint64_t)a << 32 | (uint64_t)b; };
    for (int s = 0; s < nth; ++s) shares_[s].range.store(pack(bounds[s], bounds[s + 1]), std::memory_order_relaxed);
    const int n_shares = nth;
    const std::function<void(int, int)> body = [&](int tid, int) {
        int mine = tid;
        for (;;) {
            // batches from the front of my share (a thief may have shortened it: CAS)
            std::atomic<uint64_t>& slot = shares_[mine].range;
            uint64_t v = slot.load(std::memory_order_acquire);
            for (;;) {
                const int64_t a = (int64_t)(v >> 32), b = (int64_t)(v & 0xffffffffu);
                if (a >= b) break;
                const int64_t e = b - a > grain ? a + grain : b;
                if (slot.compare_exchange_weak(v, pack(e, b), std::memory_order_acq_rel)) {
                    fn(a, e, tid);
                    v = slot.load(std::memory_order_acquire);
                }
            }
            // mine is done: the upper half of the largest share left becomes mine
            int victim = -1;
            int64_t most = 0;
            for (int s = 0; s < n_shares; ++s) {
                const uint64_t w = shares_[s].range.load(std::memory_order_acquire);
                const int64_t left = (int64_t)(w & 0xffffffffu) - (int64_t)(w >> 32);
                if (left > most) most = left, victim = s;
            }
            if (victim < 0) return;
            uint64_t w = shares_[victim].range.load(std::memory_order_acquire);
            const int64_t a = (int64_t)(w >> 32), b = (int64_t)(w & 0xffffffffu);
            if (a >= b) continue;
            const int64_t mid = b - a >= 2 * grain ? a + (b - a) / 2 : a;
            if (!shares_[victim].range.compare_exchange_strong(w, pack(a, mid), std::memory_order_acq_rel)) continue;
            // my own share is empty, and nobody takes from an empty share: a plain store
            shares_[mine].range.store(pack(mid, b), std::memory_order_release);
        }
    };
    if (want <= 1)
        body(0, 1);
    else
        dispatch(body, want, false);
}

}  // namespace pyengine
