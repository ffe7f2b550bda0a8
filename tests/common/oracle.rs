//! An independent float64 forward pass for the synthetic models: plain loops over the HF-layout
//! weights (Q/K not permuted, RoPE rotating halves), written from the architectures' papers and
//! HF reference code, sharing nothing with finllm's forward pass.

use std::collections::BTreeMap;

use finllm::tools::synthetic::SyntheticSpec;
use finllm::Architecture;

type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn get<'a>(w: &'a Weights, name: &str) -> &'a [f32] {
    &w.get(name).unwrap_or_else(|| panic!("oracle: no {name}")).1
}

/// y = W x for W of shape [rows, cols] stored row-major.
fn matvec(w: &[f32], x: &[f64], rows: usize) -> Vec<f64> {
    let cols = x.len();
    (0..rows)
        .map(|r| {
            w[r * cols..(r + 1) * cols]
                .iter()
                .zip(x)
                .map(|(a, b)| f64::from(*a) * b)
                .sum()
        })
        .collect()
}

fn rms_norm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * inv * f64::from(*g)).collect()
}

fn rope_halves(x: &mut [f64], pos: usize, theta: f64) {
    let d = x.len();
    let half = d / 2;
    for i in 0..half {
        let angle = pos as f64 * theta.powf(-2.0 * i as f64 / d as f64);
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * angle.cos() - b * angle.sin();
        x[i + half] = a * angle.sin() + b * angle.cos();
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

/// Logits `[tokens][vocab]` for a whole sequence from position 0.
pub fn logits(spec: &SyntheticSpec, w: &Weights, tokens: &[u32], sliding_window: usize) -> Vec<Vec<f64>> {
    let (h, hd, nh, nkv) = (spec.hidden, spec.head_dim, spec.heads, spec.kv_heads);
    let eps = 1e-5;
    let gemma = spec.arch == Architecture::Gemma3;
    let emb = get(w, "token_embd.weight");
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| {
            let row = &emb[t as usize * h..(t as usize + 1) * h];
            let scale = if gemma { (h as f64).sqrt() } else { 1.0 };
            row.iter().map(|v| f64::from(*v) * scale).collect()
        })
        .collect();
    for l in 0..spec.layers {
        let p = |s: &str| format!("blk.{l}.{s}");
        let global = !gemma || (l + 1) % 6 == 0;
        let theta = if gemma && !global { 10_000.0 } else { spec.rope_theta };
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, x) in xs.iter().enumerate() {
            let hn = rms_norm(x, get(w, &p("attn_norm.weight")), eps);
            let mut q = matvec(get(w, &p("attn_q.weight")), &hn, nh * hd);
            let mut k = matvec(get(w, &p("attn_k.weight")), &hn, nkv * hd);
            let mut v = matvec(get(w, &p("attn_v.weight")), &hn, nkv * hd);
            if spec.arch == Architecture::Qwen2 {
                for (y, b) in [
                    (&mut q, "attn_q.bias"),
                    (&mut k, "attn_k.bias"),
                    (&mut v, "attn_v.bias"),
                ] {
                    y.iter_mut().zip(get(w, &p(b))).for_each(|(a, b)| *a += f64::from(*b));
                }
            }
            for (y, norm, n) in [(&mut q, "attn_q_norm.weight", nh), (&mut k, "attn_k_norm.weight", nkv)] {
                for head in 0..n {
                    let s = &mut y[head * hd..(head + 1) * hd];
                    if matches!(spec.arch, Architecture::Qwen3 | Architecture::Gemma3) {
                        let normed = rms_norm(s, get(w, &p(norm)), eps);
                        s.copy_from_slice(&normed);
                    }
                    rope_halves(s, pos, theta);
                }
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for (pos, x) in xs.iter_mut().enumerate() {
            let mut attn = vec![0.0; nh * hd];
            for head in 0..nh {
                let kvh = head / (nh / nkv);
                let q = &qs[pos][head * hd..(head + 1) * hd];
                let visible: Vec<usize> = (0..=pos).filter(|&j| global || pos - j < sliding_window).collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        q.iter()
                            .zip(&ks[j][kvh * hd..(kvh + 1) * hd])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for (e, &j) in exps.iter().zip(&visible) {
                    for d in 0..hd {
                        attn[head * hd + d] += e / sum * vs[j][kvh * hd + d];
                    }
                }
            }
            let mut o = matvec(get(w, &p("attn_output.weight")), &attn, h);
            if gemma {
                o = rms_norm(&o, get(w, &p("post_attention_norm.weight")), eps);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let hn = rms_norm(x, get(w, &p("ffn_norm.weight")), eps);
            let g = matvec(get(w, &p("ffn_gate.weight")), &hn, spec.ffn);
            let u = matvec(get(w, &p("ffn_up.weight")), &hn, spec.ffn);
            let act: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| if gemma { gelu_tanh(*g) * u } else { silu(*g) * u })
                .collect();
            let mut m = matvec(get(w, &p("ffn_down.weight")), &act, h);
            if gemma {
                m = rms_norm(&m, get(w, &p("post_ffw_norm.weight")), eps);
            }
            x.iter_mut().zip(&m).for_each(|(a, b)| *a += b);
        }
    }
    let head = if spec.untied_output {
        get(w, "output.weight")
    } else {
        emb
    };
    xs.iter()
        .map(|x| matvec(head, &rms_norm(x, get(w, "output_norm.weight"), eps), spec.vocab))
        .collect()
}
