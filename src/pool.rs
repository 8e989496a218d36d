//! A small fork-join pool for the per-token hot loops: persistent workers that spin briefly
//! between jobs, as ggml's threads do, instead of rayon's sleep and wake-up per parallel loop.
//!
//! Why: decoding one token of the tiny Qwen3-MoE (6 layers, 256-wide matrices) is about a
//! hundred small matrix products of a few microseconds each. Through rayon, two threads were
//! slower than one (quiet machine, 2026-11-29: tg128 1597 t/s at 2 threads, 1834 at 1), so every
//! product under 2^18 multiply-adds had been kept on the calling thread. Handing a job to a
//! worker that is already spinning costs a store and a cache-line transfer, well under a
//! microsecond. A worker the OS has not scheduled yet cannot hold the caller up either: when the
//! caller has run out of tasks it takes back every job not yet picked up. Measured at load 21
//! (2026-11-29, tiny MoE, `scripts/bench-vs-llamacpp.sh -t 2`): llama.cpp's spinning threads
//! fell to 7 t/s in decode, dsrun's pool gave 866; without the take-back it fell to 34 t/s at
//! load 7. Quiet-machine figures against rayon are still to be taken (README.md, MoE speed).
//!
//! [`run`] runs `n_tasks` calls `f(0..n_tasks)` on the calling thread and up to
//! `rayon::current_num_threads() - 1` workers (so `dsrun -t N` and `rayon::ThreadPool::install`
//! set it), taking task indices from a shared counter, and returns when all are done. Calls made
//! while the pool is busy (from inside a task, or from another thread at the same time) run
//! serially on their own thread, so the pool never deadlocks and never nests. Each task must
//! write only its own part of any output; results therefore do not depend on the thread count.
//!
//! Workers are started on first use and live for the whole process; after [`SPIN`] without a job
//! they sleep on a condition variable, so an idle process does not burn CPU.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Most threads a job uses (the caller included).
const MAX_THREADS: usize = 64;

/// How long a worker spins for the next job before it sleeps: longer than the gaps between the
/// products of one decoded token (a few microseconds of attention or routing on the caller),
/// short enough that a process between tokens or prompts soon stops taking CPU.
const SPIN: Duration = Duration::from_micros(200);

/// One job: the closure (borrowed from [`run`]'s caller, lifetime erased), its task counter, and
/// how many workers have not finished with it yet.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n_tasks: usize,
    next: AtomicUsize,
    pending: AtomicUsize,
    panicked: AtomicBool,
}

impl Job {
    /// Takes and runs tasks until none is left.
    fn work(&self) {
        // SAFETY: `run` keeps the closure alive until `pending` reaches zero, and a worker only
        // calls `work` before it decrements `pending`.
        let f = unsafe { &*self.f };
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n_tasks {
                break;
            }
            f(i);
        }
    }
}

/// A worker's mailbox: the job it should join, or null.
struct Slot {
    job: AtomicPtr<Job>,
    sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

struct Pool {
    slots: [OnceLock<&'static Slot>; MAX_THREADS - 1],
    busy: AtomicBool,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        slots: std::array::from_fn(|_| OnceLock::new()),
        busy: AtomicBool::new(false),
    })
}

/// Worker `i`'s slot, starting the worker on first use; `None` if the thread cannot be started.
fn slot(i: usize) -> Option<&'static Slot> {
    let cell = &pool().slots[i];
    if let Some(s) = cell.get() {
        return Some(s);
    }
    let s: &'static Slot = Box::leak(Box::new(Slot {
        job: AtomicPtr::new(std::ptr::null_mut()),
        sleeping: AtomicBool::new(false),
        lock: Mutex::new(()),
        wake: Condvar::new(),
    }));
    std::thread::Builder::new()
        .name(format!("dsrun-pool-{}", i + 1))
        .spawn(move || worker(s))
        .ok()?;
    // Only `run` (holding `busy`) starts workers, so the cell is still empty here.
    let _ = cell.set(s);
    Some(s)
}

fn worker(slot: &'static Slot) {
    loop {
        let job = wait_for_job(slot);
        // SAFETY: the job stays alive until this worker decrements `pending` (below).
        let job = unsafe { &*job };
        if catch_unwind(AssertUnwindSafe(|| job.work())).is_err() {
            job.panicked.store(true, Ordering::Relaxed);
        }
        job.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Spins for [`SPIN`], then sleeps, until a job is posted; takes it out of the slot.
fn wait_for_job(slot: &Slot) -> *const Job {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let job = slot.job.swap(std::ptr::null_mut(), Ordering::Acquire);
        if !job.is_null() {
            return job;
        }
        std::hint::spin_loop();
        spins += 1;
        if spins.is_multiple_of(256) && start.elapsed() > SPIN {
            break;
        }
    }
    // `sleeping` and `job` are both SeqCst on both sides: either the poster sees `sleeping` and
    // wakes us (under the lock, after we wait or before we check), or we see its job here.
    let mut guard = slot.lock.lock().unwrap_or_else(|e| e.into_inner());
    slot.sleeping.store(true, Ordering::SeqCst);
    loop {
        let job = slot.job.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !job.is_null() {
            slot.sleeping.store(false, Ordering::SeqCst);
            return job;
        }
        guard = slot.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
    }
}

/// Threads a job started now may use: rayon's current thread count, at most [`MAX_THREADS`].
pub fn threads() -> usize {
    rayon::current_num_threads().clamp(1, MAX_THREADS)
}

/// Runs `f(i)` for every `i` in `0..n_tasks`, spread over the calling thread and the pool's
/// workers; returns when all calls have returned. A panic in any task is raised again here,
/// after every worker has left the job.
pub fn run(n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let n_threads = threads().min(n_tasks);
    let pool = pool();
    if n_threads <= 1
        || pool
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        (0..n_tasks).for_each(f);
        return;
    }
    // SAFETY (of the lifetime change): workers use `f` only through `job`, and this function
    // does not return, nor unwind, before every worker that took `job` has finished with it
    // (`Finish` waits for `pending` to reach zero in either case).
    let f: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
    let job = Job {
        f,
        n_tasks,
        next: AtomicUsize::new(0),
        pending: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    };
    let mut finish = Finish {
        job: &job,
        pool,
        n_posted: 0,
    };
    for i in 0..n_threads - 1 {
        let Some(s) = slot(i) else { break };
        job.pending.fetch_add(1, Ordering::Relaxed);
        s.job.store(job_ptr(&job), Ordering::SeqCst);
        finish.n_posted = i + 1;
        if s.sleeping.load(Ordering::SeqCst) {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_one();
        }
    }
    job.work();
    drop(finish);
    if job.panicked.load(Ordering::Relaxed) {
        resume_unwind(Box::new("a pool task panicked"));
    }
}

