//! Perturbation methods, forward-only on the served model: occlusion (leave one unit out),
//! Shapley-value sampling over permutations, and a ContextCite-style surrogate (random ablation
//! masks, a sparse linear fit of the answer's log-probability).
//!
//! Each returns, per unit, per answer token, how much the unit raises the token's
//! log-probability (nats).

use crate::error::Result;
use crate::explain::ablate::Ablator;
use crate::util::Rng;

/// Per unit and answer token: the base log-probability minus the log-probability with the unit
/// removed.
pub fn occlusion(ab: &mut Ablator<'_>) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let n = ab.n_units();
    let mut masks = vec![vec![true; n]];
    masks.extend((0..n).map(|u| (0..n).map(|v| v != u).collect()));
    let scores = ab.score(&masks)?;
    let base = scores[0].clone();
    let matrix = scores[1..]
        .iter()
        .map(|lp| base.iter().zip(lp).map(|(b, l)| b - l).collect())
        .collect();
    Ok((base, matrix))
}

/// Shapley values estimated from `permutations` random orders: each unit's mean marginal
/// contribution when added to the units before it (starting from none). Their sum per token is
/// exactly f(all) − f(none) for every sample (efficiency).
pub fn shapley(ab: &mut Ablator<'_>, permutations: usize, seed: u64) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let n = ab.n_units();
    let mut rng = Rng::new(seed);
    let mut orders = Vec::with_capacity(permutations);
    let mut masks = vec![vec![true; n], vec![false; n]];
    for _ in 0..permutations.max(1) {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut keep = vec![false; n];
        for &u in &order {
            keep[u] = true;
            masks.push(keep.clone());
        }
        orders.push(order);
    }
    let scores = ab.score(&masks)?;
    let tokens = scores[0].len();
    let mut matrix = vec![vec![0f64; tokens]; n];
    let mut at = 2;
    for order in &orders {
        let mut before = &scores[1];
        for &u in order {
            let after = &scores[at];
            for t in 0..tokens {
                matrix[u][t] += after[t] - before[t];
            }
            before = after;
            at += 1;
        }
    }
    let k = orders.len() as f64;
    for row in &mut matrix {
        row.iter_mut().for_each(|v| *v /= k);
    }
    Ok((scores[0].clone(), matrix))
}

/// What the surrogate fit gives besides the scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SurrogateFit {
    pub ablations: usize,
    pub held_out: usize,
    /// Intercept of the fit: the predicted target log-probability with every unit removed.
    pub intercept: f64,
    /// The L1 penalty used.
    pub lambda: f64,
    /// Linear datamodeling score: Spearman rank correlation between the surrogate's predictions
    /// and the actual target log-probabilities on held-out random ablations.
    pub lds: Option<f64>,
}

/// ContextCite-style surrogate: `ablations` random masks keeping each unit with probability ½,
/// the target's log-probability (the sum over `target` answer tokens) fitted as a sparse linear
/// function of the mask (LASSO by coordinate descent); the weights are the units' scores. The
/// returned matrix repeats each unit's weight on the target's tokens (spread evenly) so it has
/// the shape of the other methods'.
pub fn surrogate(
    ab: &mut Ablator<'_>,
    target: std::ops::Range<usize>,
    ablations: usize,
    held_out: usize,
    seed: u64,
) -> Result<(Vec<f64>, Vec<Vec<f64>>, SurrogateFit)> {
    let n = ab.n_units();
    let mut rng = Rng::new(seed);
    let draw = |rng: &mut Rng| -> Vec<bool> { (0..n).map(|_| rng.next_u64() & 1 == 1).collect() };
    let mut masks = vec![vec![true; n]];
    masks.extend((0..ablations + held_out).map(|_| draw(&mut rng)));
    let scores = ab.score(&masks)?;
    let y: Vec<f64> = scores.iter().map(|lp| lp[target.clone()].iter().sum()).collect();
    let (train_x, train_y) = (&masks[1..=ablations], &y[1..=ablations]);
    let lambda = default_lambda(train_x, train_y);
    let (w, b) = lasso(train_x, train_y, lambda, 500, 1e-9);
    let lds = (held_out >= 3).then(|| {
        let xs = &masks[ablations + 1..];
        let pred: Vec<f64> = xs.iter().map(|m| predict(&w, b, m)).collect();
        spearman(&pred, &y[ablations + 1..])
    });
    let tokens = scores[0].len();
    let span = target.len().max(1) as f64;
    let matrix = w
        .iter()
        .map(|&wu| {
            (0..tokens)
                .map(|t| if target.contains(&t) { wu / span } else { 0.0 })
                .collect()
        })
        .collect();
    Ok((
        scores[0].clone(),
        matrix,
        SurrogateFit {
            ablations,
            held_out,
            intercept: b,
            lambda,
            lds,
        },
    ))
}

