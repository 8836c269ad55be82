//! Helper threads that take a share of one 4-bit matmul with sub-microsecond hand-off.
//!
//! A decode step runs 49 matrix-vector products of 0.6M to 38.6M weights, 15 to 1000
//! microseconds each on one core. tract's pool (rayon) wakes sleeping workers and blocks the
//! caller meanwhile, which costs more than a second core gives below ~8M weights (BENCHMARKS.md).
//! Here the caller publishes a job, starts on it at once, and helpers that are awake (they poll
//! for a while after each job, yielding the core to anything else runnable) join it: each thread
//! works through its own region of chunks and then steals from the others', so a late helper
//! costs nothing but its share.
//!
//! Soundness of the borrowed job: a helper may read the job only after joining it, which a
//! compare-and-swap on one state word allows only while the job is open and of the expected
//! generation; the caller closes the job and waits until no helper is joined before returning.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle helper keeps polling before it sleeps: longer than the gaps between the
/// matmuls of a decode step and between steps, short enough not to matter to an idle program.
const POLL: Duration = Duration::from_millis(3);

/// Beyond this many threads a matrix-vector product is bound by memory, not by cores.
const MOST_THREADS: usize = 8;

/// State word: generation in the high 32 bits, joined helpers above bit 0, bit 0 = open.
const OPEN: u64 = 1;
const HELPER: u64 = 2;
const HELPERS: u64 = (1 << 32) - 2;

struct Job<'a> {
    work: &'a (dyn Fn(usize) + Sync),
    /// Per thread, its region of chunks still unclaimed, `front..back`: front in the low 32
    /// bits, back in the high ones. A thread takes its own region from the front, then the
    /// others' from the back, so each reads the weights in order as long as it can.
    regions: [AtomicU64; MOST_THREADS],
    threads: usize,
    panicked: AtomicBool,
}

impl<'a> Job<'a> {
    fn new(work: &'a (dyn Fn(usize) + Sync), chunks: usize, threads: usize) -> Job<'a> {
        let bound = |t: usize| (chunks * t / threads) as u64;
        let regions = std::array::from_fn(|t| match t < threads {
            true => AtomicU64::new(bound(t + 1) << 32 | bound(t)),
            false => AtomicU64::new(0),
        });
        Job { work, regions, threads, panicked: AtomicBool::new(false) }
    }

    fn claim(&self, region: usize, from_back: bool) -> Option<usize> {
        let region = &self.regions[region];
        let mut span = region.load(Relaxed);
        loop {
            let (front, back) = (span & 0xffff_ffff, span >> 32);
            if front >= back {
                return None;
            }
            let (claimed, next) = match from_back {
                true => (back - 1, (back - 1) << 32 | front),
                false => (front, back << 32 | (front + 1)),
            };
            match region.compare_exchange_weak(span, next, Relaxed, Relaxed) {
                Ok(_) => return Some(claimed as usize),
                Err(now) => span = now,
            }
        }
    }

    /// Works as thread `me` until every chunk is claimed.
    fn work_through(&self, me: usize) {
        let own = std::iter::from_fn(|| self.claim(me, false));
        let stolen = (1..self.threads)
            .flat_map(|i| std::iter::from_fn(move || self.claim((me + i) % self.threads, true)));
        for chunk in own.chain(stolen) {
            if catch_unwind(AssertUnwindSafe(|| (self.work)(chunk))).is_err() {
                self.panicked.store(true, Relaxed);
            }
        }
    }
}

struct Shared {
    state: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    /// Taken by the one caller whose job is published; others work alone.
    busy: AtomicBool,
}

struct Helper {
    thread: Thread,
    asleep: Arc<AtomicBool>,
}

pub struct Crew {
    shared: Arc<Shared>,
    helpers: Vec<Helper>,
}

/// The process's crew: one helper per further core, up to [`MOST_THREADS`] threads in all.
pub fn crew() -> &'static Crew {
    static CREW: OnceLock<Crew> = OnceLock::new();
    CREW.get_or_init(|| {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        Crew::new(cores.min(MOST_THREADS) - 1)
    })
}

