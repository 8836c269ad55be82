//! Measurements for BENCHMARKS.md: numbers printed, never asserted.

use std::time::Instant;

/// Read bandwidth of main memory in bytes/s: the best of several passes summing a buffer far
/// larger than the caches, on as many threads as tract uses. Decoding one token must read every
/// weight once, so `bandwidth / weight_bytes` bounds tokens/s.
pub fn read_bandwidth(bytes: usize, passes: usize) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let words = bytes / 8;
    // Distinct values: the kernel must not back the buffer with one shared zero page.
    let buffer: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads);
    let mut best = f64::INFINITY;
    let mut checksum = 0u64;
    for _ in 0..passes {
        let start = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        best = best.min(start.elapsed().as_secs_f64());
        checksum = checksum.wrapping_add(sums.iter().sum::<u64>());
    }
    std::hint::black_box(checksum);
    (words * 8) as f64 / best
}

/// Median of a non-empty list of seconds.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
