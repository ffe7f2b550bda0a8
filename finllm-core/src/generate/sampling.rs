//! Logit processing and token sampling, reproducible from a seed.

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0: off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0.0: off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens (1.0: off).
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the sampling RNG; the same seed, prompt and parameters give the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(
                "temperature",
                format!("must be >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(
                "top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::invalid(
                "min_p",
                format!("must be in [0, 1], got {}", self.min_p),
            ));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::invalid(
                "repetition_penalty",
                format!("must be > 0, got {}", self.repetition_penalty),
            ));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

pub use crate::util::Rng;

/// Greedy argmax over logits, lowest id on ties.
/// The index of the largest logit, the lowest one on ties (NaNs are never larger; a NaN
/// first logit gives 0). Two passes that vectorize: the maximum over sixteen lanes, then the
/// first index holding it (a vocabulary takes microseconds, not tens of them).
pub fn argmax(logits: &[f32]) -> u32 {
    let Some(&first) = logits.first() else { return 0 };
    if first.is_nan() {
        return 0;
    }
    let mut lanes = [first; 16];
    let chunks = logits.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            if v > *m {
                *m = v;
            }
        }
    }
    let mut max = first;
    for &v in lanes.iter().chain(rest) {
        if v > max {
            max = v;
        }
    }
    // The first chunk holding the maximum (a branch-free test per chunk), then its place.
    let at = logits
        .chunks(16)
        .position(|c| c.iter().fold(false, |hit, &v| hit | (v == max)))
        .unwrap_or(0);
    let chunk = &logits[at * 16..];
    (at * 16 + chunk.iter().position(|&v| v == max).unwrap_or(0)) as u32
}

/// Chooses tokens from logits under [`SamplingParams`].
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            rng: Rng::new(params.seed),
            params,
        })
    }

    /// Pick the next token. `history` is every token so far (prompt and generated).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        // A copy only when the penalty changes the logits (a vocabulary of logits per token).
        let logits: std::borrow::Cow<'_, [f32]> = if p.repetition_penalty != 1.0 {
            let mut owned = logits.to_vec();
            apply_repetition_penalty(&mut owned, history, p.repetition_penalty, p.repeat_last_n);
            owned.into()
        } else {
            logits.into()
        };
        if p.is_greedy() {
            return argmax(&logits);
        }
        // Candidates sorted by logit, best first (ties by id for determinism).
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        if cand.is_empty() {
            return argmax(&logits);
        }
        // A total order (ties by id), so an unstable sort and a selection give the order a
        // stable sort would. With top-k only the k best are sorted: a selection is linear,
        // where sorting a 50k vocabulary per token cost milliseconds.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, order);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(order);
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|&(_, l)| f64::from(l - max).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
        if p.min_p > 0.0 {
            let floor = probs[0] * f64::from(p.min_p);
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            cand.truncate(keep);
            probs.truncate(keep);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (i, q) in probs.iter().enumerate() {
            if r < *q {
                return cand[i].0;
            }
            r -= q;
        }
        cand[cand.len() - 1].0
    }
}

fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32, last_n: usize) {
    let start = history.len().saturating_sub(last_n);
    let mut seen = std::collections::HashSet::new();
    for &id in &history[start..] {
        if !seen.insert(id) {
            continue;
        }
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// The `k` highest `(id, logit)` pairs, best first.
pub fn top_logits(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    all.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(f: impl FnOnce(&mut SamplingParams)) -> Sampler {
        let mut p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        f(&mut p);
        Sampler::new(p).unwrap()
    }

    /// Against the plain loop (strictly greater wins, so the lowest index on ties; NaNs never
    /// win), over lengths around the sixteen lanes and values with ties, zeros of both signs,
    /// infinities and NaNs.
    #[test]
    fn argmax_is_the_first_largest() {
        let plain = |x: &[f32]| -> u32 {
            let mut best = 0;
            for (i, &v) in x.iter().enumerate() {
                if v > x[best] {
                    best = i;
                }
            }
            best as u32
        };
        let mut rng = Rng::new(3);
        let pool = [
            0.0f32,
            -0.0,
            1.0,
            1.0,
            -1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            2.5,
            2.5,
        ];
        for len in (0..40).chain([49152]) {
            for _ in 0..200 {
                let x: Vec<f32> = (0..len)
                    .map(|_| {
                        let r = rng.next_f64();
                        if r < 0.5 {
                            pool[(r * 20.0) as usize]
                        } else {
                            (r * 8.0 - 4.0) as f32
                        }
                    })
                    .collect();
                assert_eq!(argmax(&x), plain(&x), "{x:?}");
            }
        }
    }

    #[test]
    fn greedy_picks_argmax_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.0, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_frequencies_follow_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (5.0f32).ln()]; // probabilities 1/8, 2/8, 5/8
        let draw = |seed| {
            let mut s = sampler(|p| p.seed = seed);
            (0..20_000).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        for (id, expected) in [(0u32, 0.125), (1, 0.25), (2, 0.625)] {
            let freq = a.iter().filter(|&&t| t == id).count() as f64 / a.len() as f64;
            assert!((freq - expected).abs() < 0.015, "token {id}: {freq} vs {expected}");
        }
    }

    #[test]
    fn top_k_top_p_min_p_restrict_the_support() {
        let logits = [4.0f32, 3.0, 2.0, 1.0, 0.0];
        let support = |mut s: Sampler| {
            let mut seen: Vec<u32> = (0..5000).map(|_| s.sample(&logits, &[])).collect();
            seen.sort();
            seen.dedup();
            seen
        };
        assert_eq!(support(sampler(|p| p.top_k = 2)), vec![0, 1]);
        // softmax of [4,3,2,1,0]: 0.636, 0.234, 0.086, ... → 0.87 reached with two tokens.
        assert_eq!(support(sampler(|p| p.top_p = 0.8)), vec![0, 1]);
        // exp(-1) = 0.37 of the best passes min_p 0.3, exp(-2) = 0.135 does not.
        assert_eq!(support(sampler(|p| p.min_p = 0.3)), vec![0, 1]);
    }

    /// The top-k selection draws exactly what sorting the whole vocabulary drew: the same
    /// tokens, seed for seed, over a vocabulary with many tied logits.
    #[test]
    fn top_k_by_selection_draws_what_a_full_sort_draws() {
        let mut rng = Rng::new(5);
        // 2,000 logits, a quarter of them sharing a few values.
        let logits: Vec<f32> = (0..2000)
            .map(|i| {
                if i % 4 == 0 {
                    (i % 3) as f32
                } else {
                    (rng.next_f64() * 6.0 - 3.0) as f32
                }
            })
            .collect();
        // The reference: every candidate sorted by a stable sort, then cut to k, as written
        // before the selection.
        let reference = |k: usize, temperature: f32, rng: &mut Rng| -> u32 {
            let mut cand: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l / temperature))
                .collect();
            cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            cand.truncate(k);
            let max = cand[0].1;
            let probs: Vec<f64> = cand.iter().map(|&(_, l)| f64::from(l - max).exp()).collect();
            let sum: f64 = probs.iter().sum();
            let probs: Vec<f64> = probs.iter().map(|q| q / sum).collect();
            let total: f64 = probs.iter().sum();
            let mut r = rng.next_f64() * total;
            for (i, q) in probs.iter().enumerate() {
                if r < *q {
                    return cand[i].0;
                }
                r -= q;
            }
            cand[probs.len() - 1].0
        };
        for k in [1, 2, 7, 40, 500, 1999] {
            let mut s = sampler(|p| {
                p.top_k = k;
                p.temperature = 0.7;
                p.seed = 11;
            });
            let mut r = Rng::new(11);
            for _ in 0..300 {
                assert_eq!(s.sample(&logits, &[]), reference(k, 0.7, &mut r), "top_k {k}");
            }
        }
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        // 3.0/2 = 1.5 < 2.0: the seen token loses its lead.
        assert_eq!(s.sample(&[3.0, 2.0], &[0]), 1);
    }

    #[test]
    fn invalid_params_are_rejected() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 2.0,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(matches!(Sampler::new(p), Err(Error::InvalidArgument { .. })));
        }
    }

    #[test]
    fn top_logits_sorted() {
        assert_eq!(top_logits(&[1.0, 5.0, 3.0, 5.0], 3), vec![(1, 5.0), (3, 5.0), (2, 3.0)]);
    }
}
