// A persistent fork-join thread pool: workers are started once and then spin
// (briefly) or sleep between jobs, so a kernel call costs no thread creation.
//
//   pyengine::ThreadPool::instance().run([&](int tid, int nth) { ... });
//
// run() executes fn(tid, nth) on nth threads (the caller is tid 0) and returns
// when all have finished. parallel_for() hands out chunks dynamically and does not
// wait for a worker that has not started yet (on a busy machine a descheduled worker
// would otherwise stall every call): the caller takes the chunks it leaves.
// Calls from different Python threads are serialised; calling run() or
// parallel_for() from inside a job is not allowed (it would deadlock).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace pyengine {

class ThreadPool {
public:
    static ThreadPool& instance();

    static constexpr int kMaxThreads = 256;  // set_num_threads caps here; parallel_shares' share slots

    // Number of threads a job uses by default (including the caller). n <= 0: all cores (at most kMaxThreads).
    void set_num_threads(int n);
    int num_threads() const { return n_threads_; }

    // How long an idle worker spins before it sleeps on a condition variable.
    void set_spin_us(int us) { spin_us_.store(us < 0 ? 0 : us, std::memory_order_relaxed); }
    int spin_us() const { return spin_us_.load(std::memory_order_relaxed); }

    void run(const std::function<void(int tid, int nth)>& fn, int nth = 0);

    // Split [0, n) into chunks of `chunk` handed out dynamically: fn(begin, end, tid).
    void parallel_for(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t, int)>& fn,
                      int nth = 0);

    // [0, n) in nth contiguous shares, share s = [bounds[s], bounds[s + 1]), each run front to back
    // by thread s in batches of `grain` (fn(begin, end, tid) per batch). A thread whose share is
    // done takes the upper half of the largest share left (all of it when under two batches)
    // and goes on with that, so a slower, busier or late thread holds up the call by about one
    // batch instead of the rest of its share, while every thread still reads one long run of
    // memory (what the one-token matmuls need for their prefetch streams). Shares beyond the
    // pool's threads are taken the same way. Bounds at 2^31 or more (or over kMaxThreads shares): each
    // share runs whole, as parallel_for's chunks.
    void parallel_shares(const int64_t* bounds, int nth, int64_t grain,
                         const std::function<void(int64_t, int64_t, int)>& fn);

    ~ThreadPool();

private:
    ThreadPool();
    void resize(int n_workers);  // workers besides the caller
    void stop_workers();
    void worker_main(int id);

    int n_threads_ = 1;
    std::vector<std::thread> workers_;
    std::mutex run_mutex_;  // one job at a time

    void dispatch(const std::function<void(int, int)>& fn, int nth, bool all_must_run);

    // Job hand-off. A job is open while open_gen_ == its generation; a worker runs it
    // only if it registers in running_ while the job is still open.
    std::atomic<uint64_t> generation_{0};
    std::atomic<uint64_t> open_gen_{0};
    std::atomic<int> running_{0};
    std::atomic<int> done_{0};  // workers that finished the current job
    std::atomic<int> active_{0};
    std::atomic<bool> stop_{false};
    std::atomic<int> spin_us_{200};
    const std::function<void(int, int)>* job_ = nullptr;
    struct alignas(64) Share {
        std::atomic<uint64_t> range{0};  // next << 32 | end
    };
    Share shares_[kMaxThreads];  // parallel_shares' state (one call at a time, under run_mutex_)
    std::mutex sleep_mutex_;
    std::condition_variable sleep_cv_;
};

}  // namespace pyengine