fn job_ptr(job: &Job) -> *mut Job {
    job as *const Job as *mut Job
}

/// Takes the job back from workers that have not picked it up, waits for the others to leave it,
/// and frees the pool; also when the caller's own tasks panic (the job lives on the caller's
/// stack). Taking it back matters on a busy machine: a worker that the OS has not scheduled
/// would otherwise hold up the caller, who has already done every task, for a whole time slice.
struct Finish<'a> {
    job: &'a Job,
    pool: &'static Pool,
    /// Workers 0..n_posted were given the job.
    n_posted: usize,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let ptr = job_ptr(self.job);
        for cell in &self.pool.slots[..self.n_posted] {
            let Some(s) = cell.get() else { continue };
            let taken_back = s
                .job
                .compare_exchange(
                    ptr,
                    std::ptr::null_mut(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok();
            if taken_back {
                self.job.pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let mut spins = 0u32;
        while self.job.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                // A worker was descheduled (a busy machine): let it run.
                std::thread::yield_now();
            }
        }
        self.pool.busy.store(false, Ordering::Release);
    }
}

/// Calls `f(i, chunk)` for each `chunk`-long piece of `data` (the last may be shorter), as
/// tasks of [`run`]. Each piece goes to one task, behind an uncontended lock, so no `unsafe`.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let pieces: Vec<Mutex<&mut [T]>> = data.chunks_mut(chunk.max(1)).map(Mutex::new).collect();
    run(pieces.len(), &|i| {
        let mut piece = pieces[i].lock().unwrap_or_else(|e| e.into_inner());
        f(i, &mut piece)
    });
}

/// Runs `f` on each item, as tasks of [`run`]; each item is taken by one task only.
pub fn for_each_owned<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let items: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    run(items.len(), &|i| {
        let item = items[i].lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(item) = item {
            f(item)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn sums(threads: usize, n_tasks: usize) -> Vec<u64> {
        let out: Vec<AtomicU64> = (0..n_tasks).map(|_| AtomicU64::new(0)).collect();
        let rp = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        rp.install(|| {
            run(n_tasks, &|i| {
                // Some work of uneven length, so tasks finish out of order.
                let v = (0..(i % 7) * 100).fold(i as u64, |a, b| a.wrapping_mul(31) ^ b as u64);
                out[i].fetch_add(v, Ordering::Relaxed);
            })
        });
        out.into_iter().map(|a| a.into_inner()).collect()
    }

    #[test]
    fn every_task_runs_once_whatever_the_threads() {
        let want = sums(1, 500);
        for threads in [2, 3, 8] {
            for _ in 0..50 {
                assert_eq!(sums(threads, 500), want);
            }
        }
        assert_eq!(sums(4, 0), Vec::<u64>::new());
        assert_eq!(sums(4, 1).len(), 1);
    }

    #[test]
    fn chunks_and_owned_items_each_go_to_one_task() {
        let rp = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let mut v: Vec<usize> = vec![0; 1001];
        rp.install(|| {
            for_each_chunk_mut(&mut v, 10, |i, c| c.iter_mut().for_each(|x| *x += i + 1))
        });
        assert!(v.iter().enumerate().all(|(j, &x)| x == j / 10 + 1));
        let seen: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        rp.install(|| {
            for_each_owned((0..100).collect(), |i: usize| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            })
        });
        assert!(seen.iter().all(|a| a.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn nested_and_concurrent_calls_run_serially() {
        let count = AtomicUsize::new(0);
        let rp = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        rp.install(|| {
            // Jobs from several rayon threads at once, each with nested jobs.
            rayon::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|_| {
                        for _ in 0..20 {
                            run(8, &|_| {
                                run(5, &|_| _ = count.fetch_add(1, Ordering::Relaxed))
                            });
                        }
                    });
                }
            });
        });
        assert_eq!(count.into_inner(), 4 * 20 * 8 * 5);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_frees_the_pool() {
        let rp = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for bad in [0, 63] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                rp.install(|| run(64, &|i| assert!(i != bad, "task {i}")))
            }));
            assert!(r.is_err());
        }
        // Still usable afterwards.
        assert_eq!(sums(2, 10), sums(1, 10));
    }
}