impl Crew {
    /// A crew of up to `helpers` threads; fewer if the system refuses to start them.
    pub fn new(helpers: usize) -> Crew {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            busy: AtomicBool::new(false),
        });
        let helpers = (0..helpers)
            .map_while(|i| {
                let asleep = Arc::new(AtomicBool::new(false));
                let (state, flag) = (shared.clone(), asleep.clone());
                let handle = thread::Builder::new()
                    .name(format!("gptc-crew-{i}"))
                    .spawn(move || help(&state, &flag, i + 1))
                    .ok()?;
                Some(Helper { thread: handle.thread().clone(), asleep })
            })
            .collect();
        Crew { shared, helpers }
    }

    /// Runs `work(i, chunk)` for each `chunk_len` slice of `data` (the last may be shorter), on
    /// the caller and any helper that joins. `false` if a chunk panicked.
    pub fn run_on_chunks<T: Send>(
        &self,
        data: &mut [T],
        chunk_len: usize,
        work: impl Fn(usize, &mut [T]) + Sync,
    ) -> bool {
        // Each slot is locked once, by the one thread that claimed its chunk.
        let slots: Vec<Mutex<&mut [T]>> =
            data.chunks_mut(chunk_len.max(1)).map(Mutex::new).collect();
        self.run(slots.len(), &|i| {
            if let Ok(mut slot) = slots[i].lock() {
                work(i, &mut slot)
            }
        })
    }

    /// Runs `work(0) .. work(chunks - 1)`, each exactly once, on the caller and any helper that
    /// joins; returns when all are done. `false` if a chunk panicked.
    pub fn run(&self, chunks: usize, work: &(dyn Fn(usize) + Sync)) -> bool {
        let shared = &self.shared;
        let alone = chunks < 2
            || self.helpers.is_empty()
            || shared.busy.compare_exchange(false, true, Acquire, Relaxed).is_err();
        if alone {
            let job = Job::new(work, chunks, 1);
            job.work_through(0);
            return !job.panicked.load(Relaxed);
        }
        let job = Job::new(work, chunks, self.helpers.len() + 1);
        // No helper is joined (the previous job ended with none), so the job may be replaced.
        let erased: *const Job<'_> = &job;
        shared.job.store(erased as *mut Job<'static>, Relaxed);
        let generation = (shared.state.load(Relaxed) >> 32).wrapping_add(1);
        shared.state.store(generation << 32 | OPEN, SeqCst);
        for helper in &self.helpers {
            if helper.asleep.swap(false, SeqCst) {
                helper.thread.unpark();
            }
        }
        job.work_through(0);
        shared.state.fetch_and(!OPEN, SeqCst);
        while shared.state.load(Acquire) & HELPERS != 0 {
            std::hint::spin_loop();
        }
        shared.busy.store(false, Release);
        !job.panicked.load(Relaxed)
    }
}

/// Helper `me` (1 and up; the caller is 0): joins each new job, works it, polls, then sleeps.
fn help(shared: &Shared, asleep: &AtomicBool, me: usize) {
    let mut seen = 0u64;
    let mut idle_since = Instant::now();
    loop {
        let state = shared.state.load(Acquire);
        let generation = state >> 32;
        if state & OPEN != 0 && generation != seen {
            if shared.state.compare_exchange(state, state + HELPER, AcqRel, Acquire).is_ok() {
                seen = generation;
                // SAFETY: joined to an open job, which its caller keeps alive until we leave.
                let job = unsafe { &*shared.job.load(Acquire) };
                job.work_through(me);
                shared.state.fetch_sub(HELPER, Release);
                idle_since = Instant::now();
            }
            continue;
        }
        if idle_since.elapsed() < POLL {
            thread::yield_now();
            continue;
        }
        asleep.store(true, SeqCst);
        let state = shared.state.load(SeqCst);
        if state & OPEN != 0 && state >> 32 != seen {
            asleep.store(false, SeqCst);
            continue;
        }
        thread::park();
        asleep.store(false, SeqCst);
        idle_since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_chunk_runs_exactly_once() {
        let crew = Crew::new(3);
        for chunks in [0, 1, 2, 7, 1000] {
            let counts: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                assert!(crew.run(chunks, &|i| {
                    counts[i].fetch_add(1, Relaxed);
                }));
            }
            assert!(counts.iter().all(|c| c.load(Relaxed) == 50));
        }
    }

    #[test]
    fn helpers_woken_from_sleep_take_part() {
        let crew = Crew::new(1);
        thread::sleep(POLL * 3);
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        for _ in 0..200 {
            crew.run(64, &|_| {
                threads.lock().unwrap().insert(thread::current().id());
                thread::sleep(Duration::from_micros(20));
            });
        }
        assert_eq!(threads.lock().unwrap().len(), 2);
    }

    #[test]
    fn callers_at_once_each_finish_their_own_job() {
        let crew = Crew::new(1);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let sum = AtomicUsize::new(0);
                        crew.run(37, &|i| {
                            sum.fetch_add(i, Relaxed);
                        });
                        assert_eq!(sum.load(Relaxed), 37 * 36 / 2);
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_chunk_is_reported_not_lost() {
        let crew = Crew::new(1);
        assert!(!crew.run(16, &|i| assert_ne!(i, 9, "the chunk that fails on purpose")));
        assert!(crew.run(16, &|_| {}));
    }
}