fn predict(w: &[f64], b: f64, keep: &[bool]) -> f64 {
    b + w.iter().zip(keep).filter(|(_, &k)| k).map(|(w, _)| w).sum::<f64>()
}

/// A small penalty relative to the data: 1% of the largest correlation of a feature with the
/// centred target (the LASSO path's starting λ), so weights shrink only where the data do not
/// support them.
fn default_lambda(x: &[Vec<bool>], y: &[f64]) -> f64 {
    let m = y.len().max(1) as f64;
    let mean = y.iter().sum::<f64>() / m;
    let n = x.first().map_or(0, Vec::len);
    let max = (0..n)
        .map(|j| {
            let xm = x.iter().filter(|r| r[j]).count() as f64 / m;
            x.iter()
                .zip(y)
                .map(|(r, yi)| (f64::from(u8::from(r[j])) - xm) * (yi - mean))
                .sum::<f64>()
                .abs()
                / m
        })
        .fold(0f64, f64::max);
    0.01 * max
}

/// Minimise `1/(2m) Σ (y − b − w·x)² + λ‖w‖₁` by cyclic coordinate descent on centred data.
pub(crate) fn lasso(x: &[Vec<bool>], y: &[f64], lambda: f64, max_iter: usize, tol: f64) -> (Vec<f64>, f64) {
    let m = y.len();
    let n = x.first().map_or(0, Vec::len);
    if m == 0 {
        return (vec![0.0; n], 0.0);
    }
    let mf = m as f64;
    let xs: Vec<Vec<f64>> = x
        .iter()
        .map(|r| r.iter().map(|&k| f64::from(u8::from(k))).collect())
        .collect();
    let xmean: Vec<f64> = (0..n).map(|j| xs.iter().map(|r| r[j]).sum::<f64>() / mf).collect();
    let ymean = y.iter().sum::<f64>() / mf;
    let xc: Vec<Vec<f64>> = xs
        .iter()
        .map(|r| r.iter().zip(&xmean).map(|(v, m)| v - m).collect())
        .collect();
    let norm: Vec<f64> = (0..n)
        .map(|j| xc.iter().map(|r| r[j] * r[j]).sum::<f64>() / mf)
        .collect();
    let mut resid: Vec<f64> = y.iter().map(|v| v - ymean).collect();
    let mut w = vec![0f64; n];
    for _ in 0..max_iter {
        let mut change = 0f64;
        for j in 0..n {
            if norm[j] == 0.0 {
                continue;
            }
            let rho = xc.iter().zip(&resid).map(|(r, e)| r[j] * e).sum::<f64>() / mf + norm[j] * w[j];
            let new = soft_threshold(rho, lambda) / norm[j];
            let d = new - w[j];
            if d != 0.0 {
                for (r, e) in xc.iter().zip(resid.iter_mut()) {
                    *e -= d * r[j];
                }
                w[j] = new;
                change = change.max(d.abs());
            }
        }
        if change < tol {
            break;
        }
    }
    let b = ymean - w.iter().zip(&xmean).map(|(w, m)| w * m).sum::<f64>();
    (w, b)
}

fn soft_threshold(v: f64, l: f64) -> f64 {
    if v > l {
        v - l
    } else if v < -l {
        v + l
    } else {
        0.0
    }
}

/// Ranks with ties given their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0f64; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson's on ranks); 0 when either side is constant.
pub(crate) fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lasso_recovers_a_sparse_linear_function() {
        // y = 2 + 3·x0 − 1.5·x2 over random masks; x1 and x3 do nothing.
        let mut rng = Rng::new(5);
        let x: Vec<Vec<bool>> = (0..64)
            .map(|_| (0..4).map(|_| rng.next_u64() & 1 == 1).collect())
            .collect();
        let y: Vec<f64> = x
            .iter()
            .map(|r| 2.0 + 3.0 * f64::from(u8::from(r[0])) - 1.5 * f64::from(u8::from(r[2])))
            .collect();
        let (w, b) = lasso(&x, &y, 0.0, 1000, 1e-12);
        for (got, want) in w.iter().zip([3.0, 0.0, -1.5, 0.0]) {
            assert!((got - want).abs() < 1e-6, "{w:?}");
        }
        assert!((b - 2.0).abs() < 1e-6);
        // A penalty shrinks the weights towards zero and zeroes the useless ones.
        let (w, _) = lasso(&x, &y, default_lambda(&x, &y), 1000, 1e-12);
        assert!(w[0] > 2.5 && w[0] < 3.0 && w[2] < -1.0 && w[2] > -1.5, "{w:?}");
        assert!(w[1].abs() < 0.05 && w[3].abs() < 0.05, "{w:?}");
    }

    #[test]
    fn spearman_is_one_for_monotone_and_minus_one_for_reversed() {
        let a = [1.0, 2.0, 3.0, 10.0];
        assert!((spearman(&a, &[0.1, 0.5, 0.7, 0.9]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&a, &[1.0; 4]), 0.0);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![1.5, 0.0, 1.5]);
    }
}
