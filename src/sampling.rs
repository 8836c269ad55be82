//! Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p.
//! One place, outside the graph and independent of the runtime.

use gptc_graph::rng::Xoshiro256;
use ndarray::ArrayView1;

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// 0 is greedy; otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probabilities reach p.
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { temperature: 0.0, top_k: None, top_p: None, seed: 123 }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::Setting {
                setting: "temperature",
                problem: format!(
                    "must be a finite number >= 0 (0 is greedy), got {}",
                    self.temperature
                ),
            });
        }
        if self.top_k == Some(0) {
            return Err(Error::Setting { setting: "top-k", problem: "must be at least 1".into() });
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Setting {
                    setting: "top-p",
                    problem: format!("must be in (0, 1], got {p}"),
                });
            }
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Index of the largest value; the first one on ties, as torch.argmax.
pub fn argmax(v: ArrayView1<f32>) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

pub struct Sampler {
    config: SamplingConfig,
    rng: Xoshiro256,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Result<Sampler> {
        config.validate()?;
        let rng = Xoshiro256::new(config.seed);
        Ok(Sampler { config, rng })
    }

    pub fn pick(&mut self, logits: ArrayView1<f32>) -> i64 {
        if self.config.is_greedy() {
            return argmax(logits) as i64;
        }
        let candidates = self.candidates(logits);
        let u = self.rng.next_f64() as f32;
        let mut cumulative = 0.0;
        for &(id, p) in &candidates {
            cumulative += p;
            if u < cumulative {
                return id as i64;
            }
        }
        candidates.last().map_or(0, |&(id, _)| id as i64)
    }

    /// The tokens that may be sampled and their renormalized probabilities, most likely first:
    /// softmax(logits / temperature), then top-k, then top-p.
    pub fn candidates(&self, logits: ArrayView1<f32>) -> Vec<(usize, f32)> {
        let t = self.config.temperature;
        let max = logits.fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut probs: Vec<(usize, f32)> =
            logits.iter().enumerate().map(|(i, &x)| (i, ((x - max) / t).exp())).collect();
        // Stable sort: equal probabilities keep token order, so a seed replays exactly.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(k) = self.config.top_k {
            probs.truncate(k);
        }
        let total: f32 = probs.iter().map(|p| p.1).sum();
        for p in &mut probs {
            p.1 /= total;
        }
        if let Some(top_p) = self.config.top_p {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p.1;
                    cumulative >= top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f32 = probs.iter().map(|p| p.1).sum();
            for p in &mut probs {
                p.1 /= total;
            }
        }
        probs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    fn sampler(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Sampler {
        Sampler::new(SamplingConfig { temperature, top_k, top_p, seed: 1 }).unwrap()
    }

    #[test]
    fn top_k_keeps_exactly_k() {
        let logits = arr1(&[0.1, 3.0, 2.0, -1.0, 2.5]);
        let kept = sampler(1.0, Some(3), None).candidates(logits.view());
        assert_eq!(kept.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 4, 2]);
        assert!((kept.iter().map(|c| c.1).sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (logits are their logs).
        let logits = arr1(&[0.5f32.ln(), 0.05f32.ln(), 0.3f32.ln(), 0.15f32.ln()]);
        let ids = |p| {
            sampler(1.0, None, Some(p))
                .candidates(logits.view())
                .iter()
                .map(|c| c.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(0.5), [0]);
        assert_eq!(ids(0.6), [0, 2]);
        assert_eq!(ids(0.8), [0, 2]);
        assert_eq!(ids(0.81), [0, 2, 3]);
        assert_eq!(ids(1.0), [0, 2, 3, 1]);
    }

    #[test]
    fn temperature_scales_before_the_softmax() {
        let logits = arr1(&[2.0f32, 0.0]);
        let p = |t| sampler(t, None, None).candidates(logits.view())[0].1;
        let expected = |t: f32| 1.0 / (1.0 + (-2.0 / t).exp());
        for t in [0.5, 1.0, 2.0] {
            assert!((p(t) - expected(t)).abs() < 1e-6, "t = {t}");
        }
        assert!(p(0.5) > p(1.0) && p(1.0) > p(2.0));
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(arr1(&[1.0, 3.0, 3.0, 2.0]).view()), 1);
    }

    #[test]
    fn zero_temperature_is_greedy() {
        let mut s = sampler(0.0, Some(1), None);
        assert_eq!(s.pick(arr1(&[0.0, 1.0, 5.0, 1.0]).view()), 2);
    }

    #[test]
    fn a_seed_replays_and_sampling_follows_the_distribution() {
        let logits = arr1(&[0.0f32, 1.0, 2.0]);
        let draw = |seed| {
            let mut s =
                Sampler::new(SamplingConfig { temperature: 1.0, top_k: None, top_p: None, seed })
                    .unwrap();
            (0..3000).map(|_| s.pick(logits.view())).collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        let draws = draw(5);
        let share = draws.iter().filter(|&&id| id == 2).count() as f32 / draws.len() as f32;
        let expected = 2f32.exp() / (1.0 + 1f32.exp() + 2f32.exp());
        assert!((share - expected).abs() < 0.03, "{share} vs {expected}");
    }

    #[test]
    fn bad_settings_are_refused() {
        for (t, k, p) in [
            (-1.0, None, None),
            (f32::NAN, None, None),
            (1.0, Some(0), None),
            (1.0, None, Some(0.0)),
            (1.0, None, Some(1.5)),
        ] {
            assert!(Sampler::new(SamplingConfig { temperature: t, top_k: k, top_p: p, seed: 0 })
                .is_err());
        }
    }
}
