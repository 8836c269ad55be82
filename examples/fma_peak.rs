//! The machine's float32 multiply-add ceiling: every core running independent fused
//! multiply-adds on registers alone (AVX-512 where the CPU has it, else AVX2), no memory traffic.
//! The figure a float32 prefill's projections are measured against in BENCHMARKS.md; not a test.
//!
//! `cargo run --release --example fma_peak`

use std::time::Instant;

/// Multiply-add steps per thread: about a second on a core of a few GHz.
const STEPS: u64 = 200_000_000;

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some((name, lanes, run)) = kernel() else {
        println!("no AVX2 or AVX-512 on this CPU");
        return;
    };
    for threads in [1, cores] {
        let start = Instant::now();
        let sums: Vec<f32> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|_| scope.spawn(|| run(STEPS))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(f32::NAN)).collect()
        });
        let seconds = start.elapsed().as_secs_f64();
        let multiply_adds = (threads as u64 * STEPS * 16 * lanes) as f64;
        println!(
            "{name}, {threads} thread(s): {:.1} G multiply-adds/s (checksum {:.3})",
            multiply_adds / seconds / 1e9,
            sums.iter().sum::<f32>()
        );
    }
}

/// `(name, float32 lanes a register, run(steps) -> checksum)`: 16 independent chains a step.
type Kernel = (&'static str, u64, fn(u64) -> f32);

fn kernel() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F (checked just above).
            return Some(("avx512", 16, |steps| unsafe { chains_avx512(steps) }));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return Some(("avx2", 8, |steps| unsafe { chains_avx2(steps) }));
        }
    }
    None
}

/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chains_avx512(steps: u64) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc: [__m512; 16] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    for _ in 0..steps {
        for acc in acc.iter_mut() {
            *acc = _mm512_fmadd_ps(*acc, a, b);
        }
    }
    acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_avx2(steps: u64) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc: [__m256; 16] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
    for _ in 0..steps {
        for acc in acc.iter_mut() {
            *acc = _mm256_fmadd_ps(*acc, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    let total = acc.iter().fold(_mm256_setzero_ps(), |t, &v| _mm256_add_ps(t, v));
    // SAFETY: eight floats into eight.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    lanes.iter().sum()
}
