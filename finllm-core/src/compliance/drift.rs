//! Input drift: has the token distribution of recent prompts moved away from a reference?
//!
//! The monitor keeps token-id counts of a sliding window of the most recent input tokens and of a
//! reference window, and reports the KL divergence D(recent ‖ reference) with additive (Laplace /
//! Lidstone) smoothing over the whole vocabulary, so tokens unseen in the reference give a large
//! but finite divergence. The reference is either set explicitly (a sample of production traffic
//! approved at validation time) or, by default, frozen from the first full window observed.

use std::collections::{HashMap, VecDeque};

use crate::{Error, Result};

/// Drift monitor settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    /// Vocabulary size of the tokenizer (token ids must be below it).
    pub vocab_size: usize,
    /// Number of most recent input tokens compared with the reference.
    pub window_tokens: usize,
    /// Pseudo-count added to every token id of both distributions (> 0).
    pub smoothing: f64,
    /// KL divergence (nats) at or above which the inputs count as drifted.
    pub threshold: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32_000,
            window_tokens: 4096,
            smoothing: 0.5,
            threshold: 0.5,
        }
    }
}

/// A snapshot of the monitor, for dashboards and audit records.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DriftMetrics {
    /// D(recent ‖ reference) in nats; `None` until both windows hold tokens.
    pub kl_divergence: Option<f64>,
    pub threshold: f64,
    pub drifting: bool,
    pub recent_tokens: usize,
    pub reference_tokens: usize,
    /// Total tokens observed since creation.
    pub observed_tokens: u64,
}

/// Token counts of a multiset of ids.
#[derive(Debug, Clone, Default)]
struct Counts {
    by_id: HashMap<u32, u64>,
    total: u64,
}

impl Counts {
    fn add(&mut self, id: u32) {
        *self.by_id.entry(id).or_insert(0) += 1;
        self.total += 1;
    }

    fn remove(&mut self, id: u32) {
        if let Some(c) = self.by_id.get_mut(&id) {
            *c -= 1;
            self.total -= 1;
            if *c == 0 {
                self.by_id.remove(&id);
            }
        }
    }

    fn get(&self, id: u32) -> u64 {
        self.by_id.get(&id).copied().unwrap_or(0)
    }
}

/// Sliding-window KL-divergence drift monitor over input token ids. Not internally synchronised:
/// wrap it in a `Mutex` to share between request threads.
#[derive(Debug, Clone)]
pub struct DriftMonitor {
    config: DriftConfig,
    reference: Counts,
    /// True once the reference is fixed (explicitly or from the first full window).
    reference_frozen: bool,
    recent: VecDeque<u32>,
    recent_counts: Counts,
    observed: u64,
}

impl DriftMonitor {
    pub fn new(config: DriftConfig) -> Result<Self> {
        if config.vocab_size == 0 || u32::try_from(config.vocab_size).is_err() {
            return Err(Error::invalid(
                "drift vocab_size",
                "must be in 1..=u32::MAX (the tokenizer's vocabulary)",
            ));
        }
        if config.window_tokens == 0 {
            return Err(Error::invalid(
                "drift window_tokens",
                "must be at least 1 (4096 is a good start)",
            ));
        }
        if !(config.smoothing.is_finite() && config.smoothing > 0.0) {
            return Err(Error::invalid(
                "drift smoothing",
                "must be a finite number > 0 (e.g. 0.5)",
            ));
        }
        if !(config.threshold.is_finite() && config.threshold >= 0.0) {
            return Err(Error::invalid("drift threshold", "must be a finite number >= 0 (nats)"));
        }
        Ok(Self {
            config,
            reference: Counts::default(),
            reference_frozen: false,
            recent: VecDeque::new(),
            recent_counts: Counts::default(),
            observed: 0,
        })
    }

    /// Fix the reference distribution from a sample of approved inputs (replaces any earlier one).
    pub fn set_reference(&mut self, tokens: &[u32]) -> Result<()> {
        self.check_ids(tokens)?;
        let mut counts = Counts::default();
        tokens.iter().for_each(|&t| counts.add(t));
        self.reference = counts;
        self.reference_frozen = true;
        Ok(())
    }

    /// Record the tokens of one input. Until a reference exists, the first `window_tokens`
    /// tokens become it.
    pub fn observe(&mut self, tokens: &[u32]) -> Result<DriftMetrics> {
        self.check_ids(tokens)?;
        for &t in tokens {
            self.observed += 1;
            if !self.reference_frozen {
                self.reference.add(t);
                if self.reference.total >= self.config.window_tokens as u64 {
                    self.reference_frozen = true;
                }
                continue;
            }
            self.recent.push_back(t);
            self.recent_counts.add(t);
            if self.recent.len() > self.config.window_tokens {
                if let Some(old) = self.recent.pop_front() {
                    self.recent_counts.remove(old);
                }
            }
        }
        Ok(self.metrics())
    }

