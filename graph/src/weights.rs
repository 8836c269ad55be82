//! Where parameter values come from: GPT-2's seeded random init, or a map of named tensors
//! (a checkpoint, or the initializers of an exported file).

use std::collections::BTreeMap;

use crate::rng::Xoshiro256;
use crate::{Error, Result};

/// How an untrained parameter starts, following GPT-2's `_init_weights`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal { std: f32 },
    Zeros,
    Ones,
}

/// Supplies the values of a parameter by its dotted name and expected shape.
pub trait WeightSource {
    fn tensor(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>>;
}

/// GPT-2's init from a seed: each tensor's values depend only on (seed, name), so the same seed
/// gives a byte-identical model whatever the thread count or the order tensors are asked for.
pub struct RandomInit {
    pub seed: u64,
}

/// Values per independent random stream; streams fill in parallel.
const CHUNK: usize = 1 << 16;

impl WeightSource for RandomInit {
    fn tensor(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        let len = shape.iter().product();
        let std = match init {
            Init::Zeros => return Ok(vec![0.0; len]),
            Init::Ones => return Ok(vec![1.0; len]),
            Init::Normal { std } => std,
        };
        let mut data = vec![0f32; len];
        let tensor_seed = self.seed ^ fnv1a(name.as_bytes());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunks: Vec<(usize, &mut [f32])> = data.chunks_mut(CHUNK).enumerate().collect();
        let per_thread = chunks.len().div_ceil(threads).max(1);
        let mut chunks = chunks;
        // A thread the system refuses (a process or memory limit) is an error, not a panic.
        let spawned = std::thread::scope(|s| {
            while !chunks.is_empty() {
                let batch: Vec<_> = chunks.drain(..per_thread.min(chunks.len())).collect();
                std::thread::Builder::new().spawn_scoped(s, move || {
                    for (index, chunk) in batch {
                        let mut rng = Xoshiro256::new(
                            tensor_seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        );
                        fill_normal(&mut rng, chunk, std);
                    }
                })?;
            }
            Ok(())
        });
        spawned.map_err(|e: std::io::Error| Error::System(format!("starting a thread: {e}")))?;
        Ok(data)
    }
}

/// Marsaglia's polar method: two standard normals per accepted point of the unit disc, with one
/// `ln` and one `sqrt` and no trigonometry. Single precision is ample for an init of std 0.02
/// and twice as fast as double.
fn fill_normal(rng: &mut Xoshiro256, out: &mut [f32], std: f32) {
    // 24 random bits: every value is exact in f32, spread over [-1, 1).
    let mut uniform = || (rng.next_u64() >> 40) as f32 * (2.0 / (1u32 << 24) as f32) - 1.0;
    for pair in out.chunks_mut(2) {
        let (u, v, s) = loop {
            let (u, v) = (uniform(), uniform());
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                break (u, v, s);
            }
        };
        let factor = (-2.0 * s.ln() / s).sqrt() * std;
        pair[0] = u * factor;
        if let Some(second) = pair.get_mut(1) {
            *second = v * factor;
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A dense float32 tensor with its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tensors by dotted name: a checkpoint, or what an exported file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorMap(pub BTreeMap<String, NamedTensor>);

impl TensorMap {
    pub fn get(&self, name: &str) -> Result<&NamedTensor> {
        self.0.get(name).ok_or_else(|| Error::MissingWeight { name: name.into() })
    }
}

impl WeightSource for TensorMap {
    fn tensor(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(Error::WeightShape {
                name: name.into(),
                found: t.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(t.data.clone())
    }
}

/// Records every tensor another source hands out, so callers can keep what was generated.
pub struct Recording<'a, S: WeightSource> {
    pub source: &'a mut S,
    pub seen: TensorMap,
}

impl<S: WeightSource> WeightSource for Recording<'_, S> {
    fn tensor(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        let data = self.source.tensor(name, shape, init)?;
        self.seen
            .0
            .insert(name.to_string(), NamedTensor { shape: shape.to_vec(), data: data.clone() });
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_init_is_deterministic_per_seed_and_name() {
        let a = RandomInit { seed: 1 }.tensor("w", &[300_000], Init::Normal { std: 0.02 }).unwrap();
        let b = RandomInit { seed: 1 }.tensor("w", &[300_000], Init::Normal { std: 0.02 }).unwrap();
        let c = RandomInit { seed: 2 }.tensor("w", &[300_000], Init::Normal { std: 0.02 }).unwrap();
        let d = RandomInit { seed: 1 }.tensor("v", &[300_000], Init::Normal { std: 0.02 }).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn random_init_has_the_requested_moments() {
        let x = RandomInit { seed: 7 }.tensor("w", &[1 << 20], Init::Normal { std: 0.02 }).unwrap();
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 2e-4, "std {}", var.sqrt());
        // Chunks are independent streams: neighbouring chunks must not repeat each other.
        assert_ne!(x[..16], x[CHUNK..CHUNK + 16]);
    }

    #[test]
    fn constant_inits() {
        let mut r = RandomInit { seed: 0 };
        assert_eq!(r.tensor("b", &[3], Init::Zeros).unwrap(), vec![0.0; 3]);
        assert_eq!(r.tensor("g", &[2], Init::Ones).unwrap(), vec![1.0; 2]);
    }
}