    /// D(recent ‖ reference) in nats, or `None` while either window is empty.
    pub fn kl_divergence(&self) -> Option<f64> {
        if self.recent_counts.total == 0 || self.reference.total == 0 {
            return None;
        }
        Some(smoothed_kl(
            &self.recent_counts,
            &self.reference,
            self.config.vocab_size,
            self.config.smoothing,
        ))
    }

    pub fn is_drifting(&self) -> bool {
        self.kl_divergence().is_some_and(|kl| kl >= self.config.threshold)
    }

    pub fn metrics(&self) -> DriftMetrics {
        let kl = self.kl_divergence();
        DriftMetrics {
            kl_divergence: kl,
            threshold: self.config.threshold,
            drifting: kl.is_some_and(|kl| kl >= self.config.threshold),
            recent_tokens: self.recent.len(),
            reference_tokens: usize::try_from(self.reference.total).unwrap_or(usize::MAX),
            observed_tokens: self.observed,
        }
    }

    pub fn config(&self) -> &DriftConfig {
        &self.config
    }

    fn check_ids(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            Some(&id) => Err(Error::TokenOutOfRange {
                id,
                vocab_size: self.config.vocab_size,
            }),
            None => Ok(()),
        }
    }
}

/// KL(P ‖ Q) with p_i = (c_i + α) / (N + αV), q_i = (d_i + α) / (M + αV) over all V ids. Ids seen
/// in neither window all contribute the same term, added in closed form so the cost is the number
/// of distinct ids seen, not V.
fn smoothed_kl(p: &Counts, q: &Counts, vocab: usize, alpha: f64) -> f64 {
    let v = vocab as f64; // vocab <= u32::MAX: exact in f64
    let p_den = p.total as f64 + alpha * v;
    let q_den = q.total as f64 + alpha * v;
    let term = |pc: u64, qc: u64| {
        let pi = (pc as f64 + alpha) / p_den;
        let qi = (qc as f64 + alpha) / q_den;
        pi * (pi / qi).ln()
    };
    let mut seen = 0usize;
    let mut kl = 0.0;
    for id in p
        .by_id
        .keys()
        .chain(q.by_id.keys().filter(|id| !p.by_id.contains_key(id)))
    {
        seen += 1;
        kl += term(p.get(*id), q.get(*id));
    }
    let unseen = vocab.saturating_sub(seen) as f64;
    kl += unseen * term(0, 0);
    kl.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(window: usize) -> DriftMonitor {
        DriftMonitor::new(DriftConfig {
            vocab_size: 100,
            window_tokens: window,
            smoothing: 0.5,
            threshold: 0.3,
        })
        .unwrap()
    }

    /// Direct sum over the whole vocabulary, the definition the closed form must match.
    fn naive_kl(p: &[u32], q: &[u32], vocab: usize, alpha: f64) -> f64 {
        let count = |xs: &[u32], id: u32| xs.iter().filter(|&&x| x == id).count() as f64;
        (0..vocab as u32)
            .map(|id| {
                let pi = (count(p, id) + alpha) / (p.len() as f64 + alpha * vocab as f64);
                let qi = (count(q, id) + alpha) / (q.len() as f64 + alpha * vocab as f64);
                pi * (pi / qi).ln()
            })
            .sum()
    }

    #[test]
    fn same_distribution_is_not_drift() {
        let mut m = monitor(200);
        let sample: Vec<u32> = (0..200).map(|i| i % 10).collect();
        m.observe(&sample).unwrap();
        let metrics = m.observe(&sample).unwrap();
        assert!(metrics.kl_divergence.unwrap() < 1e-9);
        assert!(!metrics.drifting);
    }

    #[test]
    fn shifted_distribution_is_drift_and_matches_definition() {
        let mut m = monitor(200);
        let reference: Vec<u32> = (0..200).map(|i| i % 10).collect();
        let shifted: Vec<u32> = (0..200).map(|i| 50 + i % 10).collect();
        m.set_reference(&reference).unwrap();
        let metrics = m.observe(&shifted).unwrap();
        let expected = naive_kl(&shifted, &reference, 100, 0.5);
        assert!((metrics.kl_divergence.unwrap() - expected).abs() < 1e-9);
        assert!(metrics.drifting, "{metrics:?}");
    }

    #[test]
    fn window_slides() {
        let mut m = monitor(50);
        m.set_reference(&[1; 50]).unwrap();
        m.observe(&[2; 50]).unwrap();
        assert!(m.is_drifting());
        m.observe(&[1; 50]).unwrap();
        assert_eq!(m.metrics().recent_tokens, 50);
        assert!(!m.is_drifting());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(m_err(DriftConfig {
            smoothing: 0.0,
            ..Default::default()
        }));
        let mut m = monitor(10);
        assert!(m.observe(&[100]).is_err());
    }

    fn m_err(config: DriftConfig) -> bool {
        DriftMonitor::new(config).is_err()
    }
}
